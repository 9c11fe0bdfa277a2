"""Oracle solvers for the route and trip families (see oracle_places for the conventions)."""

from __future__ import annotations

from datetime import datetime, timedelta

from stagent_ray.tasks.oracle_steps import (call, failed, lookup, lookup_all, maybe_broken,
                                            not_found, open_during, tool_trouble)

MODE_WORDS = {"driving": "driving", "walking": "walking", "bicycling": "cycling", "transit": "public transit"}


def solve_route_stop(query, rng, noise):
    p = query.params
    hits, failure = yield from lookup_all([(p["origin"], p["origin_city"]),
                                           (p["destination"], p["destination_city"])], rng, noise)
    if failure:
        return failure
    start, end = hits
    args = {"query": p["search_query"], "origin": start["location"], "destination": end["location"],
            "limit": 50}
    if rng.random() < noise / 2:  # wrong argument: keeps the default page of 10
        args.pop("limit")
    result = yield from call(f"Searching for {p['search_query']}s along the route.", "map_search_along_route",
                             maybe_broken(args, rng, noise), args)
    if failed(result):
        return tool_trouble(result)
    hits = result["results"]
    reachable = [h for h in hits if h["distance_from_origin_km"] <= p["range_km"]]
    if rng.random() < noise / 2 and len(reachable) < len(hits):
        reachable = hits[:len(reachable) + 1]  # wrong pick: one stop past the range
    if not reachable:
        return f"None of the stations along the route is within your {p['range_km']} km range."
    best = reachable[-1]
    answer = (f"Stop at {best['name']} ({best['district']}): it is {best['distance_from_origin_km']} km from "
              f"{p['origin']} along the route, the last one within your {p['range_km']} km.")
    later = [h for h in hits if h["distance_from_origin_km"] > best["distance_from_origin_km"]]
    if later:
        answer += f" The next one is {later[0]['distance_from_origin_km']} km in, too far to reach."
    return answer


def solve_mode_choice(query, rng, noise):
    p = query.params
    hits, failure = yield from lookup_all([(p["origin"], p["city"]), (p["destination"], p["city"])],
                                          rng, noise)
    if failure:
        return failure
    a, b = hits
    args = {"origin": a["location"], "destination": b["location"], "modes": list(p["modes"]),
            "departure_time": p["depart"]}
    if rng.random() < noise / 2:  # skipped constraint: leaves at "now" instead
        args.pop("departure_time")
    if rng.random() < noise / 2 and len(args["modes"]) > 2:  # forgets one mode
        args["modes"] = args["modes"][1:]
    result = yield from call("Comparing the travel modes for that departure time.", "map_compute_routes", args)
    if failed(result):
        return tool_trouble(result)
    routes = sorted((r for r in result["routes"] if "error" not in r), key=lambda r: r["duration_min"])
    if not routes:
        return "None of those modes has a route at that time."
    if rng.random() < noise / 2 and len(routes) > 1:
        routes = routes[1:] + routes[:1]  # wrong pick
    best = routes[0]
    others = "; ".join(f"{MODE_WORDS[r['mode']]} {r['duration_min']} min" for r in routes[1:])
    answer = (f"{MODE_WORDS[best['mode']].capitalize()} is fastest: {best['duration_min']} min "
              f"({best['distance_km']} km), arriving at {best['arrival_time'][11:]}.")
    return answer + (f" For comparison: {others}." if others else "")


def solve_drive_time(query, rng, noise):
    p = query.params
    hits, failure = yield from lookup_all([(p["origin"], p["city"]), (p["destination"], p["city"])],
                                          rng, noise)
    if failure:
        return failure
    a, b = hits
    args = {"origin": a["location"], "destination": b["location"], "modes": ["driving"]}
    if "depart" in p:
        args["departure_time"] = p["depart"]
    else:
        args["arrival_time"] = p["arrive_by"]
    if rng.random() < noise / 2:  # skipped constraint: ignores traffic
        args["traffic_aware"] = False
    if rng.random() < noise / 2 and "departure_time" in args:  # skipped constraint: leaves "now"
        args.pop("departure_time")
    result = yield from call("Computing the drive.", "map_compute_routes", args)
    if failed(result) or "error" in result["routes"][0]:
        return tool_trouble(result if failed(result) else {"error": {"message": result["routes"][0]["error"]}})
    r = result["routes"][0]
    dep, arr = r["departure_time"][11:], r["arrival_time"][11:]
    if "depart" in p:
        return (f"Leaving {p['origin']} at {dep}, the drive to {p['destination']} takes {r['duration_min']} min "
                f"({r['distance_km']} km), so you'd arrive at {arr}.")
    return (f"Leave {p['origin']} by {dep}: the drive takes {r['duration_min']} min ({r['distance_km']} km) "
            f"and gets you to {p['destination']} at {arr}.")


def solve_itinerary(query, rng, noise):
    p = query.params
    places = []
    for name in [p["start_place"]] + p["stops"]:
        hit = yield from lookup(name, p["city"], rng, noise)
        if hit is None:
            return not_found(name, p["city"])
        places.append(hit)
    forget_stays = rng.random() < noise / 2  # wrong plan: leaves each stop the minute it arrives
    mode = p["mode"] if rng.random() >= noise / 2 else "driving"  # wrong argument: the default mode
    t = datetime.fromisoformat(p["start"])
    lines = []
    for prev, stop, stay in zip(places, places[1:], p["stay_min"]):
        args = {"origin": prev["location"], "destination": stop["location"], "modes": [mode],
                "departure_time": t.strftime("%Y-%m-%dT%H:%M")}
        result = yield from call(f"Leg from {prev['name']} to {stop['name']}, leaving at "
                                 f"{args['departure_time'][11:]}.", "map_compute_routes", args)
        if failed(result) or "error" in result["routes"][0]:
            return tool_trouble(result if failed(result) else {"error": {"message": result["routes"][0]["error"]}})
        r = result["routes"][0]
        arrive = r["arrival_time"][11:]
        status = "open then" if open_during(stop["hours"], arrive) else "NOT open then"
        lines.append(f"{len(lines) + 1}. Leave {prev['name']} at {r['departure_time'][11:]} and reach "
                     f"{stop['name']} at {arrive} ({r['duration_min']} min); it's {status} "
                     f"(hours today: {stop['hours']}).")
        t = datetime.fromisoformat(r["arrival_time"]) + timedelta(minutes=0 if forget_stays else stay)
    return f"Your day by {MODE_WORDS[mode]}:\n" + "\n".join(lines)


def solve_intercity_trip(query, rng, noise):
    p = query.params
    base = {"origin": p["origin"], "destination": p["destination"], "date": p["date"]}
    flights = yield from call(f"Checking flights from {p['origin']} to {p['destination']} on {p['date']}.",
                              "travel_search_flights", maybe_broken(base, rng, noise), base)
    if failed(flights):
        return tool_trouble(flights)
    options = [{**f, "kind": "flight", "cost": f["price"]} for f in flights["flights"]]
    if rng.random() >= noise / 2:  # else: premature answer, never looks at trains
        trains = yield from call("And the trains.", "travel_search_trains", base)
        if failed(trains):
            return tool_trouble(trains)
        first_class = rng.random() < noise / 3  # wrong reading: the first-class fare
        options += [{**t, "kind": "train", "cost": t["price_first" if first_class else "price_second"]}
                    for t in trains["trains"]]
    ignore_limit = rng.random() < noise / 2  # skipped constraint
    if p["goal"] == "cheapest":
        fits = [o for o in options if ignore_limit or o["arrive"] <= p["arrive_by"]]
        fits.sort(key=lambda o: (o["cost"], o["number"]))
        why = f"the cheapest option arriving by {p['arrive_by']}"
    else:
        fits = [o for o in options if ignore_limit or o["cost"] <= p["budget"]]
        fits.sort(key=lambda o: (o["arrive"], o["number"]))
        why = f"the earliest arrival within your {p['budget']} CNY budget"
    if not fits:
        return "No flight or train that day meets your conditions."
    o = fits[0]
    if o["kind"] == "flight":
        return (f"Take flight {o['number']} ({o['airline']}): it leaves {o['origin_airport']} at {o['depart']} "
                f"and lands at {o['destination_airport']} at {o['arrive']}, for {o['cost']} CNY. It is {why}.")
    return (f"Take train {o['number']}: it leaves {o['origin_station']} at {o['depart']} and arrives at "
            f"{o['destination_station']} at {o['arrive']}, {o['cost']} CNY in second class. It is {why}.")


SOLVERS = {
    "route_stop": solve_route_stop,
    "mode_choice": solve_mode_choice,
    "drive_time": solve_drive_time,
    "itinerary": solve_itinerary,
    "intercity_trip": solve_intercity_trip,
}
