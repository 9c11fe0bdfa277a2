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
    from ray import serve

    from stagent_ray.serve.deployments import ServePolicyEngine, deploy_policy

    handle = deploy_policy(tiny_checkpoint, EngineConfig(kind="hf"),
                           ServeConfig(cpus_per_replica=0.5, max_batch_size=8), name="policy_t")
    tok = load_tokenizer(tiny_checkpoint)
    client = ServePolicyEngine(handle, tok)
    prompts = [tok.encode(f"Find a cafe number {i}") for i in range(6)]
    greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
    # Concurrent callers, as several Ray Data actors would be.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        outs = list(pool.map(lambda p: client.generate([p], greedy)[0], prompts))
    local = HFEngine(tiny_checkpoint, device="cpu").generate(prompts, greedy)
    assert [o.token_ids for o in outs] == [g.token_ids for g in local]
    assert handle.version.remote().result()["version"] == 0

    # New weights: reload while a request is in flight; both complete.
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
    assert handle.reload.remote(new_path, 1).result() == 1
    assert len(inflight.result()["token_ids"]) == 6
    assert handle.version.remote().result() == {"version": 1, "checkpoint": new_path}
    after = client.generate(prompts[:2], greedy)
    expected = HFEngine(new_path, device="cpu").generate(prompts[:2], greedy)
    assert [o.token_ids for o in after] == [g.token_ids for g in expected]
    assert [o.token_ids for o in after] != [o.token_ids for o in outs[:2]]
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
