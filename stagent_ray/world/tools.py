"""The ten tools over a World: validate, apply world semantics, call `search`, format compact JSON.

`call_tool(world, name, arguments)` never raises: every problem comes back as
{"error": {"type", "message"}} (see schemas.ERROR_TYPES).
"""

from __future__ import annotations

from datetime import date

from stagent_ray.world import search
from stagent_ray.world.geo import (DETOUR, compute_route, fmt_datetime, fmt_latlng, haversine_km, hours_text,
                                   latest_departure, parse_datetime, parse_latlng)
from stagent_ray.world.schemas import SCHEMAS, TOOL_NAMES, tool_error, validate_call
from stagent_ray.world.search import ToolError

__all__ = ["SCHEMAS", "TOOL_NAMES", "call_tool", "poi_summary"]


# ---------------------------------------------------------------- shared checks and formats

def _check_date(world, arg: str, value: str) -> str:
    window = world.dates()
    if value[:10] not in window:
        raise ToolError("date_out_of_range", f"argument '{arg}' {value} is outside the supported window "
                        f"{window[0]} .. {window[-1]}")
    return value


def _check_prices(args: dict) -> None:
    lo, hi = args.get("price_min"), args.get("price_max")
    if lo is not None and hi is not None and lo > hi:
        raise ToolError("invalid_value", f"argument 'price_min' ({lo}) is greater than 'price_max' ({hi})")


def poi_summary(poi, day: str) -> dict:
    """The fields every POI result carries; `hours` is the opening hours on `day` (ISO date)."""
    return {"name": poi.name, "category": poi.category, "city": poi.city, "district": poi.district,
            "location": fmt_latlng(poi.latlng), "rating": poi.rating, "avg_price": poi.avg_price,
            "hours": hours_text(poi.hours[date.fromisoformat(day).weekday()]), "tags": poi.tags}


# ---------------------------------------------------------------- map tools

def _map_search_places(world, a: dict) -> dict:
    _check_prices(a)
    open_at = parse_datetime(_check_date(world, "open_at", a["open_at"])) if "open_at" in a else None
    center = parse_latlng(a["center"]) if "center" in a else None
    hits, total = search.search_places(
        world, a["query"], center=center, radius_m=a.get("radius", 5000), region=a.get("region"),
        sort_by=a.get("sort_by", "weight"), min_rating=a.get("min_rating"), price_min=a.get("price_min"),
        price_max=a.get("price_max"), open_at=open_at, limit=a.get("limit", 10))
    day = a["open_at"][:10] if open_at else world.today
    return {"query": a["query"], "total": total, "hours_date": day,
            "results": [{**poi_summary(p, day), "distance_m": round(d)} for p, d in hits]}


def _map_compute_routes(world, a: dict) -> dict:
    if "departure_time" in a and "arrival_time" in a:
        raise ToolError("invalid_value", "give either 'departure_time' or 'arrival_time', not both")
    points = [parse_latlng(a["origin"])] + [parse_latlng(p) for p in a.get("intermediates", [])] \
        + [parse_latlng(a["destination"])]
    arrive_by = parse_datetime(_check_date(world, "arrival_time", a["arrival_time"])) if "arrival_time" in a else None
    depart = parse_datetime(_check_date(world, "departure_time", a.get("departure_time", world.now)))
    preference, traffic = a.get("preference"), a.get("traffic_aware", True)
    routes = []
    for mode in dict.fromkeys(a.get("modes", ["driving"])):  # de-duplicated, order kept
        if arrive_by is not None:
            r = latest_departure(points, mode, arrive_by, preference, traffic)
        else:
            r = compute_route(points, mode, depart, preference, traffic)
        if r is None:
            why = ("no transit service (over 60 km straight-line, or between 00:00 and 05:00)" if mode == "transit"
                   else "no route found that arrives in time")
            routes.append({"mode": mode, "error": why})
            continue
        out = {"mode": mode, "distance_km": r["distance_km"], "duration_min": r["duration_min"],
               "departure_time": fmt_datetime(r["departure"]), "arrival_time": fmt_datetime(r["arrival"])}
        if mode == "driving":
            out["toll_cny"] = r["toll_cny"]
        if mode == "transit":
            out["fare_cny"] = r["fare_cny"]
        if len(points) > 2:
            out["legs"] = r["legs"]
        routes.append(out)
    result = {"origin": a["origin"], "destination": a["destination"]}
    if a.get("intermediates"):
        result["intermediates"] = a["intermediates"]
    if arrive_by is not None:
        result["arrive_by"] = a["arrival_time"]
    result["routes"] = routes
    return result


def _map_search_along_route(world, a: dict) -> dict:
    origin, destination = parse_latlng(a["origin"]), parse_latlng(a["destination"])
    mode = a.get("transport_mode", "driving")
    buffer_m = a.get("buffer_radius", 2000 if mode == "driving" else 500)
    hits, total = search.search_along_route(world, a["query"], origin, destination, mode, buffer_m, a.get("limit", 10))
    return {"query": a["query"], "transport_mode": mode, "buffer_radius": buffer_m,
            "route_distance_km": round(haversine_km(origin, destination) * DETOUR[mode], 1), "total": total,
            "results": [{**poi_summary(p, world.today), "distance_from_origin_km": round(along, 1),
                         "detour_m": round(off)} for p, along, off in hits]}


def _map_search_central_places(world, a: dict) -> dict:
    _check_prices(a)
    origins = [parse_latlng(o) for o in a["origins"]]
    sort_by = a.get("sort_by", "balanced")
    hits, total = search.search_central_places(
        world, a["query"], origins, a.get("radius", 10000), sort_by, a.get("min_rating"), a.get("price_min"),
        a.get("price_max"), a.get("limit", 10))
    centroid = (sum(o[0] for o in origins) / len(origins), sum(o[1] for o in origins) / len(origins))
    return {"query": a["query"], "centroid": fmt_latlng(centroid), "sort_by": sort_by, "total": total,
            "results": [{**poi_summary(p, world.today), "distances_km": [round(d, 1) for d in dists],
                         "score": round(score, 2)} for p, dists, score in hits]}


def _map_search_ranking_list(world, a: dict) -> dict:
    found = search.search_ranking_lists(world, a["query"], a["region"], a.get("max_lists", 5), a.get("max_items", 3))
    lists = []
    for rl, items in found:
        rows = []
        for rank, name in enumerate(items, 1):
            p = world.poi(rl.city, name)
            rows.append({"rank": rank, "name": name, "category": p.category, "district": p.district,
                         "location": fmt_latlng(p.latlng), "rating": p.rating, "avg_price": p.avg_price})
        lists.append({"title": rl.title, "items": rows})
    return {"query": a["query"], "region": a["region"], "lists": lists}


# ---------------------------------------------------------------- travel, weather, web

def _travel_search_flights(world, a: dict) -> dict:
    _check_date(world, "date", a["date"])
    rows = search.search_flights(world, a["origin"], a["destination"], a["date"], a.get("days", 0))
    dates = search.window_dates(world, a["date"], a.get("days", 0))
    return {"origin": search.resolve_city(world, a["origin"]).name,
            "destination": search.resolve_city(world, a["destination"]).name, "dates": [dates[0], dates[-1]],
            "flights": [{"number": f.number, "airline": f.airline, "date": f.date, "depart": f.depart,
                         "arrive": f.arrive, "duration_min": f.duration_min, "price": f.price,
                         "origin_airport": f.origin_airport, "destination_airport": f.destination_airport}
                        for f in rows]}


def _travel_search_trains(world, a: dict) -> dict:
    _check_date(world, "date", a["date"])
    rows = search.search_trains(world, a["origin"], a["destination"], a["date"], a.get("days", 0))
    dates = search.window_dates(world, a["date"], a.get("days", 0))
    return {"origin": search.resolve_city(world, a["origin"]).name,
            "destination": search.resolve_city(world, a["destination"]).name, "dates": [dates[0], dates[-1]],
            "trains": [{"number": t.number, "date": t.date, "depart": t.depart, "arrive": t.arrive,
                        "duration_min": t.duration_min, "price_second": t.price_second, "price_first": t.price_first,
                        "origin_station": t.origin_station, "destination_station": t.destination_station}
                       for t in rows]}


def _weather_current_conditions(world, a: dict) -> dict:
    city = search.resolve_city(world, a["location"])
    w = next(c for c in world.current if c.city == city.name)
    return {"location": a["location"], "city": city.name, "observed_at": w.observed_at, "condition": w.condition,
            "temperature_c": w.temperature_c, "feels_like_c": w.feels_like_c, "humidity": w.humidity,
            "wind_kph": w.wind_kph, "aqi": w.aqi, "aqi_level": w.aqi_level}


def _weather_forecast_days(world, a: dict) -> dict:
    _check_date(world, "date", a["date"])
    rows = search.forecast_days(world, a["location"], a["date"], a.get("days", 3))
    return {"location": a["location"], "city": search.resolve_city(world, a["location"]).name,
            "days": [{"date": w.date, "condition": w.condition, "high_c": w.high_c, "low_c": w.low_c,
                      "precip_prob": w.precip_prob, "aqi": w.aqi, "wind_kph": w.wind_kph, "humidity": w.humidity}
                     for w in rows]}


def _web_search(world, a: dict) -> dict:
    hits = search.web_search(world, a["query"])
    return {"query": a["query"],
            "results": [{"title": p.title, "url": p.url, "snippet": p.text} for p, _ in hits]}


IMPLEMENTATIONS = {
    "map_search_places": _map_search_places,
    "map_compute_routes": _map_compute_routes,
    "map_search_along_route": _map_search_along_route,
    "map_search_central_places": _map_search_central_places,
    "map_search_ranking_list": _map_search_ranking_list,
    "travel_search_flights": _travel_search_flights,
    "travel_search_trains": _travel_search_trains,
    "weather_current_conditions": _weather_current_conditions,
    "weather_forecast_days": _weather_forecast_days,
    "web_search": _web_search,
}
assert tuple(IMPLEMENTATIONS) == TOOL_NAMES


def call_tool(world, name: str, arguments) -> dict:
    """Run one tool call against `world`. Never raises; errors come back as {"error": {...}}."""
    args, err = validate_call(name, arguments)
    if err:
        return err
    try:
        return IMPLEMENTATIONS[name](world, args)
    except ToolError as e:
        return tool_error(e.type, e.message)
    except Exception as e:  # a bug in a tool must not kill a rollout
        return tool_error("internal_error", f"{name} failed: {type(e).__name__}: {e}")
