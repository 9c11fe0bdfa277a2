"""The whole path on a real pretrained model: SmolLM2-135M-Instruct (Llama architecture, its
own tokenizer and chat template, no tool support in the template), converted once by
`stagent-ray models fetch` (the Makefile's `models` step; models/pretrained.py).

SFT (full, and LoRA through peft) on teacher trajectories of one family lowers the loss; the
SFT'd model then calls a tool in a rollout; an RL step keeps the rollout and trainer
log-probs within 1e-3; eval runs; and `stagent-ray serve` answers the `openai` client with
`tool_calls`. A few minutes on 2 cores: short prompts (agent.tool_prompt=none), few steps.
"""

import json
import os

import pytest

from stagent_ray.config import AgentConfig, Config, RLConfig, SamplingConfig, SFTConfig

os.environ.setdefault("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9")  # see test_sft_ray.py

pytestmark = [pytest.mark.ray, pytest.mark.real_model]

FAMILY = "current_weather"


@pytest.fixture(scope="module")
def smol():
    from stagent_ray.models.pretrained import convert

    return convert("smollm2-135m")  # made by `make models`; converted here if it was not


def make_cfg(run_dir: str, model_path: str, **sft) -> Config:
    cfg = Config(run_dir=run_dir, seed=0)
    cfg.model.name_or_path = model_path
    cfg.agent = AgentConfig(max_turns=3, max_tokens=768, tool_prompt="none")
    cfg.sampling = SamplingConfig(max_new_tokens=48)
    cfg.sft0 = SFTConfig(**{"lr": 2e-4, "epochs": 20, "batch_size": 4, "seq_len": 320,
                            "warmup_steps": 1, "num_workers": 2, "checkpoint_every": 1000,
                            "log_every": 1, **sft})
    return cfg


def queries(n: int, seed: int):
    from stagent_ray.tasks.families import generate_queries
    from stagent_ray.world.generate import load_world

    return generate_queries(load_world(0), FAMILY, n, seed=seed)


def losses(run_dir: str, name: str) -> list[float]:
    with open(os.path.join(run_dir, "train", f"{name}_metrics.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def sft_run(ray_session, smol, tmp_path_factory):
    """Teacher (oracle) trajectories of `current_weather`, and SmolLM2 SFT'd on them."""
    from ray.train import FailureConfig

    from stagent_ray.rollout.agent_loop import initial_messages
    from stagent_ray.runio import write_table
    from stagent_ray.tasks.oracle import run_oracle
    from stagent_ray.train.sft import run_sft
    from stagent_ray.world.backends import make_executor

    run_dir = str(tmp_path_factory.mktemp("smol"))
    executor = make_executor("world", seed=0)
    rows = [{"query_id": q.query_id, "family": q.family, "text": q.text,
             "messages": json.dumps(initial_messages(q.text)
                                    + run_oracle(q, executor, noise=0.0)[1:])}
            for q in queries(16, seed=0)]
    write_table(run_dir, "data/sft.parquet", rows)
    cfg = make_cfg(run_dir, smol)
    summary = run_sft(cfg, "sft0", "data/sft.parquet", smol, "ckpt/sft", max_steps=8,
                      failure_config=FailureConfig(max_failures=0, controller_failure_limit=0))
    return cfg, summary


def test_full_sft_lowers_the_loss_and_keeps_the_models_format(sft_run, smol):
    from stagent_ray.models.build import load_tokenizer

    cfg, summary = sft_run
    loss = losses(cfg.run_dir, "sft0")
    print("full SFT loss per step:", [round(x, 3) for x in loss])
    assert len(loss) == 8 and loss[-1] < 0.6 * loss[0], loss
    tok = load_tokenizer(summary["path"])  # the export keeps SmolLM2's template and stops
    assert tok.chat_template == load_tokenizer(smol).chat_template
    with open(os.path.join(summary["path"], "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == 2


def test_lora_sft_lowers_the_loss(ray_session, sft_run, smol, tmp_path):
    import shutil

    from ray.train import FailureConfig

    from stagent_ray.train.sft import run_sft

    run_dir = str(tmp_path)
    shutil.copytree(os.path.join(sft_run[0].run_dir, "data"), os.path.join(run_dir, "data"))
    cfg = make_cfg(run_dir, smol, lora=True, lora_rank=8, lr=2e-3)
    summary = run_sft(cfg, "sft0", "data/sft.parquet", smol, "ckpt/lora", max_steps=6,
                      failure_config=FailureConfig(max_failures=0, controller_failure_limit=0))
    loss = losses(run_dir, "sft0")
    print("LoRA SFT loss per step:", [round(x, 3) for x in loss])
    assert loss[-1] < 0.6 * loss[0], loss
    assert os.path.exists(os.path.join(summary["path"], "model.safetensors"))  # merged


def test_sft_model_calls_a_tool_in_a_rollout(sft_run):
    from stagent_ray.models.chat_format import parse_assistant_turn
    from stagent_ray.rollout.agent_loop import run_episodes
    from stagent_ray.rollout.engine import SamplingParams
    from stagent_ray.rollout.hf_engine import HFEngine
    from stagent_ray.world.backends import make_executor

    cfg, summary = sft_run
    executor = make_executor("world", seed=0)
    engine = HFEngine(summary["path"], device="cpu")
    held_out = queries(4, seed=1)
    trajs = run_episodes(engine, executor, [(q.query_id, q.text) for q in held_out],
                         SamplingParams(temperature=0.0, max_new_tokens=48), cfg.agent)
    calls = [parse_assistant_turn(t.messages[2]["content"], executor.schemas()).calls
             for t in trajs if len(t.messages) > 2]
    print("first turns:", [t.messages[2]["content"][:120] for t in trajs if len(t.messages) > 2])
    assert sum(bool(c) and c[0].name == "weather_current_conditions" for c in calls) >= 3, calls
    # turns end on SmolLM2's EOS (<|im_end|>, id 2; or at max_new_tokens), never on the
    # unknown token 0 that `</tool_call>` maps to in its vocabulary
    ends = [t.token_ids[i] for t in trajs for i in range(len(t.token_ids) - 1)
            if t.loss_mask[i] == 1 and t.loss_mask[i + 1] == 0]
    assert 2 in ends and 0 not in ends, ends


def test_rl_step_on_the_real_model_keeps_logprobs_in_step(sft_run, tmp_path):
    from ray.train import FailureConfig

    from stagent_ray.train.rl import run_rl

    cfg, summary = sft_run
    cfg = make_cfg(str(tmp_path), cfg.model.name_or_path)
    cfg.rl = RLConfig(steps=1, prompts_per_step=2, group_size=4, lr=1e-5, mini_batches=1,
                      micro_batch_size=4, num_workers=2, checkpoint_every=1000, log_every=1,
                      max_refill_rounds=0, filter_on="reward", temperature=0.7)
    out = run_rl(cfg, summary["path"], "ckpt/rl", prompts=[q.to_row() for q in queries(4, 2)],
                 failure_config=FailureConfig(max_failures=0, controller_failure_limit=0))
    with open(os.path.join(cfg.run_dir, "train", "rl_metrics.jsonl")) as f:
        step = json.loads(f.readline())
    print("RL step:", {k: step[k] for k in ("reward_mean", "verified_rate", "logprob_gap_max")})
    assert step["logprob_gap_max"] < 1e-3 and out["logprob_gap_max"] < 1e-3


def test_eval_and_serve_on_the_sft_checkpoint(sft_run):
    import socket

    import openai
    from ray import serve

    from stagent_ray.config import EngineConfig, ServeConfig
    from stagent_ray.models.chat_format import DEFAULT_SYSTEM_PROMPT
    from stagent_ray.serve.deployments import deploy_policy
    from stagent_ray.stages.evaluate import evaluate_models
    from stagent_ray.stages.rollouts import policy_engine

    cfg, summary = sft_run
    rows = [q.to_row() for q in queries(3, seed=3)]
    result = evaluate_models(cfg, {"sft": policy_engine(cfg, summary["path"])}, rows,
                             [("greedy", 0.0, 1)])["sft"]["greedy"]
    print("eval:", result["overall"])
    assert result["overall"]["episodes"] == 3 and result["by_family"].keys() == {FAMILY}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        deploy_policy(summary["path"], EngineConfig(kind="hf"), ServeConfig(cpus_per_replica=0.5),
                      name="smol", ingress=True, model_name="smol-agent")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")
        resp = client.chat.completions.create(
            model="smol-agent", temperature=0.0, max_tokens=48,
            messages=[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                      {"role": "user", "content": rows[0]["text"]}])
        choice = resp.choices[0]
        print("serve:", choice.message)
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls[0].function.name == "weather_current_conditions"
    finally:
        serve.shutdown()
