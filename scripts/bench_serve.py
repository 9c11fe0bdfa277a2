"""Benchmark the Policy deployment on Ray Serve: concurrent clients against one client at a
time, in the same run, on the same replica; prints one JSON line.

    python scripts/bench_serve.py                     # tiny model (configs/tiny.yaml), CPU
    python scripts/bench_serve.py --clients 32 --requests 128 --max-batch 32

Each request is one prompt of `--prompt-len` ids and exactly `--new-tokens` new tokens (no
stop ids: the model has random weights, speed does not depend on what it says). Baseline:
`--baseline-requests` sent one after another (each waits for the last). Concurrent:
`--requests` sent by `--clients` threads, each with one request in flight. Batch sizes are
the Policy's own count of rows sharing the engine when each request joined
(`Policy.stats`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import tempfile
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=256)
    p.add_argument("--baseline-requests", type=int, default=24)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import ray
    from ray import serve

    from stagent_ray.config import EngineConfig, RayConfig, ServeConfig, load_config
    from stagent_ray.models.build import count_parameters, load_model, load_tokenizer
    from stagent_ray.ray_setup import init_ray
    from stagent_ray.serve.deployments import deploy_policy
    from stagent_ray.stages.base import build_base_checkpoint

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"))
    ckpt = build_base_checkpoint(os.path.join(tempfile.mkdtemp(), "base"), cfg.model,
                                 cfg.world, seed=0)
    init_ray(RayConfig(num_cpus=2), include_dashboard=False)
    serve_cfg = ServeConfig(max_batch_size=args.max_batch, cpus_per_replica=0.5,
                            gpus_per_replica=1.0 if args.device == "cuda" else 0.0)
    handle = deploy_policy(ckpt, EngineConfig(kind="hf"), serve_cfg, name="bench_serve")
    rng = random.Random(0)
    vocab = len(load_tokenizer(ckpt))  # the world tokenizer may hold fewer ids than the config
    sampling = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "stop_token_ids": [],
                "max_new_tokens": args.new_tokens}

    def request(i: int) -> int:
        ids = [rng.randrange(10, vocab) for _ in range(args.prompt_len)]
        out = handle.generate_one.remote((ids, {**sampling, "seed": i})).result()
        return len(out["token_ids"])

    request(-1)  # warm-up: the replica's first decode
    t = time.perf_counter()
    base_tokens = sum(request(i) for i in range(args.baseline_requests))
    base_s = time.perf_counter() - t
    before = handle.stats.remote().result()

    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.clients) as pool:
        conc_tokens = sum(pool.map(request, range(args.requests)))
    conc_s = time.perf_counter() - t
    after = handle.stats.remote().result()
    n = after["requests"] - before["requests"]
    mean_rows = (after["mean_rows"] * after["requests"]
                 - before["mean_rows"] * before["requests"]) / max(1, n)
    base_rps, conc_rps = args.baseline_requests / base_s, args.requests / conc_s
    report = {
        "bench": "serve_policy", "device": args.device,
        "model_params_m": round(count_parameters(load_model(ckpt)) / 1e6, 2),
        "max_batch_size": args.max_batch, "max_ongoing_requests": 2 * args.max_batch,
        "clients": args.clients, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "baseline_requests_per_s": round(base_rps, 3),
        "baseline_tokens_per_s": round(base_tokens / base_s, 1),
        "concurrent_requests_per_s": round(conc_rps, 3),
        "concurrent_tokens_per_s": round(conc_tokens / conc_s, 1),
        "speedup": round(conc_rps / base_rps, 2),
        "batch_rows_max": after["max_rows"], "batch_rows_mean": round(mean_rows, 2),
        "seconds": round(base_s + conc_s, 1),
    }
    serve.shutdown()
    ray.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
