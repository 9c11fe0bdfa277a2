"""Ray-level faults. In the score stage: injected tool faults and a Ray Data rollout actor that
dies mid-batch; a Serve Policy replica killed while the stage sends it requests (each time
the stage completes with every query_id exactly once). In SFT: a Ray Train worker killed
mid-run (the run restarts from its last checkpoint and finishes)."""

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
from test_sft_ray import run_dir  # noqa: F401 - the fixture: training data and a base model

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
        "rollout.num_actors=2", "rollout.batch_size=3", "world.tool_timeout_s=0.5",
        "faults.tool_timeout=0.05", "faults.tool_error=0.1", "faults.tool_malformed=0.05",
        "faults.tool_retries=1", "faults.actor_crash_once=true"])
    query_ids = write_pool(run_dir, 18)
    stats = run_score(cfg, "unused-by-the-oracle")

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
        f"run_dir={run_dir}", "score.engine=serve", "serve.replicas=2", "rollout.num_actors=1",
        "score.n_rollouts=2", "rollout.batch_size=2"])
    query_ids = write_pool(run_dir, 10)
    ckpt = os.path.join(run_dir, "ckpt/sft0")
    shutil.copytree(tiny_checkpoint, ckpt)

    outcome = {}

    def score():
        try:
            outcome["stats"] = run_score(cfg, ckpt)
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


def train_worker_pids() -> list[int]:
    """Ray Train worker processes of this session's Ray (other Rays may share the machine):
    children of our raylet whose process title names the worker class."""
    import subprocess

    import ray

    raylet = ray._private.worker._global_node.all_processes["raylet"][0].process.pid
    ps = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in ps.splitlines()[1:]]
    return [int(pid) for pid, ppid, args in rows
            if int(ppid) == raylet and args.startswith("ray::RayTrainWorker")]


def test_sft_worker_killed_mid_run_restarts_from_its_last_checkpoint(ray_session, run_dir):
    """FailureConfig at work inside one fit(): SIGKILL a training worker; Ray Train restarts
    the worker group, which resumes from the last checkpoint and finishes the run."""
    import signal

    from ray.train import FailureConfig

    from stagent_ray.train.sft import run_sft
    from test_sft_ray import make_cfg, read_metrics

    metrics_path = os.path.join(run_dir, "train", "sft0_metrics.jsonl")
    outcome = {}

    def train():
        try:
            outcome["summary"] = run_sft(
                make_cfg(run_dir), "sft0", "data/train.parquet", "ckpt/base",
                "ckpt/sft0", [],
                failure_config=FailureConfig(max_failures=1, controller_failure_limit=3))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=train)
    thread.start()
    # Two reports after the step-4 checkpoint make sure Ray Train registered it (test_sft_ray).
    deadline = time.time() + 300
    while time.time() < deadline and thread.is_alive():
        if os.path.exists(metrics_path) and max(read_metrics(run_dir), default=0) >= 6:
            break
        time.sleep(0.1)
    pids = train_worker_pids()
    assert len(pids) == 2, pids
    killed_after = max(read_metrics(run_dir))
    os.kill(pids[0], signal.SIGKILL)
    thread.join(timeout=400)
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    steps = summary["steps"]  # 5 epochs of the data
    assert killed_after < steps, "the kill should land mid-run"
    assert 4 <= summary["resumed_from_step"] <= killed_after
    assert summary["resumed_from_step"] % 4 == 0  # a checkpoint step (checkpoint_every=4)
    assert sorted(read_metrics(run_dir)) == list(range(1, steps + 1))
