"""Agent-loop rollout speed: episodes that run on their own over HFEngine's stream, against
the same episodes batched turn by turn, in one process. Prints one JSON line.

    python scripts/bench_rollout.py --checkpoint runs/bench_cascade_cpu/seed0/ckpt/sft1 \
        --config configs/cascade_cpu.yaml --queries 24 --n 8 --batch 16
    python scripts/bench_rollout.py --checkpoint CKPT --config configs/cascade_gpu.yaml \
        --device cuda --batch 256                                        # the GPU cascade's

Both paths run `agent_loop.run_episodes` (tools and parsing included) on one engine with the
same episode seeds; only the stream differs:
  turn_batched: `TokenEngine`'s default stream: each engine call takes every turn waiting,
                and lasts as long as its longest turn (the loop before streams);
  streamed:     HFEngine's stream: a turn joins the running batch as soon as a row is free.
A row samples from its own seed, so both paths give the same trajectories (up to float noise
in batched matmuls: `same_trajectories` counts them). Use a trained checkpoint (`make demo`
writes runs/tiny/ckpt/sft1): an untrained model writes until max_new_tokens every turn, and
then turns all last the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stagent_ray.config import load_config  # noqa: E402
from stagent_ray.rollout.agent_loop import run_episodes  # noqa: E402
from stagent_ray.rollout.engine import SamplingParams, TokenEngine, derive_seed  # noqa: E402
from stagent_ray.rollout.hf_engine import HFEngine  # noqa: E402
from stagent_ray.tasks.families import FAMILIES, generate_queries  # noqa: E402
from stagent_ray.world.backends import executor_from_config  # noqa: E402
from stagent_ray.world.generate import load_world  # noqa: E402


class TurnBatched(TokenEngine):
    """The same engine behind the default (turn-batching) stream."""

    def __init__(self, engine: HFEngine):
        self.engine, self.tokenizer = engine, engine.tokenizer

    def generate(self, prompts, sampling, seeds=None):
        return self.engine.generate(prompts, sampling, seeds)


def run(engine, executor, episodes, sampling, agent, seeds) -> tuple[float, list]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trajs = run_episodes(engine, executor, episodes, sampling, agent, seeds=seeds)
    return time.perf_counter() - start, trajs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/tiny/ckpt/sft1")
    parser.add_argument("--config", default="configs/cascade_cpu.yaml",
                        help="world, families, agent and sampling settings")
    parser.add_argument("--queries", type=int, default=24)
    parser.add_argument("--n", type=int, default=8, help="episodes per query")
    parser.add_argument("--batch", type=int, default=16, help="engine rows (max_batch_size)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs each")
    parser.add_argument("overrides", nargs="*", help="config overrides (agent.reproducible=false)")
    args = parser.parse_args()
    if not os.path.isdir(args.checkpoint):
        sys.exit(f"no checkpoint at {args.checkpoint}: run `make demo` or pass --checkpoint")
    torch.set_num_threads(1)  # as in the Ray rollout actors

    cfg = load_config(args.config, args.overrides)
    w = cfg.world
    world = load_world(w.seed, w.n_cities, w.pois_per_city, w.today)
    families = cfg.pool.families or list(FAMILIES)
    per_family = -(-args.queries // len(families))
    queries = [q for f in families for q in generate_queries(world, f, per_family, seed=7)]
    episodes = [(q.query_id, q.text) for q in queries[:args.queries] for _ in range(args.n)]
    seeds = [derive_seed("bench", i) for i in range(len(episodes))]
    s = cfg.sampling
    sampling = SamplingParams(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                              max_new_tokens=s.max_new_tokens)
    executor = executor_from_config(cfg.world)
    engine = HFEngine(args.checkpoint, device=args.device, dtype=args.dtype,
                      max_batch_size=args.batch,
                      compile={"auto": None, "on": True, "off": False}[args.compile])
    paths = {"turn_batched": TurnBatched(engine), "streamed": engine}
    run(engine, executor, episodes[:args.batch], sampling, cfg.agent, seeds[:args.batch])  # warm

    best, trajs = {}, {}
    for _ in range(args.repeats):  # alternate, keep the best of each (the machine is shared)
        for name, path in paths.items():
            seconds, trajs[name] = run(path, executor, episodes, sampling, cfg.agent, seeds)
            best[name] = min(best.get(name, seconds), seconds)
    tokens = sum(sum(t.loss_mask) for t in trajs["streamed"])
    same = sum(a.token_ids == b.token_ids for a, b in zip(trajs["streamed"],
                                                         trajs["turn_batched"]))
    print(json.dumps({
        "bench": "rollout", "checkpoint": args.checkpoint, "config": args.config,
        "episodes": len(episodes), "batch": args.batch, "max_new_tokens": s.max_new_tokens,
        "max_turns": cfg.agent.max_turns, "reproducible": cfg.agent.reproducible,
        "device": args.device, "dtype": args.dtype,
        "engine_compiled": engine.compile, "generated_tokens": tokens,
        "mean_turns": round(sum(t.num_turns for t in trajs["streamed"]) / len(episodes), 2),
        "seconds": {k: round(v, 2) for k, v in best.items()},
        "episodes_per_s": {k: round(len(episodes) / v, 2) for k, v in best.items()},
        "speedup_streamed_vs_turn_batched": round(best["turn_batched"] / best["streamed"], 3),
        "same_trajectories": f"{same}/{len(episodes)}",
        "machine": (torch.cuda.get_device_name() if args.device == "cuda" else
                    f"{platform.machine()}, {os.cpu_count()} CPUs"),
        "command": "python " + " ".join(sys.argv)}))


if __name__ == "__main__":
    main()
