"""RL on Ray Train (2 CPU workers, FSDP2 over gloo, an HFEngine in each worker).

A tiny model is SFT'd briefly on oracle trajectories for the `unsolvable` family, so it
starts partly right: it either declines with [Unsolved] (reward ~1) or pretends it did the
task ("Done — I've taken care of that", reward ~0.27). GRPO must then raise the mean reward
by a clear margin within 16 steps, with the engine's log-probs matching the trainer's after
every weight push. A killed run resumes from its checkpoint (PPO: critic state too), and
GSPO runs.

Why `unsolvable` and not `current_weather`: measured on this 2-core machine, a 0.36 M
model SFT'd for 60-120 steps on weather trajectories still copies the wrong city's numbers
into most answers (the veto zeroes them; mean reward 0.03-0.13), and longer SFT does not fit
the time budget. The decline-or-pretend choice is learnable from 30 SFT steps, so the test
spends its time on RL. Multi-turn episodes still occur: malformed turns get an error
observation (masked tool tokens) and a second turn.
"""

import json
import os
import random
import socket

import numpy as np
import pytest
import torch

from stagent_ray.config import AgentConfig, Config, ModelConfig, RLConfig, SamplingConfig, SFTConfig

# See test_sft_ray.py: keeps Ray Train's placement-group cleaner from asking another test
# session's cluster about our controller. Must be set before Ray starts.
os.environ.setdefault("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9")


N_QUERIES = 48
GAP_TOL = 1e-3  # rollout vs trainer log-prob after a weight push (seen: ~3e-6 on CPU)


def make_cfg(run_dir: str, **rl) -> Config:
    cfg = Config(run_dir=run_dir, seed=0)
    cfg.model = ModelConfig(hidden_size=64, intermediate_size=192, num_layers=2, num_heads=2,
                            num_kv_heads=1)
    cfg.agent = AgentConfig(max_turns=2, max_tokens=1024, tool_prompt="compact")
    cfg.sampling = SamplingConfig(max_new_tokens=64)
    # lr 1e-2 / 30 steps of 4 sequences: the model has learnt both answers, not yet which
    # one pays (measured: first RL step reward ~0.45).
    cfg.sft0 = SFTConfig(lr=1e-2, epochs=100, batch_size=4, seq_len=1024, warmup_steps=5,
                         num_workers=2, checkpoint_every=1000, log_every=10)
    cfg.rl = RLConfig(**{"steps": 16, "prompts_per_step": 4, "group_size": 8, "lr": 3e-3,
                         "mini_batches": 2, "micro_batch_size": 8, "num_workers": 2,
                         "checkpoint_every": 1000, "log_every": 1, "max_refill_rounds": 1,
                         **rl})
    return cfg


@pytest.fixture(scope="module")
def sft_model(ray_session, tmp_path_factory):
    """(SFT checkpoint path, prompt rows): a tiny model that declines unsolvable requests
    about half the time. Per query the SFT data holds the clean oracle trajectory (noise 0:
    "[Unsolved] Sorry, I can't do that: <reason>") twice and one in which the noisy oracle
    pretends to have done it."""
    from stagent_ray.stages.base import build_base_checkpoint
    from stagent_ray.models.chat_format import UNSOLVED_MARKER
    from stagent_ray.rollout.agent_loop import initial_messages
    from stagent_ray.runio import write_table
    from stagent_ray.tasks.families import generate_queries
    from stagent_ray.tasks.oracle import run_oracle
    from stagent_ray.train.sft import run_sft
    from stagent_ray.world.backends import make_executor
    from stagent_ray.world.generate import load_world

    run_dir = str(tmp_path_factory.mktemp("rl_sft"))
    cfg = make_cfg(run_dir)
    queries = generate_queries(load_world(0), "unsolvable", N_QUERIES, seed=0)
    executor = make_executor("world", seed=0)
    rows = []
    for q in queries:
        clean = run_oracle(q, executor, noise=0.0)
        pretend = next(m for m in (run_oracle(q, executor, noise=1.0, seed=k) for k in range(200))
                       if len(m) == 2 and UNSOLVED_MARKER not in m[-1]["content"])
        for m in (clean, clean, pretend):  # m: [user, assistant, ...]
            rows.append({"query_id": q.query_id,
                         "messages": json.dumps(initial_messages(q.text) + m[1:])})
    write_table(run_dir, "data/sft.parquet", rows)
    build_base_checkpoint(os.path.join(run_dir, "ckpt/base"), cfg.model, cfg.world)
    summary = run_sft(cfg, "sft0", "data/sft.parquet", "ckpt/base", "ckpt/sft",
                      max_steps=30, failure_config=no_retry())
    return summary["path"], [q.to_row() for q in queries]


def no_retry():
    from ray.train import FailureConfig

    return FailureConfig(max_failures=0, controller_failure_limit=0)


def read_metrics(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "train", "rl_metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.ray
def test_grpo_raises_reward_and_engine_tracks_weights(sft_model, tmp_path):
    from stagent_ray.train.rl import run_rl

    init, prompts = sft_model
    run_dir = str(tmp_path)
    cfg = make_cfg(run_dir)
    summary = run_rl(cfg, init, "ckpt/rl", failure_config=no_retry(), prompts=prompts)

    history = read_metrics(run_dir)
    assert [h["step"] for h in history] == list(range(1, cfg.rl.steps + 1))
    rewards = [h["reward_mean"] for h in history]
    print("reward per step:", [round(r, 3) for r in rewards])
    print("logprob_gap_max per step:", [f"{h['logprob_gap_max']:.1e}" for h in history])
    first, last = np.mean(rewards[:4]), np.mean(rewards[-4:])
    # Measured (this machine, deterministic run to run): first 4 steps 0.50, last 4 0.85;
    # verified rate 0.34 -> 0.81.
    assert last > first + 0.2, rewards
    verified = [h["verified_rate"] for h in history]
    assert np.mean(verified[-4:]) > np.mean(verified[:4]) + 0.2
    # Step 1 checks the engine loaded the init weights; every later step checks the push
    # made after the step before.
    assert all(h["logprob_gap_max"] < GAP_TOL for h in history), \
        [h["logprob_gap_max"] for h in history]
    assert all(h["groups_kept"] > 0 and h["grad_norm"] > 0 for h in history)
    # rl.filter_on: verified (the default): every kept group has both verdicts, at most
    # prompts_per_step are kept, and the advantages are mostly the verdict's
    for h in history:
        assert h["kept_mixed_verdict_share"] == 1.0 and h["groups_kept"] <= cfg.rl.prompts_per_step
        assert h["groups_sampled"] >= h["groups_informative"] >= h["groups_kept"]
        assert h["verdict_adv_share"] > 0.5, h
    assert sum(h["refill_rounds"] for h in history) > 0  # some steps drew more prompts
    drawn = [json.loads(line) for line in open(os.path.join(run_dir, "train/rl_prompts.jsonl"))]
    assert len(drawn) == sum(h["groups_sampled"] for h in history)
    assert sum(d["kept"] for d in drawn) == sum(h["groups_kept"] for h in history)
    assert summary["resumed_from_step"] == 0 and summary["logprob_gap_max"] < GAP_TOL
    assert os.path.exists(os.path.join(summary["path"], "config.json"))


@pytest.mark.ray
def test_killed_ppo_run_resumes(sft_model, tmp_path):
    """PPO (critic, GAE) on the same model: rank 0 dies at the start of step 6; the last
    checkpoint is step 3 (Ray registers one once every rank has reported twice more), and
    the second call resumes there: steps 1-6 each once in the history, with the repeated
    steps 4-5 reproducing the first run (same weights, optimizer, critic, seeds)."""
    from stagent_ray.train.rl import run_rl

    init, prompts = sft_model
    run_dir = str(tmp_path)
    cfg = make_cfg(run_dir, algorithm="ppo", steps=6, checkpoint_every=3, critic_lr=1e-3)
    with pytest.raises(Exception):
        run_rl(cfg, init, "ckpt/rl", failure_config=no_retry(), prompts=prompts,
               fail_at_step=6)
    first = {h["step"]: h for h in read_metrics(run_dir)}
    assert sorted(first) == [1, 2, 3, 4, 5]
    assert not os.path.exists(os.path.join(run_dir, "ckpt/rl"))

    summary = run_rl(cfg, init, "ckpt/rl", failure_config=no_retry(), prompts=prompts)
    assert summary["resumed_from_step"] == 3 and summary["steps"] == 6
    second = {h["step"]: h for h in read_metrics(run_dir)}
    assert sorted(second) == [1, 2, 3, 4, 5, 6]
    for step in (1, 2, 3):  # restored from the checkpoint's history
        assert second[step] == first[step]
    for step in (4, 5):  # redone after the resume
        assert second[step]["start_step"] == 3 and first[step]["start_step"] == 0
        assert second[step]["reward_mean"] == pytest.approx(first[step]["reward_mean"])
        assert second[step]["value_loss"] == pytest.approx(first[step]["value_loss"], rel=1e-3)
    for h in second.values():
        assert h["value_loss"] > 0 and np.isfinite(h["policy_loss"])
        assert h["logprob_gap_max"] < GAP_TOL
        # PPO keeps the groups that dynamic sampling would drop: the critic needs them too
        assert h["groups_kept"] == h["groups_sampled"] == cfg.rl.prompts_per_step


@pytest.mark.ray
def test_gspo_runs_at_temperature_07(sft_model, tmp_path):
    """GSPO with a KL term, sampling at temperature 0.7: the trainer's log-probs must be taken
    at the rollout's temperature too (logprob_gap < 1e-3; scaling the logits by 1.0 instead
    gives a gap of about 0.1-1)."""
    from stagent_ray.train.rl import run_rl

    init, prompts = sft_model
    run_dir = str(tmp_path)
    cfg = make_cfg(run_dir, algorithm="gspo", steps=2, kl_coef=0.01, temperature=0.7)
    summary = run_rl(cfg, init, "ckpt/rl", failure_config=no_retry(), prompts=prompts)
    history = read_metrics(run_dir)
    assert [h["step"] for h in history] == [1, 2] and summary["steps"] == 2
    for h in history:
        assert np.isfinite(h["policy_loss"]) and 0.0 <= h["clip_frac"] <= 1.0
        assert h["logprob_gap_max"] < GAP_TOL and h["grad_norm"] > 0
        assert h["kl"] >= 0  # k3 estimator
    # The second mini-batch of a step runs on updated weights: its sequence ratios leave
    # GSPO's narrow band (3e-4 / 4e-4) and get clipped; the policy has left the reference.
    assert any(h["clip_frac"] > 0 for h in history)
    assert history[-1]["kl"] > 0


# ---------------------------------------------------------------- normalisation, no Ray

def synthetic_batch(n: int = 7, seed: int = 0) -> list[dict]:
    """Rolled-out sequences as update_policy gets them: prompt, a sampled span, a tool
    response (mask 0), another sampled span; different lengths."""
    rng = random.Random(seed)
    seqs = []
    for _ in range(n):
        length = rng.randint(50, 90)
        mask = [0] * 30 + [1] * 10 + [0] * 8 + [1] * (length - 48)
        seqs.append({"token_ids": [rng.randrange(5, 400) for _ in range(length)],
                     "logprobs": [0.0] * length, "loss_mask": mask,
                     "reward": rng.random(), "advantage": rng.gauss(0.0, 1.0)})
    return seqs


def update_worker(rank: int, world: int, path: str, port: int, micro_batch: int, out: str):
    """One rank of update_policy (spawned; lr 0, so only the statistics matter)."""
    import torch.distributed as dist

    from stagent_ray.config import RLConfig
    from stagent_ray.train.common import adamw, load_for_training, shard_model
    from stagent_ray.train.rl import ValueModel, update_policy

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    results = {}
    for algo, agg in [("grpo", "token-mean"), ("grpo", "seq-mean-token-sum"),
                      ("gspo", "token-mean"), ("ppo", "token-mean")]:
        torch.manual_seed(0)
        model = shard_model(load_for_training(path, attn_implementation="sdpa"), cpu)
        critic = shard_model(ValueModel(path), cpu) if algo == "ppo" else None
        # a reference model (sharded, forwards in lockstep with the policy's) for GRPO
        ref = shard_model(load_for_training(path).requires_grad_(False), cpu) \
            if agg == "token-mean" and algo == "grpo" else None
        rl = RLConfig(algorithm=algo, loss_agg=agg, mini_batches=1, micro_batch_size=micro_batch,
                      grad_clip=0.0, entropy_coef=0.01, kl_coef=0.1 if ref else 0.0)
        stats = update_policy(synthetic_batch(), model, adamw(model, 0.0, 0.0, cpu), critic,
                              critic and adamw(critic, 0.0, 0.0, cpu), ref, rl, rank, world,
                              cpu, 0)
        results[f"{algo}/{agg}"] = stats
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    # Both ranks leave together: a rank that tears gloo down while its peer is still in a
    # collective makes the peer abort (SIGABRT), which failed this test now and then.
    dist.barrier()
    dist.destroy_process_group()


def test_update_is_independent_of_ranks_and_micro_batches(tmp_path):
    """The loss of a mini-batch is its mean over all tokens (or sequences), however the
    batch is split: 1 rank x 1 micro-batch and 2 ranks x micro-batches of 3 (7 sequences:
    one rank runs a dummy pass to keep FSDP's collectives in step) must give the same loss
    and global grad norm. Catches a missing `x world` (FSDP averages over ranks), per-
    micro-batch means, and dummy passes that leak into the gradient."""
    import torch.multiprocessing as mp

    from stagent_ray.stages.base import build_base_checkpoint

    cfg = make_cfg(str(tmp_path))
    path = build_base_checkpoint(str(tmp_path / "base"), cfg.model, cfg.world)
    stats = {}
    for world, micro_batch in [(1, 8), (2, 3)]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = str(tmp_path / f"stats_{world}.json")
        mp.spawn(update_worker, args=(world, path, port, micro_batch, out),
                 nprocs=world, join=True)
        with open(out) as f:
            stats[world] = json.load(f)
    for key, one in stats[1].items():
        two = stats[2][key]
        for name in ("policy_loss", "entropy", "value_loss", "grad_norm"):
            assert two[name] == pytest.approx(one[name], rel=1e-4, abs=1e-6), (key, name)
        assert one["grad_norm"] > 0
        assert one["kl"] == pytest.approx(0.0, abs=1e-6)  # the reference is the init model
    assert stats[1]["ppo/token-mean"]["value_loss"] > 0


# ---------------------------------------------------------------- the loss mask, no Ray

def test_loss_mask_and_logprobs_of_a_hand_built_multi_turn_episode(tmp_path):
    """An episode built by hand from its parts (prompt, a tool call, the tool's response, the
    answer), padded in a batch beside a shorter one: the positions pad_batch trains on are
    exactly those that predict an assistant token, and sequence_logprobs gives, at those
    positions, the log-probs a plain forward gives at the trainer's temperature. Catches a
    loss mask shifted by one token and a temperature left out of the log-probs."""
    from stagent_ray.models.build import load_tokenizer
    from stagent_ray.models.chat_format import IM_END, format_tool_call, render_ids, tool_response_ids
    from stagent_ray.rollout.agent_loop import initial_messages
    from stagent_ray.stages.base import build_base_checkpoint
    from stagent_ray.train.common import load_for_training
    from stagent_ray.train.rl import pad_batch, sequence_logprobs

    cfg = make_cfg(str(tmp_path))
    path = build_base_checkpoint(str(tmp_path / "base"), cfg.model, cfg.world)
    tok = load_tokenizer(path)
    encode = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731
    prompt, _ = render_ids(tok, initial_messages("Is it raining in Yunhai now?"),
                           add_generation_prompt=True)
    call = encode(format_tool_call("current_weather", {"city": "Yunhai"}) + IM_END)
    tool = tool_response_ids(tok, ['{"city": "Yunhai", "condition": "rain", "temp_c": 14}'])
    answer = encode("Yes: rain in Yunhai, 14°C." + IM_END)
    ids = prompt + call + tool + answer
    mask = [0] * len(prompt) + [1] * len(call) + [0] * len(tool) + [1] * len(answer)
    seqs = [{"token_ids": ids, "logprobs": [0.0] * len(ids), "loss_mask": mask, "advantage": 1.0},
            {"token_ids": prompt + answer, "logprobs": [0.0] * (len(prompt) + len(answer)),
             "loss_mask": [0] * len(prompt) + [1] * len(answer), "advantage": -1.0}]
    batch = pad_batch(seqs, tok.pad_token_id, torch.device("cpu"))

    trained = batch["mask"][0] > 0
    assert batch["targets"][0][trained].tolist() == call + answer
    expected_positions = [t for t in range(len(ids) - 1) if mask[t + 1]]
    assert torch.nonzero(trained).squeeze(-1).tolist() == expected_positions
    assert batch["targets"][1][batch["mask"][1] > 0].tolist() == answer  # padding untrained

    model = load_for_training(path).eval()
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch, temperature=0.7)
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    at = lambda temperature: torch.stack([  # noqa: E731
        torch.log_softmax(logits / temperature, dim=-1)[t, ids[t + 1]] for t in expected_positions])
    assert torch.allclose(logp[0][trained], at(0.7), atol=1e-4)
    assert not torch.allclose(at(1.0), at(0.7), atol=1e-3)  # the temperature matters here
