"""Stage `split`: route every scored query by how certain πθ0 is on it.

Regions (N rollouts per query, "pass" = verified):
  trivial  all N pass                 → a `split.keep_trivial_fraction` share joins SFT-1
  certain  mean reward ≥ threshold    → SFT-1, with the policy's best verified trajectory
  hard     in between                 → RL prompts, ranked by learnability p·(1−p)
  noise    all N fail                 → K_max more teacher attempts (a model teacher on
                                        Serve, as in tiny_qa); recovered ones join SFT-1,
                                        the rest are dropped and counted
Outputs: data/certain.parquet (SFT-1 rows), data/hard.parquet (RL prompts),
data/split_report.json (every count and the pass-count histogram).
"""

from __future__ import annotations

import random


def region_of(row: dict, certain_threshold: float) -> str:
    passes = sum(row["verified"])
    if passes == row["n"]:
        return "trivial"
    if passes == 0:
        return "noise"
    if row["mean_reward"] >= certain_threshold:
        return "certain"
    return "hard"


def rl_prompt_rows(rows: list[dict]) -> list[dict]:
    """Scored rows as RL prompt rows (data/hard.parquet, data/hard_sft1.parquet): most
    learnable first, ties by query_id (a stable order)."""
    rows = sorted(rows, key=lambda r: (-r["learnability"], r["query_id"]))
    return [{"query_id": r["query_id"], "family": r["family"], "text": r["text"],
             "pass_rate": r["pass_rate"], "mean_reward": r["mean_reward"],
             "learnability": r["learnability"]} for r in rows]


def run_split(cfg) -> dict:
    from stagent_ray.runio import read_table, write_json, write_table
    from stagent_ray.serve.deployments import teacher_app
    from stagent_ray.stages.rollouts import consolidate, pass_count_histogram, rollout_pool

    run_dir = cfg.run_dir
    full = read_table(run_dir, "data/full_qa.parquet")
    regions = {r["query_id"]: region_of(r, cfg.split.certain_threshold) for r in full}
    by_region = {k: [r for r in full if regions[r["query_id"]] == k]
                 for k in ("trivial", "certain", "hard", "noise")}

    def sft_row(r, messages, source):
        return {"query_id": r["query_id"], "family": r["family"], "text": r["text"],
                "messages": messages, "source": source, "pass_rate": r["pass_rate"]}

    certain = [sft_row(r, r["best_messages"], "policy") for r in by_region["certain"]]
    trivial = by_region["trivial"]
    rng = random.Random(cfg.seed)
    kept_trivial = rng.sample(trivial, round(cfg.split.keep_trivial_fraction * len(trivial)))
    certain += [sft_row(r, r["best_messages"], "policy_trivial") for r in kept_trivial]

    # All-fail queries: give the teacher K_max more attempts each.
    recovered, recovery_faults = [], {}
    noise = by_region["noise"]
    if noise and cfg.split.k_max > 0:
        pool = {r["query_id"]: r for r in read_table(run_dir, "data/pool.parquet")}
        with teacher_app(cfg) as serve_app:  # as in tiny_qa: model teachers on Serve
            stats = rollout_pool(cfg, [pool[r["query_id"]] for r in noise], cfg.teacher,
                                 cfg.split.k_max, "data/parts/recover", salt=1,
                                 desc="split (teacher recovery)", serve_app=serve_app)
        recovery_faults = stats["faults"]
        rows = consolidate(run_dir, "data/parts/recover", "data/recovered_scored.parquet", None)
        ok = {r["query_id"]: r for r in rows if r["best_verified"]}
        recovered = [sft_row(r, ok[r["query_id"]]["best_messages"], "teacher_recovered")
                     for r in noise if r["query_id"] in ok]
    certain += recovered

    hard_rows = rl_prompt_rows(by_region["hard"])
    write_table(run_dir, "data/certain.parquet", certain)
    write_table(run_dir, "data/hard.parquet", hard_rows)
    report = {
        "queries": len(full),
        "regions": {k: len(v) for k, v in by_region.items()},
        "sft1_rows": len(certain),
        "sft1_from_certain": len(by_region["certain"]),
        "sft1_from_trivial": len(kept_trivial),
        "trivial_dropped": len(trivial) - len(kept_trivial),
        "noise_recovered_by_teacher": len(recovered),
        "noise_dropped": len(noise) - len(recovered),
        "recovery_faults": recovery_faults,   # tool faults met by the teacher's attempts
        "rl_prompts": len(hard_rows),
        "pass_count_histogram": pass_count_histogram(full),
        "thresholds": {"certain_threshold": cfg.split.certain_threshold,
                       "keep_trivial_fraction": cfg.split.keep_trivial_fraction,
                       "k_max": cfg.split.k_max},
        "by_family": {f: {k: sum(r["family"] == f for r in v) for k, v in by_region.items()}
                      for f in sorted({r["family"] for r in full})},
    }
    write_json(run_dir, "data/split_report.json", report)
    return report
