"""Oracle solvers for the place families. Each reads `query.params` (never the ground
truth), works through the tools and returns an answer that names the facts it used.

With `noise > 0` a solver makes, at that rate per decision, the mistakes people and
models make: a malformed argument (then a retry), a skipped constraint, a wrong pick,
an answer given before the last needed call."""

from __future__ import annotations

from stagent_ray.tasks.oracle_steps import (call, failed, lookup, maybe_broken, not_found, price_text,
                                            tool_trouble)


def solve_constrained_search(query, rng, noise):
    p = query.params
    anchor = yield from lookup(p["anchor"], p["city"], rng, noise)
    if anchor is None:
        return not_found(p["anchor"], p["city"])
    args = {"query": p["search_query"], "center": anchor["location"], "radius": p["radius_m"],
            "sort_by": "rating:d"}
    for key in ("min_rating", "price_max", "open_at"):
        if p[key] is not None:
            args[key] = p[key]
    if rng.random() < noise:  # skipped constraint
        args.pop(rng.choice([k for k in ("min_rating", "price_max", "open_at") if k in args]))
    if rng.random() < noise / 2:  # wrong radius: the tool's default
        args["radius"] = 5000
    result = yield from call(f"Now I'll search for {p['search_query']} within {p['radius_m']} m of "
                             f"{p['anchor']} with the other constraints as filters.", "map_search_places", args)
    if failed(result):
        return tool_trouble(result)
    hits = result["results"]
    if not hits:
        return f"I found no {p['search_query']} within {p['radius_m']} m of {p['anchor']} that meets all " \
               f"your conditions."
    when = f", open {hits[0]['hours']} on {result['hours_date']}" if "open_at" in args else ""
    lines = [f"{hits[0]['name']} ({hits[0]['district']}) fits: rated {hits[0]['rating']}, "
             f"{hits[0]['distance_m']} m from {p['anchor']}, {price_text(hits[0]['avg_price'], p['category'])}"
             f"{when}."]
    if len(hits) > 1:
        h = hits[1]
        lines.append(f"Another option is {h['name']} (rated {h['rating']}, {h['distance_m']} m away).")
    return " ".join(lines)


def solve_nearest_open(query, rng, noise):
    p = query.params
    anchor = yield from lookup(p["anchor"], p["city"], rng, noise)
    if anchor is None:
        return not_found(p["anchor"], p["city"])
    args = {"query": p["search_query"], "center": anchor["location"], "radius": 3000, "sort_by": "distance",
            "open_at": p["open_at"], "limit": 5}
    if rng.random() < noise:  # skipped constraint: forgets the opening time
        args.pop("open_at")
    result = yield from call(f"Searching the nearest {p['search_query']} open at {p['open_at'][11:]} on "
                             f"{p['open_at'][:10]}.", "map_search_places", args)
    if not failed(result) and not result["results"]:
        args["radius"] = 10000
        result = yield from call("Nothing within 3 km; widening to 10 km.", "map_search_places", args)
    if failed(result):
        return tool_trouble(result)
    if not result["results"]:
        return f"I found no {p['search_query']} near {p['anchor']} open at {p['open_at'][11:]} that day."
    hits = result["results"]
    best = hits[1] if len(hits) > 1 and rng.random() < noise / 2 else hits[0]  # wrong pick
    return (f"The nearest {p['search_query']} open at {p['open_at'][11:]} on {p['open_at'][:10]} is "
            f"{best['name']} ({best['district']}), {best['distance_m']} m from {p['anchor']}. "
            f"Its hours that day: {best['hours']}.")


def solve_ranking_list(query, rng, noise):
    p = query.params
    args = {"query": p["list_query"], "region": p["region"]}
    if rng.random() < noise / 2 and p["region"] != p["city"]:
        args["region"] = p["city"]  # wrong argument: the city instead of the district
    result = yield from call(f"Let me check the curated ranking lists for {p['region']}.",
                             "map_search_ranking_list", maybe_broken(args, rng, noise), args)
    if failed(result):
        return tool_trouble(result)
    if not result["lists"]:
        return f"I couldn't find a {p['list_query']} ranking list for {p['region']}."
    ranked = result["lists"][0]
    items = ranked["items"]
    if rng.random() < noise / 2 and len(items) > 1:  # wrong pick: skips the first entry
        items = items[1:]
    if p["top_n"] == 1:
        top = items[0]
        return (f"On the list \"{ranked['title']}\", number one is {top['name']} in {top['district']}, "
                f"rated {top['rating']} ({price_text(top['avg_price'], top['category'])}).")
    rows = "; ".join(f"{i}. {it['name']} (rated {it['rating']})" for i, it in enumerate(items[:3], 1))
    return f"The top 3 on \"{ranked['title']}\" are: {rows}."


def solve_place_hours(query, rng, noise):
    p = query.params
    if rng.random() < noise / 3:  # premature answer: typical hours, no lookup
        return f"{p['name']} is usually open 09:00-21:00."
    args = {"query": p["name"], "region": p["city"]}
    result = yield from call(f"I'll look up {p['name']} to see today's hours.", "map_search_places",
                             maybe_broken(args, rng, noise), args)
    if failed(result):
        return tool_trouble(result)
    hits = result["results"]
    hit = next((r for r in hits if r["name"].lower() == p["name"].lower()), None)
    if rng.random() < noise / 2 and hits:
        hit = hits[-1]  # wrong pick: a similarly named place
    if hit is None:
        return not_found(p["name"], p["city"])
    answer = f"{hit['name']} is open {hit['hours']} today ({result['hours_date']})."
    if p["ask_price"]:
        answer += f" Expect to spend {price_text(hit['avg_price'], hit['category'])}."
    return answer


def solve_meeting_point(query, rng, noise):
    p = query.params
    origins = []
    for name in p["origins"]:
        hit = yield from lookup(name, p["city"], rng, noise)
        if hit is None:
            return not_found(name, p["city"])
        origins.append(hit)
    args = {"query": p["search_query"], "origins": [o["location"] for o in origins], "sort_by": p["sort_by"]}
    if p["min_rating"] is not None:
        args["min_rating"] = p["min_rating"]
    if rng.random() < noise:  # skipped constraint: the default balance or no rating floor
        args.pop("min_rating" if "min_rating" in args and rng.random() < 0.5 else "sort_by")
    everyone = "both of you" if len(origins) == 2 else f"all {len(origins)} of you"
    result = yield from call(f"Now a {p['search_query']} central to {everyone}.",
                             "map_search_central_places", args)
    if failed(result):
        return tool_trouble(result)
    if not result["results"]:
        return f"I found no {p['search_query']} central to all of you within 10 km."
    hits = result["results"]
    best = hits[1] if len(hits) > 1 and rng.random() < noise / 2 else hits[0]  # wrong pick
    distances = ", ".join(f"{d} km from {o['name']}" for d, o in zip(best["distances_km"], origins))
    return (f"Meet at {best['name']} ({best['district']}), rated {best['rating']}: it is {distances}.")


SOLVERS = {
    "constrained_search": solve_constrained_search,
    "nearest_open": solve_nearest_open,
    "ranking_list": solve_ranking_list,
    "place_hours": solve_place_hours,
    "meeting_point": solve_meeting_point,
}
