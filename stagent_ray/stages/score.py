"""Stage `score`: the Full QA pool. Every candidate query is rolled out N times (default 8)
by πθ0 at temperature > 0 and every trajectory is scored; how often the model succeeds is
the query's difficulty *for this model*.

Ray Data streams the pool through `score.num_actors` actors. Each actor runs the agent
loop with an engine inside it (`score.engine: actor`) or asks the Policy deployment on Ray
Serve (`score.engine: serve`), and writes its rows as it finishes them, so the stage holds
bounded memory for any pool size and a restart skips query_ids already written.

Outputs: data/full_qa.parquet (one row per query: N rewards and verified flags, mean,
variance, pass@1, pass@N, learnability, tokens, best trajectory) and
data/trajectories.parquet (every trajectory, with token ids, log-probs and loss mask).
"""

from __future__ import annotations


def run_score(cfg, run_dir: str, checkpoint: str) -> dict:
    from stagent_ray.rollout.ray_data import consolidate, policy_engine, rollout_pool
    from stagent_ray.runio import read_table

    pool = read_table(run_dir, "data/pool.parquet")
    s = cfg.score
    engine = policy_engine(cfg, checkpoint)
    if s.engine == "serve":
        from ray import serve

        from stagent_ray.serve.deployments import deploy_policy
        deploy_policy(checkpoint, cfg.policy, cfg.serve, name="policy")
        engine = {"kind": "serve", "app": "policy", "model": checkpoint}
    try:
        stats = rollout_pool(cfg, run_dir, pool, engine, s.n_rollouts, "data/parts/score",
                             s.num_actors, s.cpus_per_actor, s.batch_size,
                             temperature=s.temperature, desc="score (πθ0 × N)")
    finally:
        if s.engine == "serve":
            serve.delete("policy")
    rows = consolidate(run_dir, "data/parts/score", "data/full_qa.parquet",
                       "data/trajectories.parquet", order=[r["query_id"] for r in pool])
    n = s.n_rollouts
    hist = [sum(sum(r["verified"]) == k for r in rows) for k in range(n + 1)]
    return {**stats, "rows": len(rows), "pass_count_histogram": hist,
            "mean_reward": sum(r["mean_reward"] for r in rows) / max(1, len(rows))}
