"""Scoring throughput: Ray Data with 1 and 2 actors against a plain in-process loop over the
same queries, engine and scorer. Prints one JSON line.

    python scripts/bench_score.py [--queries 16] [--n 4] [--max-new-tokens 48]

Every path runs `RolloutActor` (engine + tools + scorer + part-file writes) on the same
batches; the in-process loop calls it directly, Ray Data streams the batches through an
actor pool. Wall time includes Ray Data's start-up (actor creation, imports), which is the
real cost a stage pays.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=64)
    parser.add_argument("--n", type=int, default=4, help="rollouts per query")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    torch.set_num_threads(1)

    from dataclasses import replace

    from stagent_ray.config import load_config
    from stagent_ray.ray_setup import init_ray
    from stagent_ray.stages.base import build_base_checkpoint
    from stagent_ray.stages.rollouts import RolloutActor, policy_engine, rollout_pool
    from stagent_ray.runio import query_to_row
    from stagent_ray.tasks.families import FAMILIES, generate_queries
    from stagent_ray.world.generate import load_world

    work = tempfile.mkdtemp(prefix="bench_score_")
    cfg = load_config("configs/tiny.yaml", [
        f"run_dir={work}", f"sampling.max_new_tokens={args.max_new_tokens}",
        "agent.max_turns=2", f"rollout.batch_size={args.batch_size}"])
    ckpt = build_base_checkpoint(os.path.join(work, "base"), cfg.model, cfg.world)
    world = load_world(cfg.world.seed, cfg.world.n_cities, cfg.world.pois_per_city, cfg.world.today)
    families = list(FAMILIES)
    per_family = -(-args.queries // len(families))
    queries = [q for f in families for q in generate_queries(world, f, per_family, seed=1)]
    rows = [query_to_row(q) for q in queries[:args.queries]]
    engine = replace(policy_engine(cfg, ckpt), device="cpu", max_batch_size=16)
    n_traj = len(rows) * args.n

    # In-process: the same actor class, called batch by batch in this process.
    start = time.perf_counter()
    actor = RolloutActor(cfg, engine, args.n, "parts/inproc")
    for i in range(0, len(rows), args.batch_size):
        actor.score_batch(rows[i:i + args.batch_size])   # what each Data item runs
    inproc_s = time.perf_counter() - start

    init_ray(cfg.ray, include_dashboard=False)
    results = {}
    for actors in (1, 2):
        sized = replace(cfg, rollout=replace(cfg.rollout, num_actors=actors, cpus_per_actor=0.5))
        stats = rollout_pool(sized, rows, engine, args.n, f"parts/ray{actors}",
                             desc=f"{actors} actor(s)")
        assert stats["trajectories"] == n_traj, stats
        results[actors] = stats["seconds"]
    shutil.rmtree(work, ignore_errors=True)
    tps = {"inprocess": n_traj / inproc_s, "ray_1_actor": n_traj / results[1],
           "ray_2_actors": n_traj / results[2]}
    print(json.dumps({
        "bench": "score", "queries": len(rows), "rollouts_per_query": args.n,
        "trajectories": n_traj, "max_new_tokens": args.max_new_tokens,
        "trajectories_per_s": {k: round(v, 3) for k, v in tps.items()},
        "ratio_ray1_vs_inprocess": round(tps["ray_1_actor"] / tps["inprocess"], 3),
        "ratio_ray2_vs_inprocess": round(tps["ray_2_actors"] / tps["inprocess"], 3),
        "device": "cpu", "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
