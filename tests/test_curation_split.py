"""Pool curation (no Ray) and the split regions on a hand-computed example."""

import numpy as np

from stagent_ray.stages.rollouts import pass_at_k, summarise_query
from stagent_ray.stages.pool import (hashed_ngram_vectors, k_center_greedy, lexical_dedup,
                                     semantic_dedup)
from stagent_ray.stages.split import region_of


def test_lexical_dedup_removes_injected_near_duplicates():
    base = [f"Find a quiet cafe within {d} km of the {p} that is open at {h}:00 and rated above {r}"
            for d, p, h, r in [(1, "museum", 9, 4), (2, "station", 10, 3), (3, "park", 18, 4.5),
                               (5, "harbor", 7, 4.2), (4, "old town", 21, 3.8)]]
    others = ["What is the weather tomorrow in Lakeport?", "Plan a day trip with three stops",
              "Which train reaches Rivermouth before noon for under 300 CNY?"]
    dupes = [base[0] + ".", base[2].replace("Find", "find"), base[3] + " please"]
    texts = base + others + dupes
    keep = lexical_dedup(texts, threshold=0.8)
    assert keep == list(range(len(base) + len(others)))


def test_semantic_dedup_within_buckets_and_k_center():
    texts = ["cheap hotel near the station", "cheap hotels near the station",
             "cheap hotel near the station", "museum opening hours on monday"]
    vecs = hashed_ngram_vectors(texts)
    # Same text in a different bucket survives; near-identical in the same bucket does not.
    keep = semantic_dedup(vecs, ["a", "a", "b", "a"], threshold=0.6)
    assert keep == [0, 2, 3]
    pts = np.array([[0, 0], [0.1, 0], [10, 0], [0, 10], [10, 10.1]], dtype=np.float32)
    picked = k_center_greedy(pts, 4, seed=0)
    assert len(picked) == 4 and {2, 3, 4} <= set(picked)  # the far corners are always kept


def _row(verified, rewards):
    trajs = [{"reward": r, "verified": v, "num_generated_tokens": 10, "num_tool_calls": 1,
              "num_tool_errors": 0, "messages": f"m{i}"}
             for i, (r, v) in enumerate(zip(rewards, verified))]
    return summarise_query({"query_id": "q", "family": "f", "difficulty": 2, "text": "t"}, trajs)


def test_split_regions_hand_computed():
    T, F = True, False
    trivial = _row([T] * 8, [1.0] * 8)
    certain = _row([T] * 7 + [F], [1.0] * 7 + [0.2])           # mean 0.9
    hard = _row([T, T, T, F, F, F, F, F], [1, 1, 1, .2, .2, .2, .2, .2])  # mean 0.5
    noise = _row([F] * 8, [0.3] * 8)
    assert [region_of(r, 0.75) for r in (trivial, certain, hard, noise)] == \
        ["trivial", "certain", "hard", "noise"]
    assert abs(certain["mean_reward"] - 0.9) < 1e-9
    assert abs(hard["learnability"] - (3 / 8) * (5 / 8)) < 1e-12
    assert certain["best_verified"] and certain["best_messages"] == "m0"
    assert hard["pass_at_1"] == 3 / 8 and hard["pass_at_k"] == 1.0
    assert pass_at_k(8, 3, 2) == 1 - (5 * 4) / (8 * 7)
    # A lower threshold moves the hard query into certain.
    assert region_of(hard, 0.5) == "certain"


def test_world_pool_families_and_held_out_city(tmp_path):
    from stagent_ray.config import load_config
    from stagent_ray.runio import read_table
    from stagent_ray.stages.pool import run_pool

    families = ["unsolvable", "current_weather", "place_hours"]
    for hold_out in (True, False):
        run_dir = str(tmp_path / str(hold_out))
        cfg = load_config("configs/tiny.yaml", [
            f"run_dir={run_dir}", f"pool.families=[{','.join(families)}]",
            f"pool.hold_out_city={str(hold_out).lower()}", "pool.queries_per_family=20",
            "pool.eval_per_family=4"])
        metrics = run_pool(cfg)
        pool, evals = read_table(run_dir, "data/pool.parquet"), read_table(run_dir,
                                                                           "data/eval.parquet")
        assert {r["family"] for r in pool} == {r["family"] for r in evals} == set(families)
        assert not {r["text"] for r in pool} & {r["text"] for r in evals}
        pool_cities = {r["city"] for r in pool}
        if hold_out:   # the eval set's city is one the pool never shows
            assert metrics["held_out_city"] not in pool_cities
            assert metrics["eval_held_out_city"] > 0
        else:
            assert metrics["held_out_city"] is None and len(pool_cities - {None}) == 4
