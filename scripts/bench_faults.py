"""The tiny cascade under 20% injected tool faults (and garbage generations): does every stage
complete, is every fault counted and handled, is any row lost or written twice?

    python scripts/bench_faults.py [--run-dir DIR] [key=value ...]

Prints one JSON line: the stages completed, the faults injected by kind and stage (as the
stage metrics and the report count them), how they were handled (retried; episodes
re-rolled; episodes left out of the scores), and the rows lost and duplicated across the
row-producing stages (goal: 0 and 0).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

# Quick: a small model and pool, few steps; 20% of tool call attempts fault.
OVERRIDES = [
    "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2",
    "model.num_heads=2", "model.num_kv_heads=1", "model.vocab_size=2048",
    "pool.target_size=32", "pool.eval_per_family=1", "tiny_qa.fraction=0.25",
    "tiny_qa.long_tail=4", "tiny_qa.k=4", "score.n_rollouts=4", "split.k_max=2",
    "sampling.max_new_tokens=48", "agent.max_tokens=1200",
    "sft0.epochs=1", "sft0.seq_len=1024", "sft1.epochs=1", "sft1.seq_len=1024",
    "rl.steps=2", "rl.prompts_per_step=2", "rl.group_size=4", "rl.prompt_set=all",
    "rl.max_refill_rounds=0", "eval.checkpoints=[rl]", "eval.pass_k=2",
    "world.tool_timeout_s=0.5", "faults.tool_timeout=0.05", "faults.tool_error=0.1",
    "faults.tool_malformed=0.05", "faults.engine_garbage=0.1",
]


def lost_and_duplicated(expected: list, got: list) -> tuple[int, int]:
    return len(set(expected) - set(got)), len(got) - len(set(got))


def row_checks(run_dir: str, cfg, manifest: dict) -> dict[str, tuple[int, int]]:
    """(lost, duplicated) per table, against the ids each table must hold exactly once."""
    from stagent_ray.runio import exists, read_json, read_table

    ids = lambda rel: [r["query_id"] for r in read_table(run_dir, rel)]  # noqa: E731
    pairs = lambda rel: [(r["query_id"], r["rollout_index"]) for r in read_table(run_dir, rel)]  # noqa: E731
    pool, evals = ids("data/pool.parquet"), ids("data/eval.parquet")
    scored = ids("data/tiny_qa_scored.parquet")
    sampled = manifest["stages"]["tiny_qa"]["metrics"]["sampled"]
    split = read_json(run_dir, "data/split_report.json")
    certain, hard = ids("data/certain.parquet"), ids("data/hard.parquet")
    n = cfg.score.n_rollouts
    checks = {
        "tiny_qa": (sampled - len(set(scored)), len(scored) - len(set(scored))),
        "tiny_qa_split": lost_and_duplicated(scored, ids("data/tiny_qa.parquet")
                                             + ids("data/tiny_qa_unverified.parquet")),
        "score": lost_and_duplicated(pool, ids("data/full_qa.parquet")),
        "score_trajectories": lost_and_duplicated([(q, i) for q in pool for i in range(n)],
                                                  pairs("data/trajectories.parquet")),
        "split": (len(pool) - sum(split["regions"].values()),
                  len(certain) - len(set(certain)) + len(hard) - len(set(hard))),
    }
    for name in ["teacher"] + list(cfg.eval.checkpoints):
        for mode, k in (("greedy", 1), ("sampled", cfg.eval.pass_k if name != "teacher" else 1)):
            rel = f"eval/{name}_{mode}_trajectories.parquet"
            if exists(run_dir, rel):
                checks[f"eval_{name}_{mode}"] = lost_and_duplicated(
                    [(q, i) for q in evals for i in range(k)], pairs(rel))
    return checks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default=None, help="default: a fresh temporary directory")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    from stagent_ray.config import load_config
    from stagent_ray.pipeline import STAGES, run_pipeline
    from stagent_ray.runio import read_json

    run_dir = args.run_dir or tempfile.mkdtemp(prefix="bench_faults_")
    cfg = load_config("configs/tiny.yaml", OVERRIDES + args.overrides + [f"run_dir={run_dir}"])
    start = time.perf_counter()
    code = run_pipeline(cfg, log=lambda line: print(line, file=sys.stderr))
    seconds = time.perf_counter() - start
    manifest = read_json(cfg.run_dir, "manifest.json")
    done = [s for s in STAGES if manifest["stages"].get(s, {}).get("status") == "complete"]
    by_stage = manifest["stages"].get("report", {}).get("metrics", {}).get("faults", {})
    total = Counter()
    for counts in by_stage.values():
        total.update(counts)
    tool = sum(total[f"injected_{k}"] for k in ("timeout", "error", "malformed"))
    checks = row_checks(cfg.run_dir, cfg, manifest) if "eval" in done else {}
    f = cfg.faults
    print(json.dumps({
        "machine": "CPU sandbox, 2 cores", "exit_code": code,
        "stages_completed": f"{len(done)}/{len(STAGES)}", "seconds": round(seconds, 1),
        "tool_fault_rate": round(f.tool_timeout + f.tool_error + f.tool_malformed, 3),
        "garbage_rate": f.engine_garbage,
        "tool_faults_injected": tool,
        "injected_by_kind": {k: total[f"injected_{k}"]
                             for k in ("timeout", "error", "malformed", "garbage")},
        "tool_faults_handled": total["retried"] + total["unrecovered"],
        "retried": total["retried"], "failed_after_retries": total["unrecovered"],
        "episodes_rerolled": total["rerolled"],
        "episodes_left_out": total["infra_faulted_episodes"],
        "injected_by_stage": {s: sum(v for k, v in c.items() if k.startswith("injected_"))
                              for s, c in by_stage.items()},
        "rows_lost": sum(lost for lost, _ in checks.values()),
        "rows_duplicated": sum(dup for _, dup in checks.values()),
        "tables_checked": len(checks), "run_dir": cfg.run_dir,
    }))


if __name__ == "__main__":
    main()
