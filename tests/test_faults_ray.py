"""Ray-level faults in the score stage: injected tool faults and a Ray Data rollout actor that
dies mid-batch; a Serve Policy replica killed while the stage sends it requests. Each time
the stage completes with every query_id exactly once."""

import json
import os
import shutil
import threading
import time
from collections import Counter

import pytest

from stagent_ray.config import load_config
from stagent_ray.runio import query_to_row, read_table, write_table
from stagent_ray.stages.score import run_score
from stagent_ray.tasks.families import FAMILIES, generate_queries
from stagent_ray.world.backends import TOOL_FAULTS
from stagent_ray.world.generate import load_world

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]

SMALL = ["sampling.max_new_tokens=24", "agent.max_turns=3", "agent.max_tokens=1200"]


def write_pool(run_dir: str, n: int) -> list[str]:
    world = load_world()
    queries = [q for f in FAMILIES for q in generate_queries(world, f, 2, seed=11)][:n]
    write_table(run_dir, "data/pool.parquet", [query_to_row(q) for q in queries])
    return [q.query_id for q in queries]


def assert_every_query_once(run_dir: str, query_ids: list[str], n: int) -> tuple[list, list]:
    rows = read_table(run_dir, "data/full_qa.parquet")
    trajs = read_table(run_dir, "data/trajectories.parquet")
    assert sorted(r["query_id"] for r in rows) == sorted(query_ids)
    keys = [(t["query_id"], t["rollout_index"]) for t in trajs]
    assert len(keys) == len(set(keys)) == len(query_ids) * n
    return rows, trajs


def test_score_under_tool_faults_and_a_dying_rollout_actor(ray_session, tmp_path):
    """The oracle plays the policy here, so that every episode calls tools."""
    run_dir = str(tmp_path / "run")
    cfg = load_config("configs/tiny.yaml", SMALL + [
        f"run_dir={run_dir}", "policy.kind=oracle", "policy.noise=0.3", "score.n_rollouts=4",
        "score.num_actors=2", "score.batch_size=3", "world.tool_timeout_s=0.5",
        "faults.tool_timeout=0.05", "faults.tool_error=0.1", "faults.tool_malformed=0.05",
        "faults.tool_retries=1", "faults.actor_crash_once=true"])
    query_ids = write_pool(run_dir, 18)
    stats = run_score(cfg, run_dir, "unused-by-the-oracle")

    # The actor died (marker written just before os._exit) and its batch was retried.
    assert os.path.exists(os.path.join(run_dir, "data/parts/score/_actor_crashed.json"))
    rows, trajs = assert_every_query_once(run_dir, query_ids, 4)

    faults = stats["faults"]
    injected = sum(faults.get(f"injected_{k}", 0) for k in TOOL_FAULTS)
    assert all(faults.get(f"injected_{k}", 0) > 0 for k in TOOL_FAULTS), faults
    # Every fault counted and handled: retried, or the episode re-rolled or marked.
    assert injected == faults["infra_errors"] == faults["retried"] + faults.get("unrecovered", 0)
    assert faults.get("unrecovered", 0) == faults.get("rerolled", 0) + stats["infra_faulted_episodes"]
    assert faults.get("rerolled", 0) > 0  # 20% faults, one retry: some episodes were re-rolled
    # The stage's counts are those of the trajectories written (so they survive a restart).
    per_traj = Counter()
    for t in trajs:
        per_traj.update(json.loads(t["faults"]))
    assert dict(per_traj) == faults
    # A marked episode is not scored as the model's failure: it is outside n and rewards.
    marked = Counter(t["query_id"] for t in trajs if t["infra_fault"])
    assert sum(marked.values()) == stats["infra_faulted_episodes"]
    for r in rows:
        assert r["n"] == 4 - marked[r["query_id"]] == len(r["rewards"]) and r["n"] > 0


def replica_names(app: str) -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and "Policy" in a["name"] and app in a["name"]}


def test_score_through_serve_survives_a_killed_policy_replica(ray_session, tmp_path,
                                                              tiny_checkpoint):
    import ray
    from ray import serve

    run_dir = str(tmp_path / "run")
    cfg = load_config("configs/tiny.yaml", SMALL + [
        f"run_dir={run_dir}", "score.engine=serve", "serve.replicas=2", "score.num_actors=1",
        "score.n_rollouts=2", "score.batch_size=2"])
    query_ids = write_pool(run_dir, 10)
    ckpt = os.path.join(run_dir, "ckpt/sft0")
    shutil.copytree(tiny_checkpoint, ckpt)

    outcome = {}

    def score():
        try:
            outcome["stats"] = run_score(cfg, run_dir, ckpt)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=score)
    thread.start()
    parts = os.path.join(run_dir, "data/parts/score")
    deadline = time.time() + 300
    while time.time() < deadline and thread.is_alive():
        if os.path.isdir(parts) and any(p.startswith("query-") for p in os.listdir(parts)):
            break
        time.sleep(0.2)
    replicas = replica_names("policy")
    assert len(replicas) == 2, replicas
    victim = sorted(replicas)[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    done_at_kill = len([p for p in os.listdir(parts) if p.startswith("query-")])
    thread.join(timeout=400)
    try:
        assert "error" not in outcome, outcome.get("error")
        assert done_at_kill < len(query_ids) / 2, "the kill should land mid-stage"
        assert_every_query_once(run_dir, query_ids, 2)
    finally:
        serve.shutdown()
