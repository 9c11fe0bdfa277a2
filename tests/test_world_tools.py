"""The ten tools on valid and invalid calls, checked against the world itself."""

from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagent_ray.world.generate import load_world
from stagent_ray.world.geo import compute_route, fmt_latlng, haversine_km, is_open, parse_latlng
from stagent_ray.world.schemas import ERROR_TYPES, SCHEMAS, TOOL_NAMES
from stagent_ray.world.search import matches_query, weight_score
from stagent_ray.world.tools import call_tool


@pytest.fixture(scope="module")
def world():
    return load_world(0)


def ok(world, name, args):
    result = call_tool(world, name, args)
    assert "error" not in result, result
    return result


def err(world, name, args):
    result = call_tool(world, name, args)
    assert set(result) == {"error"}, result
    assert result["error"]["type"] in ERROR_TYPES and result["error"]["message"]
    return result["error"]["type"]


def latlng(x):
    return fmt_latlng((x.lat, x.lng))


def test_schemas_are_openai_function_format():
    assert len(SCHEMAS) == 10 and len(set(TOOL_NAMES)) == 10
    for s in SCHEMAS:
        assert s["type"] == "function"
        params = s["function"]["parameters"]
        assert params["type"] == "object" and params["additionalProperties"] is False
        assert set(params["required"]) <= set(params["properties"])


# ---------------------------------------------------------------- map_search_places

def test_search_places_region_filters_and_sorts(world):
    city = world.cities[0]
    r = ok(world, "map_search_places", {"query": "restaurant", "region": city.name, "min_rating": 4.0,
                                        "price_max": 100, "sort_by": "price:a", "limit": 20})
    rows = r["results"]
    assert 0 < len(rows) <= 20 and r["total"] >= len(rows)
    assert all(x["category"] == "restaurant" and x["city"] == city.name for x in rows)
    assert all(x["rating"] >= 4.0 and x["avg_price"] <= 100 for x in rows)
    prices = [x["avg_price"] for x in rows]
    assert prices == sorted(prices)
    r = ok(world, "map_search_places", {"query": "cafe", "region": city.name, "sort_by": "rating:d"})
    ratings = [x["rating"] for x in r["results"]]
    assert ratings == sorted(ratings, reverse=True) and len(ratings) == 10
    r = ok(world, "map_search_places", {"query": "cafe", "region": city.name})  # default sort: weight
    weights = [weight_score(world.poi(city.name, x["name"])) for x in r["results"]]
    assert weights == sorted(weights, reverse=True)


def test_search_places_center_radius_distance_sort(world):
    d = world.cities[1].districts[0]
    r = ok(world, "map_search_places", {"query": "charging station", "center": latlng(d), "radius": 3000,
                                        "sort_by": "distance", "limit": 50})
    dists = [x["distance_m"] for x in r["results"]]
    assert dists == sorted(dists) and all(0 <= m <= 3000 for m in dists)
    expected = [p for p in world.pois if p.category == "charging_station"
                and haversine_km((d.lat, d.lng), p.latlng) <= 3.0]
    assert r["total"] == len(expected)
    for x in r["results"]:
        assert abs(haversine_km((d.lat, d.lng), parse_latlng(x["location"])) * 1000 - x["distance_m"]) < 2


def test_search_places_district_keywords_and_open_at(world):
    district = world.cities[0].districts[1]
    r = ok(world, "map_search_places", {"query": "quiet cafe", "region": district.name, "limit": 50})
    assert r["results"] and all(x["category"] == "cafe" and "quiet" in x["tags"] for x in r["results"])
    assert all(x["district"] == district.name for x in r["results"])
    # open_at: every result is open then, and the hours shown are that day's
    when = "2026-06-08T09:00"  # a Monday: many museums are closed
    r = ok(world, "map_search_places", {"query": "museum", "region": world.cities[0].name, "open_at": when,
                                        "limit": 50})
    assert r["hours_date"] == "2026-06-08"
    for x in r["results"]:
        assert is_open(world.poi(world.cities[0].name, x["name"]), datetime(2026, 6, 8, 9, 0))
    all_museums = [p for p in world.pois_by_city[world.cities[0].name] if p.category == "museum"]
    assert r["total"] == sum(is_open(p, datetime(2026, 6, 8, 9, 0)) for p in all_museums) < len(all_museums)


def test_search_places_matches_names_and_category_with_tags(world):
    p = world.pois_by_city[world.cities[2].name][5]
    r = ok(world, "map_search_places", {"query": p.name, "region": p.city})
    assert p.name in [x["name"] for x in r["results"]]
    r = ok(world, "map_search_places", {"query": "hotel ev charging", "region": world.cities[0].name, "limit": 50})
    assert all(x["category"] == "hotel" and "ev_charging" in x["tags"] for x in r["results"])
    assert matches_query(world, world.poi(p.city, p.name), p.name)
    # every POI is found by its own name, even names holding another category's word ("Garden")
    for q in world.pois[::9]:
        assert matches_query(world, q, q.name), q.name


def test_search_places_errors(world):
    assert err(world, "map_search_places", {"region": "Moling"}) == "missing_argument"
    assert err(world, "map_search_places", {"query": "cafe"}) == "missing_argument"  # no center or region
    assert err(world, "map_search_places", {"query": "cafe", "region": "Atlantis"}) == "unknown_location"
    assert err(world, "map_search_places", {"query": "cafe", "center": "abc"}) == "invalid_coordinates"
    assert err(world, "map_search_places", {"query": "cafe", "center": "95.0,120.0"}) == "invalid_coordinates"
    assert err(world, "map_search_places", {"query": "cafe", "center": "30,120", "radius": 50}) == "invalid_value"
    assert err(world, "map_search_places", {"query": "cafe", "center": "30,120", "radius": "5"}) == "invalid_type"
    assert err(world, "map_search_places", {"query": "cafe", "region": "Moling", "sort_by": "best"}) == "invalid_value"
    assert err(world, "map_search_places", {"query": "cafe", "region": "Moling",
                                            "colour": "red"}) == "unexpected_argument"
    assert err(world, "map_search_places", {"query": 5, "region": "Moling"}) == "invalid_type"
    assert err(world, "map_search_places", {"query": "  ", "region": "Moling"}) == "invalid_value"
    assert err(world, "map_search_places", {"query": "cafe", "region": "Moling", "price_min": 100,
                                            "price_max": 50}) == "invalid_value"
    assert err(world, "map_search_places", {"query": "cafe", "region": "Moling",
                                            "open_at": "2026-07-30T10:00"}) == "date_out_of_range"
    assert err(world, "map_search_places", {"query": "cafe", "region": "Moling",
                                            "open_at": "tomorrow"}) == "invalid_date"
    assert err(world, "map_search_places", {"query": "cafe", "region": "Moling", "limit": True}) == "invalid_type"
    assert err(world, "map_search_places", ["query"]) == "invalid_arguments"
    assert err(world, "map_search_places", "{not json") == "invalid_arguments"
    assert err(world, "no_such_tool", {}) == "unknown_tool"


# ---------------------------------------------------------------- routes

def test_compute_routes_modes_ordered_and_consistent(world):
    c = world.cities[0]
    a, b = c.districts[0], c.districts[-1]
    r = ok(world, "map_compute_routes", {"origin": latlng(a), "destination": latlng(b),
                                         "modes": ["walking", "bicycling", "driving", "transit"],
                                         "departure_time": "2026-06-02T11:00"})
    by = {x["mode"]: x for x in r["routes"]}
    assert list(by) == ["walking", "bicycling", "driving", "transit"]
    assert by["walking"]["duration_min"] > by["bicycling"]["duration_min"] > by["driving"]["duration_min"]
    assert by["walking"]["duration_min"] > by["transit"]["duration_min"]
    assert all(x["departure_time"] == "2026-06-02T11:00" for x in r["routes"])
    expected = compute_route([(a.lat, a.lng), (b.lat, b.lng)], "driving", datetime(2026, 6, 2, 11, 0))
    assert by["driving"]["duration_min"] == expected["duration_min"]
    assert by["driving"]["distance_km"] == expected["distance_km"]
    # rush hour is slower than mid-day; default departure is world.now
    rush = ok(world, "map_compute_routes", {"origin": latlng(a), "destination": latlng(b),
                                            "departure_time": "2026-06-02T08:00"})["routes"][0]
    assert rush["duration_min"] > by["driving"]["duration_min"]
    default = ok(world, "map_compute_routes", {"origin": latlng(a), "destination": latlng(b)})
    assert default["routes"][0]["departure_time"] == world.now


def test_compute_routes_arrival_intermediates_and_long_trips(world):
    a, b = world.cities[0], world.cities[1]
    mid = world.cities[0].districts[1]
    r = ok(world, "map_compute_routes", {"origin": latlng(a), "destination": latlng(b),
                                         "modes": ["driving", "transit"], "arrival_time": "2026-06-03T18:00"})
    drive, transit = r["routes"]
    assert drive["arrival_time"] <= "2026-06-03T18:00" and drive["toll_cny"] > 0
    assert drive["departure_time"] < "2026-06-03T18:00"
    assert "error" in transit  # no city bus between cities
    r = ok(world, "map_compute_routes", {"origin": latlng(a), "destination": latlng(a.districts[2]),
                                         "intermediates": [latlng(mid)], "departure_time": "2026-06-03T10:00"})
    route = r["routes"][0]
    assert len(route["legs"]) == 2
    assert sum(leg["duration_min"] for leg in route["legs"]) == route["duration_min"]
    cheap = ok(world, "map_compute_routes", {"origin": latlng(a), "destination": latlng(b),
                                             "preference": "avoid_tolls"})["routes"][0]
    assert cheap["toll_cny"] == 0


def test_compute_routes_errors(world):
    c = world.cities[0]
    base = {"origin": latlng(c), "destination": latlng(c.districts[1])}
    assert err(world, "map_compute_routes", {"origin": latlng(c)}) == "missing_argument"
    assert err(world, "map_compute_routes", {**base, "modes": ["flying"]}) == "invalid_value"
    assert err(world, "map_compute_routes", {**base, "modes": "driving"}) == "invalid_type"
    assert err(world, "map_compute_routes", {**base, "modes": []}) == "invalid_value"
    assert err(world, "map_compute_routes", {**base, "intermediates": ["1,2", "x"]}) == "invalid_coordinates"
    assert err(world, "map_compute_routes", {**base, "departure_time": "2026-06-01 10:00"}) == "invalid_date"
    assert err(world, "map_compute_routes", {**base, "departure_time": "2026-05-31T10:00"}) == "date_out_of_range"
    assert err(world, "map_compute_routes", {**base, "departure_time": "2026-06-02T10:00",
                                             "arrival_time": "2026-06-02T11:00"}) == "invalid_value"
    assert err(world, "map_compute_routes", {**base, "preference": "scenic"}) == "invalid_value"


# ---------------------------------------------------------------- along route, central, ranking

def test_search_along_route(world):
    a, b = world.cities[0], world.cities[1]
    r = ok(world, "map_search_along_route", {"query": "charging", "origin": latlng(a), "destination": latlng(b),
                                             "limit": 50})
    rows = r["results"]
    along = [x["distance_from_origin_km"] for x in rows]
    assert along == sorted(along) and r["buffer_radius"] == 2000
    assert all(x["category"] == "charging_station" and x["detour_m"] <= 2000 for x in rows)
    assert any(x["city"] == "" for x in rows)  # expressway service areas between the cities
    assert all(0 <= km <= r["route_distance_km"] + 0.1 for km in along)
    walk = ok(world, "map_search_along_route", {"query": "cafe", "origin": latlng(a.districts[0]),
                                                "destination": latlng(a.districts[1]), "transport_mode": "walking"})
    assert walk["buffer_radius"] == 500 and all(x["detour_m"] <= 500 for x in walk["results"])
    assert err(world, "map_search_along_route", {"query": "cafe", "origin": latlng(a)}) == "missing_argument"
    assert err(world, "map_search_along_route", {"query": "cafe", "origin": latlng(a), "destination": latlng(b),
                                                 "transport_mode": "transit"}) == "invalid_value"
    assert err(world, "map_search_along_route", {"query": "cafe", "origin": latlng(a), "destination": latlng(b),
                                                 "buffer_radius": 99999}) == "invalid_value"


def test_search_central_places(world):
    c = world.cities[0]
    origins = [latlng(c.districts[0]), latlng(c.districts[1]), latlng(c.districts[2])]
    for sort_by in ("balanced", "min_max_distance", "total_distance"):
        r = ok(world, "map_search_central_places", {"query": "restaurant", "origins": origins, "sort_by": sort_by,
                                                    "min_rating": 4.0})
        scores = [x["score"] for x in r["results"]]
        assert scores == sorted(scores) and r["results"]
        for x in r["results"]:
            assert len(x["distances_km"]) == 3 and x["rating"] >= 4.0
            if sort_by == "min_max_distance":
                assert abs(x["score"] - max(x["distances_km"])) < 0.06
            if sort_by == "total_distance":
                assert abs(x["score"] - sum(x["distances_km"])) < 0.16
    assert err(world, "map_search_central_places", {"query": "cafe", "origins": origins[:1]}) == "invalid_value"
    assert err(world, "map_search_central_places", {"query": "cafe", "origins": "1,2"}) == "invalid_type"
    assert err(world, "map_search_central_places", {"query": "cafe", "origins": origins,
                                                    "sort_by": "fair"}) == "invalid_value"


def test_search_ranking_list(world):
    city = world.cities[0]
    r = ok(world, "map_search_ranking_list", {"query": "must-eat", "region": city.name, "max_items": 5})
    assert r["lists"] and all(len(lst["items"]) <= 5 for lst in r["lists"])
    top = r["lists"][0]
    stored = next(rl for rl in world.ranking_lists if rl.title == top["title"])
    assert [x["name"] for x in top["items"]] == stored.items[:5]
    assert [x["rank"] for x in top["items"]] == [1, 2, 3, 4, 5]
    district = city.districts[0]
    r = ok(world, "map_search_ranking_list", {"query": "coffee", "region": district.name, "max_lists": 1})
    assert len(r["lists"]) <= 1
    assert all(x["district"] == district.name for lst in r["lists"] for x in lst["items"])
    r = ok(world, "map_search_ranking_list", {"query": "submarine", "region": city.name})
    assert r["lists"] == []
    assert err(world, "map_search_ranking_list", {"query": "coffee"}) == "missing_argument"
    assert err(world, "map_search_ranking_list", {"query": "coffee", "region": "Mars"}) == "unknown_location"
    assert err(world, "map_search_ranking_list", {"query": "coffee", "region": city.name,
                                                  "max_lists": 11}) == "invalid_value"


# ---------------------------------------------------------------- travel, weather, web

def test_flights_and_trains(world):
    a, b = world.cities[0], world.cities[1]
    r = ok(world, "travel_search_flights", {"origin": a.name, "destination": b.name, "date": "2026-06-05", "days": 2})
    assert r["dates"] == ["2026-06-05", "2026-06-07"] and r["flights"]
    assert all("2026-06-05" <= f["date"] <= "2026-06-07" for f in r["flights"])
    keys = [(f["date"], f["depart"]) for f in r["flights"]]
    assert keys == sorted(keys)
    expected = [f for f in world.flights if f.origin == a.name and f.destination == b.name
                and "2026-06-05" <= f.date <= "2026-06-07"]
    assert len(r["flights"]) == len(expected)
    # days past the window are cut at today+15
    r = ok(world, "travel_search_flights", {"origin": a.name, "destination": b.name, "date": "2026-06-14", "days": 10})
    assert r["dates"] == ["2026-06-14", "2026-06-16"]
    # a district stands for its city
    r = ok(world, "travel_search_trains", {"origin": a.districts[1].name, "destination": b.name, "date": "2026-06-01"})
    assert r["origin"] == a.name and r["trains"] and all(t["date"] == "2026-06-01" for t in r["trains"])
    assert all(t["origin_station"] in a.stations for t in r["trains"])
    assert err(world, "travel_search_flights", {"origin": a.name, "destination": b.name,
                                                "date": "2026-06-17"}) == "date_out_of_range"
    assert err(world, "travel_search_flights", {"origin": a.name, "destination": b.name,
                                                "date": "2026-05-31"}) == "date_out_of_range"
    assert err(world, "travel_search_trains", {"origin": a.name, "destination": "Gotham",
                                               "date": "2026-06-02"}) == "unknown_location"
    assert err(world, "travel_search_trains", {"origin": a.name, "destination": a.name,
                                               "date": "2026-06-02"}) == "invalid_value"
    assert err(world, "travel_search_trains", {"origin": a.name, "destination": b.name, "date": "2026-06-02",
                                               "days": 16}) == "invalid_value"
    assert err(world, "travel_search_trains", {"origin": a.name, "destination": b.name,
                                               "date": "2026-02-30"}) == "invalid_date"


def test_weather(world):
    city = world.cities[2]
    now = ok(world, "weather_current_conditions", {"location": city.districts[1].name})
    assert now["city"] == city.name and now["observed_at"] == world.now
    assert now["aqi_level"] in ("good", "moderate", "unhealthy_sensitive", "unhealthy")
    r = ok(world, "weather_forecast_days", {"location": city.name.lower(), "date": "2026-06-10", "days": 4})
    assert [d["date"] for d in r["days"]] == ["2026-06-10", "2026-06-11", "2026-06-12", "2026-06-13"]
    assert r["days"][0]["high_c"] == world.forecast(city.name, "2026-06-10").high_c
    r = ok(world, "weather_forecast_days", {"location": city.name, "date": "2026-06-15", "days": 15})
    assert [d["date"] for d in r["days"]] == ["2026-06-15", "2026-06-16"]
    assert err(world, "weather_current_conditions", {}) == "missing_argument"
    assert err(world, "weather_current_conditions", {"location": "Atlantis"}) == "unknown_location"
    assert err(world, "weather_forecast_days", {"location": city.name, "date": "2026-06-10",
                                                "days": 0}) == "invalid_value"
    assert err(world, "weather_forecast_days", {"location": city.name, "date": "2026-08-01"}) == "date_out_of_range"


def test_web_search(world):
    r = ok(world, "web_search", {"query": "train ticket refund"})
    assert r["results"][0]["title"] == "Train ticket refund rules"
    assert all(set(x) == {"title", "url", "snippet"} for x in r["results"])
    event = next(p for p in world.pages if p.kind == "event")
    r = ok(world, "web_search", {"query": event.title})
    assert r["results"][0]["url"] == event.url
    assert ok(world, "web_search", {"query": "zzzz qqqq"})["results"] == []
    assert err(world, "web_search", {"query": ""}) == "invalid_value"
    assert err(world, "web_search", {"q": "refund"}) == "unexpected_argument"


def test_every_tool_never_raises_on_junk(world):
    junk = [None, 1, "x", [], {"query": None}, {"query": {"a": 1}}, {"origin": 1, "destination": [1]},
            {"location": "", "date": 3}, {"query": "a" * 500}]
    for name in TOOL_NAMES:
        for args in junk:
            result = call_tool(world, name, args)
            assert isinstance(result, dict)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                           | st.text(max_size=20), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(TOOL_NAMES), args=st.dictionaries(
    st.sampled_from(["query", "region", "center", "origin", "destination", "origins", "date", "days", "location",
                     "limit", "radius", "modes", "sort_by", "open_at", "extra"]), json_values, max_size=5))
def test_random_arguments_never_raise(name, args):
    result = call_tool(load_world(0), name, args)
    assert isinstance(result, dict)
    if "error" in result:
        assert result["error"]["type"] in ERROR_TYPES and result["error"]["type"] != "internal_error"
