"""Stage `tiny_qa`: the teacher writes K trajectories for a small sample of the pool; the
scorer keeps the best verified one per query. A model teacher (hf, vllm, openai) answers
from the Teacher deployment on Ray Serve (`serve.teacher_replicas`); the oracle runs in the
rollout actors.

Input: data/pool.parquet. The sample is `tiny_qa.fraction` of the pool plus
`tiny_qa.long_tail` synthetic queries from the families the pool holds least of (the rare
tool chains; only for the world's own pool: a pool read from the user's files has no
generator to draw from); none of them shares an answer key (family + params) with an eval
query or names an entity of the entity split. Queries where none of the K attempts verified
are recorded, never dropped silently. Outputs: data/tiny_qa.parquet (SFT-0 data),
data/tiny_qa_unverified.parquet, data/tiny_qa_queries.parquet (the sampled queries with their
slots: what the eval sets must not share).
"""

from __future__ import annotations

import json
import random


def sample_tiny_queries(cfg, pool_rows: list[dict], eval_rows: list[dict],
                        entity_rows: list[dict]) -> list[dict]:
    from stagent_ray.runio import query_to_row
    from stagent_ray.tasks.families import FAMILIES, generate_queries
    from stagent_ray.tasks.query import answer_key, named_entities
    from stagent_ray.world.generate import load_world

    rng = random.Random(cfg.seed)
    k = max(1, round(cfg.tiny_qa.fraction * len(pool_rows)))
    sample = rng.sample(pool_rows, min(k, len(pool_rows)))
    if cfg.tiny_qa.long_tail <= 0 or cfg.pool.source == "file":
        return sample
    families = cfg.pool.families or FAMILIES
    counts = {f: sum(r["family"] == f for r in pool_rows) for f in families}
    rare = sorted(families, key=lambda f: (counts[f], f))[:max(1, len(families) // 4)]
    w = cfg.world
    world = load_world(w.seed, w.n_cities, w.pois_per_city, w.today)
    cities = {c.name for c in world.cities}
    seen = {r["text"] for r in pool_rows + eval_rows + entity_rows}
    eval_keys = {answer_key(r) for r in eval_rows + entity_rows}
    held_entities = set().union(*(named_entities(r, cities) for r in entity_rows))
    extra = []
    for i in range(cfg.tiny_qa.long_tail):
        family = rare[i % len(rare)]
        for q in generate_queries(world, family, 4, seed=cfg.seed + 20_000 + i):
            if (q.text not in seen and answer_key(q) not in eval_keys
                    and not named_entities(q, cities) & held_entities):
                seen.add(q.text)
                extra.append(query_to_row(q))
                break
    return sample + extra


def run_tiny_qa(cfg) -> dict:
    from stagent_ray.runio import exists, read_table, write_table
    from stagent_ray.serve.deployments import replica_stats, teacher_app
    from stagent_ray.stages.rollouts import consolidate, rollout_pool

    run_dir = cfg.run_dir
    pool = read_table(run_dir, "data/pool.parquet")
    entity_rows = (read_table(run_dir, "data/eval_entities.parquet")
                   if exists(run_dir, "data/eval_entities.parquet") else [])  # world pools
    queries = sample_tiny_queries(cfg, pool, read_table(run_dir, "data/eval.parquet"),
                                  entity_rows)
    write_table(run_dir, "data/tiny_qa_queries.parquet", queries)  # with their slots
    with teacher_app(cfg) as serve_app:  # model teachers on Serve; the oracle in each actor
        stats = rollout_pool(cfg, queries, cfg.teacher, cfg.tiny_qa.k, "data/parts/tiny_qa",
                             desc="tiny_qa (teacher)", serve_app=serve_app)
        if serve_app:  # what each Teacher replica answered (the manifest shows it)
            stats["teacher_replica_requests"] = [
                s["requests"] for s in replica_stats(serve_app, cfg.teacher)]
    rows = consolidate(run_dir, "data/parts/tiny_qa", "data/tiny_qa_scored.parquet", None,
                       order=[q["query_id"] for q in queries])
    kept = [{"query_id": r["query_id"], "family": r["family"], "text": r["text"],
             "messages": r["best_messages"], "reward": r["best_reward"],
             "teacher_pass_rate": r["pass_rate"]} for r in rows if r["best_verified"]]
    unverified = [{"query_id": r["query_id"], "family": r["family"], "text": r["text"],
                   "rewards": r["rewards"]} for r in rows if not r["best_verified"]]
    write_table(run_dir, "data/tiny_qa_unverified.parquet", unverified)
    write_table(run_dir, "data/tiny_qa.parquet", kept)
    return {**stats, "sampled": len(queries), "kept": len(kept), "unverified": len(unverified),
            "teacher_pass_rate": sum(r["pass_rate"] for r in rows) / max(1, len(rows)),
            "families": json.loads(json.dumps({f: sum(k["family"] == f for k in kept)
                                               for f in sorted({k["family"] for k in kept})}))}
