"""The generated world: determinism, shape, and the invariants the tools rely on."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import date, datetime

from stagent_ray.world.generate import ALL_CATEGORIES, CONDITIONS, generate_world, load_world
from stagent_ray.world.geo import haversine_km, hhmm_to_min, is_open
from stagent_ray.world.model import World


def test_same_seed_same_bytes_different_seed_different():
    a, b, c = generate_world(0), generate_world(0), generate_world(1)
    assert a.to_json() == b.to_json()
    assert a.digest() == b.digest()
    assert a.digest() != c.digest()
    assert generate_world(0, today="2026-07-01").digest() != a.digest()


def test_digest_is_stable_across_processes_and_hash_seeds():
    code = ("from stagent_ray.world.generate import generate_world; "
            "from stagent_ray.world.tools import call_tool; w = generate_world(7); "
            "print(w.digest(), call_tool(w, 'web_search', {'query': 'museum ticket refund closed'}))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in (1, 2)}
    assert len(outs) == 1
    assert outs.pop().split()[0] == generate_world(7).digest()


def test_generation_is_fast_and_load_world_caches():
    t = time.perf_counter()
    generate_world(123)
    assert time.perf_counter() - t < 1.0
    assert load_world(0) is load_world(0)


def test_json_round_trip():
    w = load_world(0)
    again = World.from_dict(json.loads(w.to_json()))
    assert again.digest() == w.digest()
    assert again.poi(w.cities[0].name, w.cities[0].airport).category == "airport"


def test_cities_districts_and_pois():
    w = load_world(0)
    assert len(w.cities) == 4
    districts = [d.name for c in w.cities for d in c.districts]
    assert len(districts) == len(set(districts))  # district names are unique world-wide
    for i, c in enumerate(w.cities):
        assert 4 <= len(c.districts) <= 8
        for other in w.cities[i + 1:]:
            assert haversine_km((c.lat, c.lng), (other.lat, other.lng)) >= 150
        pois = w.pois_by_city[c.name]
        assert len(pois) >= 300
        assert len({p.name for p in pois}) == len(pois)  # names unique within a city
        assert len({p.category for p in pois}) >= 15
        assert {p.district for p in pois} <= {d.name for d in c.districts}
        assert w.poi(c.name, c.airport).category == "airport"
        assert all(w.poi(c.name, s).category == "train_station" for s in c.stations)
    for p in w.pois:
        assert p.category in ALL_CATEGORIES
        assert 0.0 <= p.rating <= 5.0 and round(p.rating, 1) == p.rating
        assert isinstance(p.avg_price, int) and p.avg_price >= 0
        assert len(p.hours) == 7
        for day in p.hours:
            for o, c in day:
                assert 0 <= hhmm_to_min(o) < hhmm_to_min(c) <= 1440
    ids = [p.poi_id for p in w.pois]
    assert len(ids) == len(set(ids))
    corridor = [p for p in w.pois if not p.city]
    assert corridor and all("24h" in p.tags for p in corridor)


def test_hours_conventions():
    w = load_world(0)
    tagged_24h = [p for p in w.pois if "24h" in p.tags]
    assert tagged_24h
    assert all(is_open(p, datetime(2026, 6, 3, 3, 0)) for p in tagged_24h)
    closed = [p for p in w.pois if any(not day for day in p.hours)]
    assert closed
    p = closed[0]
    closed_wd = next(i for i, day in enumerate(p.hours) if not day)
    d = next(date(2026, 6, k) for k in range(1, 8) if date(2026, 6, k).weekday() == closed_wd)
    assert not any(is_open(p, datetime(d.year, d.month, d.day, h, 30)) for h in range(24))
    bars = [p for p in w.pois if p.category == "bar"]
    assert any(is_open(b, datetime(2026, 6, 3, 0, 30)) for b in bars)  # open past midnight


def test_timetables_weather_lists_pages_cover_the_window():
    w = load_world(0)
    window = w.dates()
    assert len(window) == 16 and window[0] == w.today
    assert {f.date for f in w.flights} == set(window)
    assert {t.date for t in w.trains} == set(window)
    for f in w.flights:
        assert f.depart < f.arrive and f.price > 0 and f.origin != f.destination
        assert hhmm_to_min(f.arrive) - hhmm_to_min(f.depart) == f.duration_min
    for t in w.trains:
        assert hhmm_to_min(t.arrive) - hhmm_to_min(t.depart) == t.duration_min
        assert t.price_first > t.price_second > 0
    assert Counter(fc.city for fc in w.forecasts) == {c.name: 16 for c in w.cities}
    assert all(fc.condition in CONDITIONS and fc.low_c < fc.high_c for fc in w.forecasts)
    assert len(w.current) == len(w.cities) and all(cw.observed_at == w.now for cw in w.current)
    for rl in w.ranking_lists:
        assert len(rl.items) >= 3 and len(set(rl.items)) == len(rl.items)
        assert all((rl.city, name) in w.poi_by_name for name in rl.items)
    assert len(w.pages) >= 200
    assert len({p.url for p in w.pages}) == len(w.pages)
    assert {"ticket_rules", "opening_policy", "event", "refund_policy"} <= {p.kind for p in w.pages}
