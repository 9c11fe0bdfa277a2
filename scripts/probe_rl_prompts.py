"""Does RL learn its own prompts? SFT-1 and RL answer, greedily, the hard queries RL trained on.

    python scripts/probe_rl_prompts.py --run-dir runs/bench_rl10 --seeds 0 1 2 3 \
        --out scripts/results/cascade_cpu_rl_on_its_prompts.json

For each <run-dir>/seed<k> of a finished cascade benchmark (scripts/bench_cascade.py), the
split's hard queries (data/hard.parquet, with the pool's ground truth) become
data/eval_hard.parquet; SFT-1 and RL are evaluated on them into eval_hard/, and the table
and the paired difference are the benchmark's own. Set beside the difference on unseen
queries, it tells an RL stage that cannot optimise apart from one whose gains do not carry
over. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from bench_cascade import evaluate_rows, table  # noqa: E402

from stagent_ray.config import load_config  # noqa: E402
from stagent_ray.ray_setup import init_ray  # noqa: E402
from stagent_ray.runio import exists, read_table, write_table  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/cascade_cpu.yaml")
    ap.add_argument("--run-dir", required=True, help="the benchmark's run_dir (holds seed<k>/)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731 - stdout is the JSON

    run_dirs = {}
    for seed in args.seeds:
        run_dir = os.path.abspath(f"{args.run_dir}/seed{seed}")
        cfg = load_config(args.config, [f"seed={seed}", f"run_dir={run_dir}"])
        init_ray(cfg.ray)
        if not exists(run_dir, "data/eval_hard.parquet"):
            pool = {r["query_id"]: r for r in read_table(run_dir, "data/pool.parquet")}
            write_table(run_dir, "data/eval_hard.parquet",
                        [pool[r["query_id"]] for r in read_table(run_dir, "data/hard.parquet")])
        evaluate_rows(cfg, log, ["sft1", "rl"], "eval_hard")
        run_dirs[seed] = run_dir
    rows, differences = table(run_dirs, ["sft1", "rl"], "eval_hard")
    result = {"probe": "rl_on_its_prompts",
              "command": "python scripts/probe_rl_prompts.py " + shlex.join(sys.argv[1:]),
              "hard_queries": {s: len(read_table(d, "data/eval_hard.parquet"))
                               for s, d in run_dirs.items()},
              "paired_differences_verified": differences, "rows": rows}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
