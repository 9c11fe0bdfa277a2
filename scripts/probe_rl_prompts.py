"""Does RL learn its own prompts, and what did it learn? SFT-1 and RL answer, greedily, the
prompts RL could draw; per-family flips on every set.

    python scripts/probe_rl_prompts.py --run-dir runs/bench_cascade_cpu --seeds 0 1 2 \
        --out scripts/results/cascade_cpu_rl_on_its_prompts.json

For each <run-dir>/seed<k> of a finished cascade benchmark (scripts/bench_cascade.py), the
prompts RL could have drawn are cut in two by train/rl_prompts.jsonl: those it drew (rolled
out at least once: data/eval_rl_drawn.parquet) and those it never drew
(data/eval_rl_undrawn.parquet). "Could have drawn" is every candidate the remeasure stage
rolled out (data/remeasured.parquet: the split's hard and unrecovered noise queries; RL
draws only those with mixed verdicts under SFT-1) or, without it, RL's prompt set. SFT-1
and RL are evaluated on both, and the table and the paired difference are the benchmark's
own. Drawn against undrawn tells an RL stage that cannot optimise apart from one whose
gains do not carry over even to prompts of the same set.

`flips`, per set (the eval, the entity split when there is one, drawn, undrawn) and per
family: queries whose greedy verdict RL turned from fail to pass (`gained`) and from pass to
fail (`lost`), and how many greedy answers RL rewrote at all. Prints one JSON line.
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
from stagent_ray.stages.evaluate import final_answer  # noqa: E402

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
            could = {r["query_id"] for r in (
                read_table(run_dir, "data/remeasured.parquet")
                if exists(run_dir, "data/remeasured.parquet") else rl_prompts(cfg)[0])}
            prompts = [q for q in read_table(run_dir, "data/pool.parquet")
                       if q["query_id"] in could]  # whole query records: eval scores them
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
    sets = ["eval"] + [p for p in ["eval_entities", *PARTS]
                       if all(exists(d, f"{p}/rl_greedy_trajectories.parquet")
                              for d in run_dirs.values())]
    result["flips"] = {part: flips(run_dirs, part) for part in sets}
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


def flips(run_dirs: dict[int, str], part: str, a: str = "sft1", b: str = "rl") -> dict:
    """Per family, summed over seeds: queries, a's and b's verified, fail->pass, pass->fail,
    and greedy answers b wrote differently from a."""
    out = {}
    for run_dir in run_dirs.values():
        family = {q["query_id"]: q["family"] for q in read_table(run_dir, f"data/{part}.parquet")}
        before, after = ({t["query_id"]: t for t in read_table(
            run_dir, f"{part}/{name}_greedy_trajectories.parquet") if not t.get("infra_fault")}
            for name in (a, b))
        for qid in sorted(before.keys() & after.keys()):
            x, y = before[qid], after[qid]
            row = out.setdefault(family[qid], dict.fromkeys(
                ["queries", a, b, "gained", "lost", "rewritten"], 0))
            row["queries"] += 1
            row[a] += int(x["verified"])
            row[b] += int(y["verified"])
            row["gained"] += int(not x["verified"] and y["verified"])
            row["lost"] += int(x["verified"] and not y["verified"])
            row["rewritten"] += int(final_answer(x["messages"]) != final_answer(y["messages"]))
    total = {k: sum(r[k] for r in out.values()) for k in next(iter(out.values()), {})}
    return {"by_family": dict(sorted(out.items())), "total": total}


if __name__ == "__main__":
    main()
