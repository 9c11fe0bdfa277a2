"""The eval sets share nothing that matters with what trains, and seeds differ.

Leakage: for every committed config, no eval query (first set, entity split, fresh set)
shares its family and answer-relevant slots (params, so its tool calls and ground truth)
with a pool or tiny-QA query, and the entity split names no place, anchor, district or
route the pool or tiny-QA set names. Seeds: `cfg.seed` enters the rollout streams, so two
seeds draw different episodes and one seed draws the same ones again.
"""

from __future__ import annotations

import glob
from dataclasses import replace

import pytest

from stagent_ray.config import load_config
from stagent_ray.runio import read_table
from stagent_ray.stages.pool import run_pool
from stagent_ray.stages.tiny_qa import sample_tiny_queries
from stagent_ray.tasks.query import answer_key, named_entities

CONFIGS = sorted(glob.glob("configs/*.yaml"))
# The cluster and GPU configs ask for 10^4-10^5 candidates; their funnel takes minutes to
# curate them. The split is structural, so their own families, world and held-out city are
# kept and only the sizes are capped.
CAPS = {"queries_per_family": 40, "target_size": 200, "eval_per_family": 8}


def capped(path: str, run_dir: str):
    cfg = load_config(path, [f"run_dir={run_dir}"])
    pool = replace(cfg.pool, **{k: min(getattr(cfg.pool, k), v) for k, v in CAPS.items()})
    return replace(cfg, pool=pool)


@pytest.mark.parametrize("config", CONFIGS)
def test_no_eval_query_shares_an_answer_or_a_held_out_entity_with_training(config, tmp_path):
    cfg = capped(config, str(tmp_path))
    metrics = run_pool(cfg)
    pool = read_table(cfg.run_dir, "data/pool.parquet")
    evals = read_table(cfg.run_dir, "data/eval.parquet")
    if cfg.pool.source == "file":
        # The user's queries carry no slots (their params are whatever metadata they have):
        # the eval share is disjoint by text, after the funnel removed near-duplicates.
        assert evals and not {r["text"] for r in pool} & {r["text"] for r in evals}
        return
    entity = read_table(cfg.run_dir, "data/eval_entities.parquet")
    training = pool + sample_tiny_queries(cfg, pool, evals, entity)
    train_keys = {answer_key(r) for r in training}
    assert evals and entity
    assert not train_keys & {answer_key(r) for r in evals}
    assert not train_keys & {answer_key(r) for r in entity}
    assert len({answer_key(r) for r in evals}) == len(evals)  # one query per answer

    from stagent_ray.world.generate import load_world
    w = cfg.world
    cities = {c.name for c in load_world(w.seed, w.n_cities, w.pois_per_city, w.today).cities}
    train_entities = set().union(*(named_entities(r, cities) for r in training))
    assert all(named_entities(r, cities) for r in entity)
    assert not train_entities & set().union(*(named_entities(r, cities) for r in entity))

    # every family fills its share, or is named with what its generator gave
    families = cfg.pool.families or sorted({r["family"] for r in pool})
    for family in families:
        n = sum(r["family"] == family for r in evals)
        short = metrics["eval_short"].get(family)
        assert n == cfg.pool.eval_per_family or (short and short["got"] == n), (family, n)


def test_the_leakage_check_catches_a_paraphrase():
    from stagent_ray.tasks.families import generate_queries
    from stagent_ray.world.generate import load_world

    world = load_world(0)
    a, b = [q for q in generate_queries(world, "current_weather", 60, seed=0)
            if q.params == {"location": world.cities[0].name}][:2]
    assert a.text != b.text and answer_key(a) == answer_key(b)  # same answer, other words
    assert named_entities(a, {world.cities[0].name}) == set()  # a city is not an entity


def rollout_messages(cfg, engine, queries, n=3):
    from stagent_ray.stages.rollouts import RolloutActor

    actor = RolloutActor(cfg, engine, n, "parts/seed_test", temperature=1.0)
    return [t.messages for t in actor.run([(q, i) for q in queries for i in range(n)], "")]


def test_another_seed_draws_other_rollouts_and_one_seed_repeats(tmp_path, tiny_checkpoint):
    from stagent_ray.stages.rollouts import policy_engine
    from stagent_ray.tasks.families import generate_queries
    from stagent_ray.train.groups import take_prompts
    from stagent_ray.world.generate import load_world

    cfg = load_config("configs/tiny.yaml", [f"run_dir={tmp_path}", "sampling.max_new_tokens=24",
                                            "agent.max_turns=2"])
    world = load_world(0)
    queries = [q for f in ("constrained_search", "place_hours", "weather_day")
               for q in generate_queries(world, f, 2, seed=1)]
    other = replace(cfg, seed=1)
    # the teacher's noise (tiny_qa, the split's recovery, the teacher's eval row)
    assert rollout_messages(cfg, cfg.teacher, queries) == rollout_messages(cfg, cfg.teacher,
                                                                          queries)
    assert rollout_messages(cfg, cfg.teacher, queries) != rollout_messages(other, cfg.teacher,
                                                                          queries)
    # the policy's samples (score, sampled eval)
    policy = policy_engine(cfg, tiny_checkpoint)
    first = rollout_messages(cfg, policy, queries)
    assert first == rollout_messages(cfg, policy, queries)
    assert first != rollout_messages(other, policy, queries)
    # RL's prompt order (the shuffled passes; a curriculum's first pass is the given order);
    # the pool and its eval sets
    assert take_prompts(50, 0, 20, 0, False) == take_prompts(50, 0, 20, 0, False) \
        != take_prompts(50, 0, 20, 1, False)
    assert take_prompts(50, 50, 20, 0, True) != take_prompts(50, 50, 20, 1, True)
    for seeded in (cfg, other):
        run_pool(replace(seeded, run_dir=str(tmp_path / f"pool{seeded.seed}")))
    assert (read_table(str(tmp_path / "pool0"), "data/eval.parquet")
            != read_table(str(tmp_path / "pool1"), "data/eval.parquet"))
