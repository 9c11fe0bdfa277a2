"""The score stage on Ray Data: a 40-query pool, N=8, 2 actors. The driver is killed
mid-run and the stage run again: every query_id ends up exactly once, and every row equals
a recomputation from its trajectories."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from stagent_ray.config import load_config
from stagent_ray.stages.rollouts import pass_at_k
from stagent_ray.runio import query_to_row, read_table, write_table
from stagent_ray.stages.score import run_score
from stagent_ray.tasks.families import FAMILIES, generate_queries
from stagent_ray.world.generate import load_world

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

OVERRIDES = ["score.n_rollouts=8", "rollout.num_actors=2", "rollout.batch_size=2",
             "sampling.max_new_tokens=24", "agent.max_turns=2", "agent.max_tokens=1200"]

DRIVER = """
import sys
from stagent_ray.config import load_config
from stagent_ray.ray_setup import init_ray
from stagent_ray.stages.score import run_score
cfg = load_config("configs/tiny.yaml", sys.argv[2:])
init_ray(cfg.ray)
run_score(cfg, sys.argv[1])
"""


def test_score_resumes_after_driver_kill(ray_session, tmp_path, tiny_checkpoint):
    run_dir = str(tmp_path / "run")
    overrides = OVERRIDES + [f"run_dir={run_dir}"]
    cfg = load_config("configs/tiny.yaml", overrides)
    world = load_world()
    queries = [q for f in FAMILIES for q in generate_queries(world, f, 3, seed=5)][:40]
    assert len(queries) == 40
    write_table(run_dir, "data/pool.parquet", [query_to_row(q) for q in queries])
    ckpt = os.path.join(run_dir, "ckpt", "sft0")
    shutil.copytree(tiny_checkpoint, ckpt)

    # First driver joins the session's Ray; kill it once some parts are on disk.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, ckpt, *overrides], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = os.path.join(run_dir, "data", "parts", "score")
    deadline = time.time() + 400
    while time.time() < deadline:
        done = [p for p in os.listdir(parts) if p.startswith("query-")] if os.path.isdir(parts) else []
        if len(done) >= 3 or proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written_before = len([p for p in os.listdir(parts) if p.startswith("query-")])
    assert 0 < written_before < 20, "the kill should land mid-stage"

    stats = run_score(cfg, ckpt)
    assert stats["resumed_skipped"] > 0
    rows = read_table(run_dir, "data/full_qa.parquet")
    trajs = read_table(run_dir, "data/trajectories.parquet")
    assert sorted(r["query_id"] for r in rows) == sorted(q.query_id for q in queries)
    keys = [(t["query_id"], t["rollout_index"]) for t in trajs]
    assert len(keys) == len(set(keys)) == 40 * 8

    by_query = {}
    for t in trajs:
        by_query.setdefault(t["query_id"], []).append(t)
    for r in rows:
        ts = sorted(by_query[r["query_id"]], key=lambda t: t["rollout_index"])
        rewards = [t["reward"] for t in ts]
        verified = [t["verified"] for t in ts]
        assert r["rewards"] == rewards and r["verified"] == verified
        assert r["mean_reward"] == pytest.approx(np.mean(rewards))
        assert r["var_reward"] == pytest.approx(np.var(rewards))
        c = sum(verified)
        assert r["pass_at_1"] == pytest.approx(pass_at_k(8, c, 1))
        assert r["learnability"] == pytest.approx((c / 8) * (1 - c / 8))
        assert r["tokens"] == sum(t["num_generated_tokens"] for t in ts)
        assert len(ts[0]["token_ids"]) == len(ts[0]["logprobs"]) == len(ts[0]["loss_mask"])


def test_actors_asking_more_than_the_cluster_has_are_named(ray_session, caplog):
    """Ray Data would wait silently for such an actor; the warning names the setting."""
    import ray

    from stagent_ray.stages.rollouts import warn_if_unschedulable

    have = ray.cluster_resources()
    with caplog.at_level("WARNING"):
        warn_if_unschedulable(have.get("CPU", 0) + 1, have.get("GPU", 0) + 1)
    assert "rollout.cpus_per_actor" in caplog.text and "rollout.gpus_per_actor" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        warn_if_unschedulable(0.5, 0)
    assert caplog.text == ""


def test_checkpoints_through_one_actor_pool_roll_out_as_each_alone(ray_session, tmp_path,
                                                                    tiny_checkpoint):
    """rollout_checkpoints (the eval of several checkpoints) copies each batch's checkpoint
    into the actor's engine: its rows equal one pool per checkpoint, so a missed or stale
    weight switch shows as the wrong model's tokens."""
    from dataclasses import replace

    import torch

    from stagent_ray.models.build import load_model, load_tokenizer, save_checkpoint
    from stagent_ray.stages.rollouts import consolidate, policy_engine, rollout_checkpoints
    from stagent_ray.stages.rollouts import rollout_pool

    run_dir = str(tmp_path / "run")
    cfg = load_config("configs/tiny.yaml", OVERRIDES + [f"run_dir={run_dir}"])
    other = str(tmp_path / "other")  # the same model with its weights perturbed
    model = load_model(tiny_checkpoint)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(model, load_tokenizer(tiny_checkpoint), other)
    world = load_world()
    rows = [query_to_row(q) for f in list(FAMILIES)[:3]
            for q in generate_queries(world, f, 2, seed=3)]
    engines = {"a": policy_engine(cfg, tiny_checkpoint), "b": policy_engine(cfg, other)}
    one_actor = replace(cfg, rollout=replace(cfg.rollout, num_actors=1, cpus_per_actor=1.0))

    # two actors: each may switch back and forth between the checkpoints
    together = rollout_checkpoints(cfg, rows, {f"pool/{k}": e for k, e in engines.items()},
                                   2, salt=7, temperature=0.0)
    assert {k: v["trajectories"] for k, v in together.items()} == {"pool/a": 12, "pool/b": 12}
    tokens = {}
    for k, engine in engines.items():
        assert rollout_pool(one_actor, rows, engine, 2, f"alone/{k}", salt=7,
                            temperature=0.0)["trajectories"] == 12
        for how in ("pool", "alone"):
            consolidate(run_dir, f"{how}/{k}", f"{how}_{k}_q.parquet", f"{how}_{k}_t.parquet")
            tokens[how, k] = {(t["query_id"], t["rollout_index"]): list(t["token_ids"])
                              for t in read_table(run_dir, f"{how}_{k}_t.parquet")}
    assert tokens["pool", "a"] == tokens["alone", "a"]
    assert tokens["pool", "b"] == tokens["alone", "b"]
    assert tokens["alone", "a"] != tokens["alone", "b"]  # the perturbation shows

    with pytest.raises(ValueError, match="differ only in 'model'"):
        rollout_checkpoints(cfg, rows, {"x": engines["a"],
                                        "y": replace(engines["b"], dtype="bfloat16")}, 1)
