"""Query families about moving around: a stop along a route, the fastest mode, drive
times, a multi-stop day plan with time windows, and intercity trips by flight or train.

Travel times come from `world.geo` (`route_leg`, `compute_route`, `latest_departure`),
the functions `map_compute_routes` reports.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from stagent_ray.tasks.query import (ANCHOR_CATEGORIES, day_phrase, difficulty_from, findable, hhmm,
                                     make_query, pick_anchor, time_phrase)
from stagent_ray.world import search
from stagent_ray.world.geo import (compute_route, fmt_datetime, haversine_km, is_open, latest_departure,
                                   route_leg)

ALL = 10 ** 6
MODE_NAMES = {"driving": "driving", "walking": "walking", "bicycling": "cycling", "transit": "public transit"}


def _two_places(world, rng, city: str, lo_km: float, hi_km: float, categories=ANCHOR_CATEGORIES):
    a = pick_anchor(world, rng, city, categories)
    b = pick_anchor(world, rng, city, categories)
    if a is None or b is None or a is b or not lo_km <= haversine_km(a.latlng, b.latlng) <= hi_km:
        return None
    return a, b


# ---------------------------------------------------------------- a stop along an intercity drive

STOP_KINDS = {  # what the user needs -> (search words, what runs out, how they say it)
    "charge": ("fast charging station", "range", "fast-charging station"),
    "fuel": ("gas station", "fuel", "gas station"),
}


def _central_anchor(world, rng, city):
    """A findable place within 2 km of the city centre: routes between two such places run
    along the expressway corridor, where the service areas are."""
    pool = [p for p in world.pois_by_city[city.name] if p.category in ANCHOR_CATEGORIES
            and haversine_km(p.latlng, (city.lat, city.lng)) <= 2.0]
    rng.shuffle(pool)
    return next((p for p in pool[:10] if findable(world, p)), None)


def gen_route_stop(world, rng):
    a_city, b_city = rng.sample(world.cities, 2)
    if haversine_km((a_city.lat, a_city.lng), (b_city.lat, b_city.lng)) > 650:
        return None  # no expressway service areas beyond 700 km
    a, b = _central_anchor(world, rng, a_city), _central_anchor(world, rng, b_city)
    if a is None or b is None:
        return None
    kind = rng.choice(list(STOP_KINDS))
    query, resource, noun = STOP_KINDS[kind]
    route_km = haversine_km(a.latlng, b.latlng) * 1.30
    range_km = int(round(rng.uniform(0.3, 0.85) * route_km, -1))
    hits, _ = search.search_along_route(world, query, a.latlng, b.latlng, "driving", 2000, limit=ALL)
    reachable = [i for i, (_, along, _) in enumerate(hits) if along <= range_km - 3]
    if not reachable:
        return None
    best = reachable[-1]
    if hits[best][0].city or hits[best][1] < 30:
        return None  # the answer should be an expressway service area, not a charger in town
    if best >= 50 or (best + 1 < len(hits) and hits[best + 1][1] < range_km + 3):
        return None  # past the tool's 50-result page, or too close to the range limit to call
    if kind == "charge":
        need = f"I'm driving my electric car from {a.name} in {a_city.name} to {b.name} in {b_city.name}"
        left = f"I have about {range_km} km of range left"
    else:
        need = f"I'm driving from {a.name} in {a_city.name} to {b.name} in {b_city.name}"
        left = f"my fuel will last about {range_km} km"
    text = rng.choice([
        f"{need} and {left}. Which {noun} along the way should I stop at, as far along as possible "
        f"without running out?",
        f"{need}; {left}. Find the last {noun} on the route that I can still reach.",
        f"Road trip from {a.name} ({a_city.name}) to {b.name} ({b_city.name}): {left}. What's the furthest "
        f"{noun} along the route I can make it to?",
    ])
    params = {"origin": a.name, "origin_city": a_city.name, "destination": b.name,
              "destination_city": b_city.name, "search_query": query, "range_km": range_km}
    gt = {"kind": "place_best", "answer": hits[best][0].name,
          "tools": ["map_search_places", "map_search_along_route"], "max_calls": 5}
    return make_query(world, "route_stop", text, a_city.name, params, gt, difficulty_from(3, 3))


# ---------------------------------------------------------------- fastest mode

MODE_SETS = [["walking", "bicycling", "transit", "driving"], ["walking", "bicycling", "transit"],
             ["driving", "transit"], ["bicycling", "transit", "driving"]]
DEPART_TIMES = ["07:30", "08:00", "08:30", "12:00", "14:00", "17:30", "18:00", "21:00", "22:30"]


def gen_mode_choice(world, rng):
    city = rng.choice(world.cities).name
    pair = _two_places(world, rng, city, 1.5, 12.0)
    if pair is None:
        return None
    a, b = pair
    modes = rng.choices(MODE_SETS, [0.5, 0.2, 0.15, 0.15])[0]
    when = f"{world.dates()[rng.randrange(0, 11)]}T{rng.choice(DEPART_TIMES)}"
    dt = datetime.fromisoformat(when)
    times = {m: leg["duration_min"] for m in modes if (leg := route_leg(a.latlng, b.latlng, m, dt))}
    ranked = sorted(times, key=times.get)
    if len(ranked) < 2 or times[ranked[1]] - times[ranked[0]] < 3:
        return None
    listed = ", ".join(MODE_NAMES[m] for m in modes[:-1]) + f" or {MODE_NAMES[modes[-1]]}"
    t, d = time_phrase(when[11:], rng), day_phrase(when[:10], rng)
    text = rng.choice([
        f"What's the fastest way from {a.name} to {b.name} in {city} if I leave at {t} on {d}: {listed}?",
        f"Leaving {a.name} ({city}) at {t} on {d} for {b.name} — which is quickest, {listed}?",
    ])
    params = {"city": city, "origin": a.name, "destination": b.name, "modes": modes, "depart": when}
    gt = {"kind": "choice", "answer": ranked[0], "options": modes, "require_minutes": [times[ranked[0]]],
          "tools": ["map_search_places", "map_compute_routes"], "max_calls": 5}
    return make_query(world, "mode_choice", text, city, params, gt, difficulty_from(3, 1 + len(modes) // 2))


# ---------------------------------------------------------------- drive time

def gen_drive_time(world, rng):
    city = rng.choice(world.cities)
    a = pick_anchor(world, rng, city.name, ANCHOR_CATEGORIES)
    if rng.random() < 0.3:
        b = world.poi(city.name, city.airport)
    else:
        b = pick_anchor(world, rng, city.name, ANCHOR_CATEGORIES + ("hospital", "train_station"))
    if a is None or b is None or a is b or not 3.0 <= haversine_km(a.latlng, b.latlng) <= 40.0 \
            or not findable(world, b):
        return None
    day = world.dates()[rng.randrange(0, 11)]
    clock = rng.choice(["07:00", "07:45", "08:30", "10:00", "13:15", "17:00", "17:45", "19:30", "22:00"])
    params = {"city": city.name, "origin": a.name, "destination": b.name}
    d, t = day_phrase(day, rng), time_phrase(clock, rng)
    if rng.random() < 0.6:
        route = compute_route([a.latlng, b.latlng], "driving", datetime.fromisoformat(f"{day}T{clock}"))
        params["depart"] = f"{day}T{clock}"
        text = rng.choice([
            f"How long is the drive from {a.name} to {b.name} in {city.name} if I leave at {t} on {d}, "
            f"and when will I arrive?",
            f"If I drive from {a.name} to {b.name} ({city.name}) at {t} on {d}, what time do I get there?",
        ])
        gt = {"kind": "facts", "require_minutes": [route["duration_min"]],
              "require_times": [hhmm(route["arrival"].hour * 60 + route["arrival"].minute)]}
    else:
        route = latest_departure([a.latlng, b.latlng], "driving", datetime.fromisoformat(f"{day}T{clock}"))
        if route is None:
            return None
        params["arrive_by"] = f"{day}T{clock}"
        text = rng.choice([
            f"I need to be at {b.name} in {city.name} by {t} on {d}. When should I leave {a.name} by car?",
            f"What's the latest I can drive off from {a.name} and still reach {b.name} ({city.name}) "
            f"by {t} on {d}?",
        ])
        dep = route["departure"]
        gt = {"kind": "facts", "require_times": [hhmm(dep.hour * 60 + dep.minute)]}
    gt.update({"tools": ["map_search_places", "map_compute_routes"], "max_calls": 5})
    return make_query(world, "drive_time", text, city.name, params, gt, difficulty_from(3, 2))


# ---------------------------------------------------------------- a day plan with time windows

FIRST_STOPS = ("museum", "attraction", "park", "library", "bookstore")
LAST_STOPS = ("park", "attraction", "shopping_mall", "cafe", "cinema")


def gen_itinerary(world, rng):
    city = rng.choice(world.cities).name
    hotel = pick_anchor(world, rng, city, ("hotel",))
    stops = [pick_anchor(world, rng, city, FIRST_STOPS), pick_anchor(world, rng, city, ("restaurant",)),
             pick_anchor(world, rng, city, LAST_STOPS)]
    if hotel is None or None in stops or len({p.poi_id for p in stops}) < 3:
        return None
    places = [hotel] + stops
    if not all(1.0 <= haversine_km(p.latlng, q.latlng) <= 10.0 for p, q in zip(places, places[1:])):
        return None
    mode = rng.choice(["transit", "transit", "driving", "bicycling"])
    stays = [rng.choice([60, 90, 120]), rng.choice([45, 60]), rng.choice([60, 90])]
    start = f"{world.today}T{hhmm(rng.choice(range(8 * 60 + 30, 10 * 60 + 1, 15)))}"
    t = datetime.fromisoformat(start)
    arrivals = []
    for prev, stop, stay in zip(places, stops, stays):
        leg = route_leg(prev.latlng, stop.latlng, mode, t)
        if leg is None:
            return None
        arrive = t + timedelta(minutes=leg["duration_min"])
        if not (is_open(stop, arrive) and is_open(stop, arrive + timedelta(minutes=stay - 1))):
            return None  # every stop must be open for the whole visit
        arrivals.append(fmt_datetime(arrive)[11:])
        t = arrive + timedelta(minutes=stay)
    how = {"transit": "by public transit", "driving": "by car", "bicycling": "by bike"}[mode]
    s1, s2, s3 = stops
    text = rng.choice([
        f"Today I'm leaving {hotel.name} in {city} at {time_phrase(start[11:], rng)}, getting around {how}. "
        f"I'll spend {stays[0]} minutes at {s1.name}, then have lunch at {s2.name} ({stays[1]} minutes), "
        f"then go to {s3.name} for {stays[2]} minutes. When will I reach each place, and will each be open?",
        f"Plan my day in {city}: start from {hotel.name} at {time_phrase(start[11:], rng)} today, travel "
        f"{how}, visit {s1.name} ({stays[0]} min), lunch at {s2.name} ({stays[1]} min) and finish at "
        f"{s3.name} ({stays[2]} min). Give me the arrival time at each stop and check they're open.",
    ])
    params = {"city": city, "start_place": hotel.name, "start": start, "mode": mode,
              "stops": [p.name for p in stops], "stay_min": stays}
    gt = {"kind": "facts", "require_times": arrivals, "tools": ["map_search_places", "map_compute_routes"],
          "max_calls": 9}
    return make_query(world, "itinerary", text, city, params, gt, 5)


# ---------------------------------------------------------------- intercity: flight or train

def _options(world, a: str, b: str, day: str) -> list[dict]:
    """Every flight and train a->b on day as {code, arrive, depart, price} (second class)."""
    rows = [{"kind": "flight", "code": f.number, "depart": f.depart, "arrive": f.arrive, "price": f.price}
            for f in search.search_flights(world, a, b, day)]
    rows += [{"kind": "train", "code": t.number, "depart": t.depart, "arrive": t.arrive,
              "price": t.price_second} for t in search.search_trains(world, a, b, day)]
    return rows


def gen_intercity_trip(world, rng):
    a, b = rng.sample(world.cities, 2)
    day = world.dates()[rng.randrange(1, 13)]
    options = _options(world, a.name, b.name, day)
    if {o["kind"] for o in options} != {"flight", "train"}:
        return None  # we want both flights and trains on the table
    d = day_phrase(day, rng)
    if rng.random() < 0.5:
        deadline = rng.choice(["10:00", "12:00", "14:00", "16:00", "18:00", "20:00"])
        fits = sorted((o for o in options if o["arrive"] <= deadline), key=lambda o: (o["price"], o["code"]))
        if len(fits) < 2 or fits[1]["price"] - fits[0]["price"] < 10:
            return None
        if min(options, key=lambda o: o["price"]) is fits[0] and rng.random() < 0.6:
            return None  # prefer questions where the deadline changes the answer
        pick = fits[0]
        t = time_phrase(deadline, rng)
        text = rng.choice([
            f"I have to be in {b.name} by {t} on {d}, coming from {a.name}. What's the cheapest flight "
            f"or train that gets me there in time?",
            f"Cheapest way from {a.name} to {b.name} on {d}, arriving no later than {t}? Train or plane "
            f"is fine (second class is OK).",
        ])
        params = {"origin": a.name, "destination": b.name, "date": day, "goal": "cheapest",
                  "arrive_by": deadline}
    else:
        budget = rng.choice([300, 400, 500, 600, 800])
        fits = sorted((o for o in options if o["price"] <= budget), key=lambda o: (o["arrive"], o["code"]))
        if len(fits) < 2:
            return None
        first, second = (int(x["arrive"][:2]) * 60 + int(x["arrive"][3:]) for x in fits[:2])
        if second - first < 10:
            return None
        if min(options, key=lambda o: o["arrive"]) is fits[0] and rng.random() < 0.6:
            return None
        pick = fits[0]
        text = rng.choice([
            f"I'm going from {a.name} to {b.name} on {d} and can spend at most {budget} CNY. Which flight "
            f"or train gets me there earliest?",
            f"Earliest arrival in {b.name} from {a.name} on {d} for {budget} yuan or less — plane or train?",
        ])
        params = {"origin": a.name, "destination": b.name, "date": day, "goal": "earliest",
                  "budget": budget}
    gt = {"kind": "code", "answer": pick["code"], "require_numbers": [[pick["price"], 0]],
          "tools": ["travel_search_flights", "travel_search_trains"], "max_calls": 4}
    return make_query(world, "intercity_trip", text, a.name, params, gt, difficulty_from(2, 3))
