"""Query families: determinism, taxonomy, difficulty labels, record round trips, and ground
truth re-derived independently from the world data."""

import argparse
import json
from datetime import datetime

import pyarrow as pa
import pytest

from stagent_ray.tasks import cli
from stagent_ray.tasks.families import FAMILIES, generate_queries
from stagent_ray.tasks.query import Query
from stagent_ray.tasks.taxonomy import FAMILY_INTENT, LEVEL1, TAXONOMY, check_taxonomy, task_type
from stagent_ray.world.generate import load_world
from stagent_ray.world.geo import haversine_km, is_open


@pytest.fixture(scope="module")
def world():
    return load_world(0)


@pytest.fixture(scope="module")
def samples(world):
    return {family: generate_queries(world, family, 30, seed=0) for family in FAMILIES}


def test_at_least_twelve_families_and_taxonomy_covers_them():
    assert len(FAMILIES) >= 12
    assert set(FAMILIES) == set(FAMILY_INTENT)
    check_taxonomy()
    assert LEVEL1 == ["Discovery", "Planning & Decision", "Dynamic Information", "Rules & Policies",
                      "Out of scope"]
    for level1, level2 in FAMILY_INTENT.values():
        assert task_type(level1, level2) in ("planning", "retrieval", "consultation")
    used = {level1 for level1, _ in FAMILY_INTENT.values()}
    assert used == set(TAXONOMY)


def test_generation_is_deterministic(world):
    for family in FAMILIES:
        a = [q.to_dict() for q in generate_queries(world, family, 10, seed=7)]
        b = [q.to_dict() for q in generate_queries(world, family, 10, seed=7)]
        assert a == b, family
        c = [q.to_dict() for q in generate_queries(world, family, 10, seed=8)]
        assert a != c, family


def test_every_family_fills_fifty_distinct_queries(world):
    for family in FAMILIES:
        queries = generate_queries(world, family, 50, seed=0)
        assert len(queries) == 50, family
        assert len({q.query_id for q in queries}) == 50
        assert len({q.text for q in queries}) == 50


def test_labels_and_fields(samples):
    for family, queries in samples.items():
        for q in queries:
            assert q.family == family
            assert (q.intent["level1"], q.intent["level2"]) == FAMILY_INTENT[family]
            if family == "unsolvable":
                assert q.difficulty == -1
            elif family == "no_tool":
                assert q.difficulty == 0
            else:
                assert 1 <= q.difficulty <= 5
            assert q.text and q.ground_truth["kind"]
            assert "ground_truth" not in json.dumps(q.params)


def test_several_phrasings_per_family(samples):
    for family, queries in samples.items():
        openings = {" ".join(q.text.split()[:2]) for q in queries}
        assert len(openings) >= 2, family


def test_query_round_trips_through_json_and_parquet(samples):
    rows = [q.to_row() for qs in samples.values() for q in qs[:3]]
    table = pa.Table.from_pylist(rows)
    back = [Query.from_dict(r) for r in table.to_pylist()]
    assert [q.to_dict() for q in back] == [q.to_dict() for qs in samples.values() for q in qs[:3]]
    q = samples["itinerary"][0]
    assert Query.from_dict(json.loads(json.dumps(q.to_dict()))) == q


def test_constrained_search_accept_set_satisfies_every_constraint(world, samples):
    for q in samples["constrained_search"]:
        p = q.params
        anchor = world.poi(p["city"], p["anchor"])
        assert q.ground_truth["accept"]
        for name in q.ground_truth["accept"]:
            poi = next(x for x in world.pois if x.name == name and haversine_km(x.latlng, anchor.latlng) < 30)
            assert haversine_km(poi.latlng, anchor.latlng) * 1000 <= p["radius_m"]
            assert poi.category == p["category"]
            if p["tag"]:
                assert p["tag"] in poi.tags
            if p["min_rating"] is not None:
                assert poi.rating >= p["min_rating"]
            if p["price_max"] is not None:
                assert poi.avg_price <= p["price_max"]
            if p["open_at"]:
                assert is_open(poi, datetime.fromisoformat(p["open_at"]))


def test_nearest_open_answer_is_the_nearest_open_place(world, samples):
    for q in samples["nearest_open"]:
        p = q.params
        anchor = world.poi(p["city"], p["anchor"])
        when = datetime.fromisoformat(p["open_at"])
        candidates = [x for x in world.pois if x.category == p["category"] and is_open(x, when)
                      and haversine_km(x.latlng, anchor.latlng) <= 3.0]
        nearest = min(candidates, key=lambda x: haversine_km(x.latlng, anchor.latlng))
        assert nearest.name == q.ground_truth["answer"]


def test_intercity_pick_meets_the_constraint(world, samples):
    for q in samples["intercity_trip"]:
        p, code = q.params, q.ground_truth["answer"]
        rows = [(f.number, f.arrive, f.price) for f in world.flights
                if (f.origin, f.destination, f.date) == (p["origin"], p["destination"], p["date"])]
        rows += [(t.number, t.arrive, t.price_second) for t in world.trains
                 if (t.origin, t.destination, t.date) == (p["origin"], p["destination"], p["date"])]
        pick = next(r for r in rows if r[0] == code)
        if p["goal"] == "cheapest":
            fits = [r for r in rows if r[1] <= p["arrive_by"]]
            assert pick[2] == min(r[2] for r in fits)
        else:
            fits = [r for r in rows if r[2] <= p["budget"]]
            assert pick[1] == min(r[1] for r in fits)


def test_weather_day_driest_is_unique(world, samples):
    for q in samples["weather_day"]:
        p = q.params
        days = [world.forecast(p["city"], d) for d in world.dates() if p["first_date"] <= d][:p["days"]]
        if p["goal"] == "driest":
            best = min(days, key=lambda w: w.precip_prob)
            assert best.date == q.ground_truth["answer"]
            assert sorted(w.precip_prob for w in days)[1] - best.precip_prob >= 5


def test_cli_sample_prints_queries(capsys):
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["tasks", "sample", "--family", "meeting_point", "--n", "3", "--seed", "2"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert all(json.loads(line)["family"] == "meeting_point" for line in lines)
