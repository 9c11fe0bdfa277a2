"""Stage `score`: the Full QA pool. Every candidate query is rolled out N times (default 8)
by πθ0 at temperature > 0 and every trajectory is scored; how often the model succeeds is
the query's difficulty *for this model*.

Ray Data streams the pool through the `rollout:` section's actors (stages/rollouts.py). Each actor runs the agent
loop with an engine inside it (`score.engine: actor`) or asks the Policy deployment on Ray
Serve (`score.engine: serve`), and writes its rows as it finishes them, so the stage holds
bounded memory for any pool size and a restart skips query_ids already written.

Outputs: data/full_qa.parquet (one row per query: N rewards and verified flags, mean,
variance, pass@1, pass@N, learnability, tokens, best trajectory) and
data/trajectories.parquet (every trajectory, with token ids, log-probs and loss mask).
"""

from __future__ import annotations


def run_score(cfg, checkpoint: str) -> dict:
    from stagent_ray.runio import read_table
    from stagent_ray.stages.rollouts import (consolidate, pass_count_histogram, policy_engine,
                                             rollout_pool)

    run_dir, s = cfg.run_dir, cfg.score
    pool = read_table(run_dir, "data/pool.parquet")
    serve_app = "policy" if s.engine == "serve" else None
    if serve_app:
        from ray import serve

        from stagent_ray.serve.deployments import deploy_policy
        deploy_policy(checkpoint, cfg.policy, cfg.serve, name=serve_app)
    try:
        stats = rollout_pool(cfg, pool, policy_engine(cfg, checkpoint), s.n_rollouts,
                             "data/parts/score", temperature=s.temperature,
                             desc="score (πθ0 × N)", serve_app=serve_app)
    finally:
        if serve_app:
            serve.delete(serve_app)
    rows = consolidate(run_dir, "data/parts/score", "data/full_qa.parquet",
                       "data/trajectories.parquet", order=[r["query_id"] for r in pool])
    return {**stats, "rows": len(rows), "pass_count_histogram": pass_count_histogram(rows),
            "mean_reward": sum(r["mean_reward"] for r in rows) / max(1, len(rows))}
