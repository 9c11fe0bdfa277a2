"""Teacher/Policy on Ray Serve: concurrent batched requests, hot reload, and the
OpenAI-compatible ingress driven by the official `openai` client."""

import concurrent.futures
import socket

import pytest
import torch

from stagent_ray.config import EngineConfig, ModelConfig, ServeConfig
from stagent_ray.models.build import (build_tiny_model, load_model, load_tokenizer,
                                      save_checkpoint)
from stagent_ray.models.chat_format import format_tool_call, render_ids
from stagent_ray.rollout.engine import SamplingParams
from stagent_ray.rollout.hf_engine import HFEngine

pytestmark = pytest.mark.ray

WEATHER_TOOL = {"type": "function", "function": {
    "name": "weather_current_conditions", "description": "Current weather of a city.",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"], "additionalProperties": False}}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overfit_tool_caller(tokenizer, out_dir: str) -> str:
    """A small model trained to answer one question with a weather tool call."""
    msgs = [{"role": "user", "content": "What is the weather in Moling right now?"},
            {"role": "assistant",
             "content": format_tool_call("weather_current_conditions", {"location": "Moling"})}]
    ids, mask = render_ids(tokenizer, msgs, [WEATHER_TOOL])
    cfg = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2,
                      num_kv_heads=1)
    model = build_tiny_model(cfg, tokenizer, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.tensor([ids])
    labels = torch.tensor([[i if m else -100 for i, m in zip(ids, mask)]])
    for _ in range(120):
        loss = model(input_ids=x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    save_checkpoint(model, tokenizer, out_dir)
    return out_dir


@pytest.fixture(scope="module")
def serve_port(ray_session):
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()


def test_policy_batches_concurrent_requests_and_reloads(ray_session, serve_port,
                                                        tiny_checkpoint, tmp_path):
    """Two replicas: concurrent requests share each replica's engine batch (more than Ray's
    default max_ongoing_requests of 5 rows), and a weight push reaches both replicas."""
    from ray import serve

    from stagent_ray.serve.deployments import ServePolicyEngine, deploy_policy

    handle = deploy_policy(tiny_checkpoint, EngineConfig(kind="hf"),
                           ServeConfig(replicas=2, cpus_per_replica=0.5, max_batch_size=8),
                           name="policy_t")
    tok = load_tokenizer(tiny_checkpoint)
    client = ServePolicyEngine(handle, tok)
    prompts = [tok.encode(f"Find a cafe number {i}") for i in range(6)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    # Concurrent callers, as several Ray Data actors would be.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda p: client.generate([p], greedy)[0], prompts))
    local = HFEngine(tiny_checkpoint, device="cpu").generate(prompts, greedy)
    assert [o.token_ids for o in outs] == [g.token_ids for g in local]
    # A burst of 32 requests: rows join the running batch (up to 8 per replica).
    long = SamplingParams(temperature=1.0, max_new_tokens=24, seed=1)
    burst = client.generate([prompts[i % 6] for i in range(32)], long)
    assert all(len(g.token_ids) == 24 for g in burst)
    stats = handle.broadcast("stats").results(timeout_s=60)
    assert len(stats) == 2 and max(s["max_rows"] for s in stats) >= 6, stats

    # New weights: push while a request is in flight; both complete, on every replica.
    new_model = load_model(tiny_checkpoint)  # same shape, new weights
    torch.manual_seed(123)
    with torch.no_grad():  # larger weights than the default init, so greedy output differs
        for p in new_model.parameters():
            p.normal_(0.0, 0.2)
    new_path = str(tmp_path / "v1")
    save_checkpoint(new_model, tok, new_path)
    inflight = handle.generate_one.remote((prompts[0], {"temperature": 0.0, "max_new_tokens": 6,
                                                        "top_p": 1.0, "top_k": 0,
                                                        "stop_token_ids": [], "seed": None}))
    assert client.push_weights(new_path, 1) == [1, 1]
    assert len(inflight.result()["token_ids"]) == 6
    assert handle.broadcast("version").results(timeout_s=60) == \
        [{"version": 1, "checkpoint": new_path}] * 2
    after = client.generate(prompts, greedy)  # spread over both replicas
    expected = HFEngine(new_path, device="cpu").generate(prompts, greedy)
    assert [o.token_ids for o in after] == [g.token_ids for g in expected]
    assert [o.token_ids for o in after] != [o.token_ids for o in outs]
    assert client.last_version == 1
    serve.delete("policy_t")


def test_openai_client_gets_a_tool_call(ray_session, serve_port, tiny_checkpoint, tmp_path,
                                        monkeypatch):
    import openai
    from ray import serve

    from stagent_ray.serve.deployments import deploy_policy

    path = overfit_tool_caller(load_tokenizer(tiny_checkpoint), str(tmp_path / "caller"))
    monkeypatch.setenv("STAGENT_TEST_KEY", "sekret")
    deploy_policy(path, EngineConfig(kind="hf"),
                  ServeConfig(cpus_per_replica=0.5, api_key_env="STAGENT_TEST_KEY"),
                  name="ingress_t", ingress=True, model_name="tiny-agent")
    base = f"http://127.0.0.1:{serve_port}/v1"
    client = openai.OpenAI(base_url=base, api_key="sekret")
    assert [m.id for m in client.models.list().data] == ["tiny-agent"]
    resp = client.chat.completions.create(
        model="tiny-agent", temperature=0.0, tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What is the weather in Moling right now?"}])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "weather_current_conditions"
    assert call.function.arguments == '{"location": "Moling"}'
    assert resp.usage.prompt_tokens > 0

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base, api_key="wrong").models.list()
    serve.delete("ingress_t")


def rl_cfg(tiny_cfg, run_dir: str, **rl):
    from dataclasses import replace

    from stagent_ray.config import AgentConfig, RLConfig, SamplingConfig

    # Random weights reward nothing; the entropy bonus still moves the weights every step,
    # so a replica left on old weights shows in the log-prob gap.
    return replace(tiny_cfg, run_dir=run_dir,
                   agent=AgentConfig(max_turns=1, max_tokens=1024, tool_prompt="compact"),
                   sampling=SamplingConfig(max_new_tokens=12),
                   serve=ServeConfig(replicas=2, cpus_per_replica=0.5, max_batch_size=8),
                   rl=RLConfig(**{"steps": 3, "prompts_per_step": 2, "group_size": 4, "lr": 1e-2,
                                  "entropy_coef": 0.1, "dynamic_sampling": False,
                                  "mini_batches": 1, "micro_batch_size": 8, "num_workers": 1,
                                  "checkpoint_every": 1000, "rollout_engine": "serve",
                                  "max_logprob_gap": 1e-3, **rl}))


def test_rl_on_serve_reloads_every_replica_and_bounds_the_gap(ray_session, serve_port,
                                                              tiny_checkpoint, tiny_cfg,
                                                              tmp_path):
    """RL through a 2-replica Policy: after each push the rollouts' log-probs match the
    trainer's (< 1e-3) on whichever replica sampled them. Then a step whose engine disagrees
    with the trainer (injected garbage generations, log-prob 0) stops the run, naming the
    gap and the bound."""
    import json
    from dataclasses import replace

    from ray.train import FailureConfig

    from stagent_ray.config import FaultConfig
    from stagent_ray.tasks.families import generate_queries
    from stagent_ray.train.rl import run_rl
    from stagent_ray.world.generate import load_world

    no_retry = FailureConfig(max_failures=0, controller_failure_limit=0)
    prompts = [q.to_row() for q in generate_queries(load_world(0), "unsolvable", 6, seed=0)]
    cfg = rl_cfg(tiny_cfg, str(tmp_path / "ok"))
    run_rl(cfg, tiny_checkpoint, "ckpt/rl", failure_config=no_retry, prompts=prompts)
    with open(tmp_path / "ok" / "train" / "rl_metrics.jsonl") as f:
        history = [json.loads(line) for line in f]
    gaps = [h["logprob_gap_max"] for h in history]
    print("logprob_gap_max per step:", gaps)
    assert [h["step"] for h in history] == [1, 2, 3] and all(g < 1e-3 for g in gaps), gaps
    assert all(h["grad_norm"] > 0 for h in history)  # the weights moved every step

    bad = replace(rl_cfg(tiny_cfg, str(tmp_path / "bad"), steps=1, rollout_engine="inprocess"),
                  faults=FaultConfig(engine_garbage=0.5))
    with pytest.raises(Exception, match=r"log-prob gap .* exceeds rl.max_logprob_gap=0.001"):
        run_rl(bad, tiny_checkpoint, "ckpt/rl", failure_config=no_retry, prompts=prompts)


def test_tiny_qa_goes_through_the_teacher_deployment(ray_session, serve_port, tiny_checkpoint,
                                                     tiny_cfg, tmp_path):
    """An hf teacher (a local checkpoint) on 2 Teacher replicas: tiny_qa's rollouts are
    answered there (each replica's own request count), none in the rollout actors."""
    from dataclasses import replace

    from ray import serve

    from stagent_ray.config import AgentConfig, RolloutConfig, SamplingConfig, TinyQAConfig
    from stagent_ray.runio import query_to_row, read_table, write_table
    from stagent_ray.stages.tiny_qa import run_tiny_qa
    from stagent_ray.tasks.families import generate_queries
    from stagent_ray.world.generate import load_world

    world = load_world(0)
    rows = [query_to_row(q) for q in generate_queries(world, "unsolvable", 6, seed=0)]
    run_dir = str(tmp_path)
    write_table(run_dir, "data/pool.parquet", rows[:4])
    write_table(run_dir, "data/eval.parquet", rows[4:])
    cfg = replace(tiny_cfg, run_dir=run_dir,
                  teacher=EngineConfig(kind="hf", model=tiny_checkpoint),
                  agent=AgentConfig(max_turns=1, max_tokens=1024, tool_prompt="compact"),
                  sampling=SamplingConfig(max_new_tokens=8),
                  serve=ServeConfig(teacher_replicas=2, cpus_per_replica=0.5, max_batch_size=8),
                  rollout=RolloutConfig(num_actors=1, cpus_per_actor=0.5, batch_size=4),
                  tiny_qa=TinyQAConfig(fraction=1.0, long_tail=0, k=2))
    stats = run_tiny_qa(cfg)
    served = stats["teacher_replica_requests"]
    print("teacher requests per replica:", served)
    # 4 queries x k=2, one turn each: 8 generations, all from the deployment's 2 replicas
    assert len(served) == 2 and sum(served) == 8, served
    assert len(read_table(run_dir, "data/tiny_qa_scored.parquet")) == 4
    assert "teacher" not in serve.status().applications  # deleted after the stage
