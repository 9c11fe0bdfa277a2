"""Does RL learn its own prompts? SFT-1 and RL answer, greedily, the prompts RL could draw.

    python scripts/probe_rl_prompts.py --run-dir runs/bench_cascade_cpu --seeds 0 1 2 \
        --out scripts/results/cascade_cpu_rl_on_its_prompts.json

For each <run-dir>/seed<k> of a finished cascade benchmark (scripts/bench_cascade.py), RL's
prompt set (train/rl.py rl_prompts: the hard set re-measured on SFT-1, or the split's) is
cut in two by train/rl_prompts.jsonl: the prompts RL drew (rolled out at least once:
data/eval_rl_drawn.parquet) and those it never drew (data/eval_rl_undrawn.parquet). SFT-1
and RL are evaluated on both, and the table and the paired difference are the benchmark's
own. Drawn against undrawn tells an RL stage that cannot optimise apart from one whose
gains do not carry over even to prompts of the same set. Prints one JSON line.
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
from stagent_ray.runio import exists, read_jsonl, read_table, write_table  # noqa: E402
from stagent_ray.train.rl import rl_prompts  # noqa: E402

PARTS = ["eval_rl_drawn", "eval_rl_undrawn"]


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
        if not exists(run_dir, "data/eval_rl_undrawn.parquet"):
            prompts, _ = rl_prompts(cfg)
            drawn = {d["query_id"] for d in read_jsonl(run_dir, "train/rl_prompts.jsonl")}
            write_table(run_dir, "data/eval_rl_drawn.parquet",
                        [p for p in prompts if p["query_id"] in drawn])
            write_table(run_dir, "data/eval_rl_undrawn.parquet",
                        [p for p in prompts if p["query_id"] not in drawn])
        for part in PARTS:
            if read_table(run_dir, f"data/{part}.parquet"):
                evaluate_rows(cfg, log, ["sft1", "rl"], part)
        run_dirs[seed] = run_dir
    result = {"probe": "rl_on_its_prompts",
              "command": "python scripts/probe_rl_prompts.py " + shlex.join(sys.argv[1:])}
    for part in PARTS:
        dirs = {s: d for s, d in run_dirs.items() if read_table(d, f"data/{part}.parquet")}
        rows, differences = table(dirs, ["sft1", "rl"], part) if dirs else ({}, {})
        result[part] = {"queries": {s: len(read_table(d, f"data/{part}.parquet"))
                                    for s, d in run_dirs.items()},
                        "paired_differences_verified": differences, "rows": rows}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
