"""Stage `remeasure`: find where the policy RL starts from is uncertain.

The split's hard set was measured on πθ0 (SFT-0) at `score.temperature`; RL starts from
SFT-1 and samples at `rl.temperature`. SFT-1 has learnt from the certain queries, so many
of πθ0's hard queries are now all-pass, and some of its all-fail ones now pass sometimes:
a group that is all-pass or all-fail for the policy being trained has no verdict to
compare. This stage rolls out every candidate `rl.group_size` times with SFT-1 at RL's
temperature: the candidates are the queries SFT-1 was not trained on that πθ0 did not
always solve (the split's hard and noise regions, minus the teacher-recovered ones).

Outputs: data/hard_sft1.parquet (the candidates with mixed verdicts under SFT-1, most
uncertain first: learnability p·(1−p), the order RL's curriculum takes), data/remeasured.parquet
(every candidate's rollout summary) and data/remeasure_report.json (how the candidates
moved: counts per region under πθ0 and SFT-1, the pass-count histogram).
Skipped (the report says why) with `rl.remeasure: false` or `rl.prompt_set: all`.
"""

from __future__ import annotations


def run_remeasure(cfg, checkpoint: str) -> dict:
    from stagent_ray.runio import read_table, write_json, write_table
    from stagent_ray.stages.rollouts import (consolidate, pass_count_histogram, policy_engine,
                                             rollout_pool)
    from stagent_ray.stages.split import region_of, rl_prompt_rows

    run_dir, rl = cfg.run_dir, cfg.rl
    if not rl.remeasure or rl.prompt_set != "hard":
        report = {"skipped": "rl.remeasure is off" if not rl.remeasure
                  else f"rl.prompt_set is {rl.prompt_set!r}"}
        write_json(run_dir, "data/remeasure_report.json", report)
        return report

    full = read_table(run_dir, "data/full_qa.parquet")
    before = {r["query_id"]: region_of(r, cfg.split.certain_threshold) for r in full}
    recovered = {r["query_id"] for r in read_table(run_dir, "data/certain.parquet")
                 if r["source"] == "teacher_recovered"}
    pool = read_table(run_dir, "data/pool.parquet")
    candidates = [q for q in pool if before.get(q["query_id"]) in ("hard", "noise")
                  and q["query_id"] not in recovered]
    faults, rows = {}, []
    if candidates:
        faults = rollout_pool(cfg, candidates, policy_engine(cfg, checkpoint), rl.group_size,
                              "data/parts/remeasure", salt=2, temperature=rl.temperature,
                              desc="remeasure (SFT-1 x G)")["faults"]
        rows = consolidate(run_dir, "data/parts/remeasure", "data/remeasured.parquet", None,
                           order=[q["query_id"] for q in candidates])
    hard = rl_prompt_rows([r for r in rows if 0 < sum(r["verified"]) < r["n"]])  # mixed
    write_table(run_dir, "data/hard_sft1.parquet", hard)

    def region_now(r):
        passes = sum(r["verified"])
        return "all_pass" if passes == r["n"] else "all_fail" if passes == 0 else "mixed"

    moved = {}
    for r in rows:
        key = f"{before[r['query_id']]} -> {region_now(r)}"
        moved[key] = moved.get(key, 0) + 1
    report = {"candidates": len(candidates), "hard": len(hard),
              "hard_before": sum(before[q["query_id"]] == "hard" for q in candidates),
              "moved": dict(sorted(moved.items())), "temperature": rl.temperature,
              "rollouts_per_query": rl.group_size,
              "pass_count_histogram": pass_count_histogram(rows), "faults": faults,
              "by_family": {f: sum(r["family"] == f for r in hard)
                            for f in sorted({r["family"] for r in hard})}}
    write_json(run_dir, "data/remeasure_report.json", report)
    return report
