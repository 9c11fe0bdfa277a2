"""Query families about weather, policies and facts, plus the irrelevance set: requests the
tools cannot serve (answered with [Unsolved]) and requests that need no tool at all."""

from __future__ import annotations

import re
from datetime import date, timedelta

from stagent_ray.tasks.query import day_phrase, difficulty_from, make_query, time_phrase
from stagent_ray.world import search

WET = ("light_rain", "moderate_rain", "heavy_rain", "thunderstorm", "snow")
ACTIVITIES = ["picnic", "hike", "bike ride", "kite flying afternoon", "photo walk", "barbecue in the park"]


# ---------------------------------------------------------------- weather

def gen_weather_day(world, rng):
    city = rng.choice(world.cities).name
    dates = world.dates()
    start = rng.randrange(0, 11)
    span = rng.randint(3, 5)
    days = [world.forecast(city, d) for d in dates[start:start + span]]
    goal = rng.choice(["driest", "coolest_dry", "warmest_clean"])
    if goal == "driest":
        ranked = sorted(days, key=lambda w: w.precip_prob)
        if ranked[1].precip_prob - ranked[0].precip_prob < 5:
            return None
        want = rng.choice(["has the lowest chance of rain", "is driest"])
    elif goal == "coolest_dry":
        ranked = sorted((w for w in days if w.condition not in WET), key=lambda w: w.high_c)
        if len(ranked) < 2 or ranked[1].high_c - ranked[0].high_c < 1:
            return None
        want = rng.choice(["is the coolest day without rain", "is coolest while staying dry"])
    else:
        ranked = sorted((w for w in days if w.condition not in WET and w.aqi <= 100), key=lambda w: -w.high_c)
        if len(ranked) < 2 or ranked[0].high_c - ranked[1].high_c < 1:
            return None
        want = "is the warmest day with no rain and an AQI of 100 or less"
    first, last = day_phrase(days[0].date, rng), day_phrase(days[-1].date, rng)
    activity = rng.choice(ACTIVITIES)
    text = rng.choice([
        f"I'm planning a {activity} in {city} between {first} and {last}. Which day {want}?",
        f"Pick the best day for a {activity} in {city} from {first} to {last}: the one that {want}.",
    ])
    params = {"city": city, "first_date": days[0].date, "days": span, "goal": goal}
    gt = {"kind": "date", "answer": ranked[0].date, "tools": ["weather_forecast_days"], "max_calls": 3}
    return make_query(world, "weather_day", text, city, params, gt, difficulty_from(1, 2 + (goal != "driest")))


def gen_current_weather(world, rng):
    city = rng.choice(world.cities)
    location = city.name if rng.random() < 0.6 else rng.choice(city.districts).name
    now = next(w for w in world.current if w.city == city.name)
    text = rng.choice([f"What's the weather like in {location} right now, and how is the air quality?",
                       f"Current temperature and AQI in {location}, please.",
                       f"Is it hot in {location} at the moment? And what's the AQI?"])
    params = {"location": location}
    gt = {"kind": "facts", "require_numbers": [[now.temperature_c, 0], [now.aqi, 0]],
          "tools": ["weather_current_conditions"], "max_calls": 3}
    return make_query(world, "current_weather", text, city.name, params, gt, 1)


def gen_forecast_check(world, rng):
    city = rng.choice(world.cities).name
    day = world.dates()[rng.randrange(1, 16)]
    w = world.forecast(city, day)
    d = day_phrase(day, rng)
    text = rng.choice([f"What's the forecast for {city} on {d}? How warm will it get, and will it rain?",
                       f"Will I need an umbrella in {city} on {d}? What's the expected high?",
                       f"Give me the high temperature and the chance of rain in {city} for {d}."])
    params = {"city": city, "date": day}
    gt = {"kind": "facts", "require_numbers": [[w.high_c, 0], [w.precip_prob, 0]],
          "tools": ["weather_forecast_days"], "max_calls": 3}
    return make_query(world, "forecast_check", text, city, params, gt, difficulty_from(1, 1))


# ---------------------------------------------------------------- policies and facts via web_search

AIRLINE_WINDOWS = {  # what the user says -> (clause in the policy text, regex for the percentage)
    "two weeks before departure": ("more than 7 days before departure",
                                   r"more than 7 days before departure cost (\d+)%"),
    "four days before departure": ("2-7 days before departure", r"2-7 days (\d+)%"),
    "the day before departure": ("within 48 hours of departure", r"within 48 hours (\d+)%"),
}
TRAIN_WINDOWS = {
    "ten days before departure": r"(free) more than 8 days before",
    "five days before departure": r"(\d+)% fee 2-8 days before",
    "36 hours before departure": r"(\d+)% fee 24-48 hours before",
    "twelve hours before departure": r"(\d+)% fee within 24 hours",
}


def _policy_question(world, rng):
    """(topic, page, user text, params extra, ground truth) for one policy question."""
    topic = rng.choice(["airline_refund", "baggage", "ticket_price", "hotel", "event", "train_refund",
                        "deposit", "closed_day"])
    by_kind = lambda kind: [p for p in world.pages if p.kind == kind]  # noqa: E731
    if topic in ("airline_refund", "baggage"):
        kind = "refund_policy" if topic == "airline_refund" else "baggage_policy"
        page = rng.choice([p for p in by_kind(kind) if "Train" not in p.title])
        airline = page.title.split(" refund")[0].split(" baggage")[0]
        if topic == "baggage":
            kg = int(re.search(r"(\d+) kg checked", page.text).group(1))
            return topic, page, f"What's the checked baggage allowance on {airline} economy fares?", \
                {"entity": airline, "search_query": f"{airline} baggage allowance",
                 "title_words": [airline, "baggage"]}, {"require_numbers": [[kg, 0]]}
        said = rng.choice(list(AIRLINE_WINDOWS))
        pct = int(re.search(AIRLINE_WINDOWS[said][1], page.text).group(1))
        others = [int(re.search(pattern, page.text).group(1)) for key, (_, pattern) in AIRLINE_WINDOWS.items()
                  if key != said]
        text = rng.choice([f"If I refund my {airline} economy ticket {said}, how much of the fare do I lose?",
                           f"What's {airline}'s refund fee for an economy ticket cancelled {said}?"])
        return topic, page, text, {"entity": airline, "search_query": f"{airline} refund policy",
                                   "title_words": [airline, "refund"], "window": said}, \
            {"require_numbers": [[pct, 0]], "forbid_numbers": [o for o in others if o != pct]}
    if topic == "train_refund":
        page = next(p for p in by_kind("refund_policy") if "Train" in p.title)
        said = rng.choice(list(TRAIN_WINDOWS))
        fees = {key: re.search(pattern, page.text).group(1) for key, pattern in TRAIN_WINDOWS.items()}
        fee = fees.pop(said)
        gt = {"require_text": ["free"]} if fee == "free" else {"require_numbers": [[int(fee), 0]]}
        gt["forbid_numbers"] = [int(f) for f in fees.values() if f != "free" and f != fee]
        return topic, page, f"What does it cost to refund a train ticket {said}?", \
            {"entity": "Train", "search_query": "train ticket refund rules",
             "title_words": ["Train", "refund"], "window": said}, gt
    city = rng.choice(world.cities).name
    if topic == "ticket_price":
        page = rng.choice([p for p in by_kind("ticket_rules") if p.city == city])
        name = page.title.removesuffix(" ticket rules")
        m = re.search(r"cost (\d+) CNY", page.text)
        gt = {"require_numbers": [[int(m.group(1)), 0]]} if m else {"require_text": ["free"]}
        return topic, page, f"How much is an adult ticket for {name} in {city}?", \
            {"entity": name, "search_query": f"{name} ticket", "title_words": [name, "ticket"]}, gt
    if topic == "hotel":
        page = rng.choice([p for p in by_kind("hotel_policy") if p.city == city])
        name = page.title.removesuffix(" policies")
        ask = rng.choice(["checkin", "checkout", "breakfast", "pets"])
        params = {"entity": name, "search_query": f"{name} policies", "title_words": [name, "policies"],
                  "ask": ask}
        if ask == "checkin":
            return topic, page, f"From what time can I check in at {name} in {city}?", params, \
                {"require_times": ["14:00"]}
        if ask == "checkout":
            return topic, page, f"What's the check-out time at {name} ({city})?", params, \
                {"require_times": ["12:00"]}
        if ask == "breakfast":
            has = "Breakfast is served" in page.text
            return topic, page, f"Does {name} in {city} serve breakfast, and when?", params, \
                {"require_times": ["06:30", "10:00"]} if has else {"require_text": ["does not serve breakfast"]}
        ok = "Pets are welcome" in page.text
        return topic, page, f"Can I bring my dog to {name} in {city}?", params, \
            {"require_text": ["pets are welcome" if ok else "pets are not allowed"]}
    if topic == "event":
        page = rng.choice([p for p in by_kind("event") if p.city == city])
        kind, rest = page.title.split(" at ", 1)
        venue, day = rest.rsplit(" on ", 1)
        start, end = re.search(r"(\d\d:\d\d)-(\d\d:\d\d)", page.text).groups()
        text = rng.choice([f"What time is the {kind} at {venue} in {city} on {day_phrase(day, rng)}?",
                           f"When does the {kind} at {venue} ({city}) on {day_phrase(day, rng)} start and end?"])
        return topic, page, text, {"entity": venue, "search_query": f"{kind} {venue}",
                                   "title_words": [kind, venue, day]}, {"require_times": [start, end]}
    if topic == "deposit":
        page = rng.choice([p for p in by_kind("reservation_policy") if p.city == city] or [None])
        if page is None:
            return None
        name = page.title.removeprefix("Booking a table at ")
        return topic, page, f"We're a group of 8 — does {name} in {city} ask for a deposit, and how much?", \
            {"entity": name, "search_query": f"{name} booking deposit", "title_words": [name, "Booking"]}, \
            {"require_numbers": [[100, 0]]}
    page = rng.choice([p for p in by_kind("opening_policy") if p.city == city])
    name = page.title.removesuffix(" opening hours")
    closed = re.search(r"Closed on ([A-Za-z, ]+)\.", page.text).group(1).split(", ")
    return topic, page, f"Which day of the week is {name} in {city} closed?", \
        {"entity": name, "search_query": f"{name} opening hours", "title_words": [name, "opening hours"]}, \
        {"require_text": closed}


def gen_policy_lookup(world, rng):
    drawn = _policy_question(world, rng)
    if drawn is None:
        return None
    topic, page, text, params, gt = drawn
    # the oracle takes the first result whose title holds all title_words: it must be this page
    hits = search.web_search(world, params["search_query"])
    chosen = next((p for p, _ in hits if all(w.lower() in p.title.lower() for w in params["title_words"])), None)
    if chosen is not page:
        return None
    params = {"topic": topic, **params}
    gt = {"kind": "facts", **gt, "tools": ["web_search"], "max_calls": 3}
    return make_query(world, "policy_lookup", text, page.city, params, gt, difficulty_from(1, 1))


# ---------------------------------------------------------------- the tools cannot serve these

def gen_unsolvable(world, rng):
    city = rng.choice(world.cities).name
    pois = world.pois_by_city[city]
    pick = lambda cat: rng.choice([p for p in pois if p.category == cat]).name  # noqa: E731
    last_day = date.fromisoformat(world.dates()[-1])
    far = (last_day + timedelta(days=rng.randint(10, 60))).isoformat()
    kind = rng.choice(["table", "room", "ticket", "taxi", "parking", "crowd", "far_weather", "abroad",
                       "app", "pay"])
    if kind == "table":
        text = f"Book a table for {rng.randint(2, 6)} at {pick('restaurant')} in {city} at " \
               f"{time_phrase(rng.choice(['18:30', '19:00', '20:00']), rng)} tonight."
        reason = "I can search places and their details, but I can't make restaurant reservations."
    elif kind == "room":
        text = f"Reserve a double room at {pick('hotel')} in {city} for {day_phrase(world.dates()[3], rng)}."
        reason = "my tools can look hotels up but cannot book rooms or hold reservations."
    elif kind == "ticket":
        f = rng.choice([f for f in world.flights if f.origin == city])
        text = f"Buy me a seat on flight {f.number} from {f.origin} to {f.destination} on {f.date}."
        reason = "I can search flights and trains, but I cannot purchase tickets or make payments."
    elif kind == "taxi":
        text = f"Call a taxi to pick me up at {pick('hotel')} in {city} in ten minutes."
        reason = "I have no ride-hailing or taxi dispatch tool, so I can't order a car for you."
    elif kind == "parking":
        text = f"How many free parking spaces does {pick('parking_lot')} in {city} have right now?"
        reason = "none of my tools reports live parking occupancy."
    elif kind == "crowd":
        text = f"How crowded is {pick('attraction')} in {city} at this moment?"
        reason = "my tools have no live crowd or queue data for venues."
    elif kind == "far_weather":
        text = f"What will the weather be in {city} on {far}?"
        reason = "weather forecasts are only available for the next 15 days, and that date is further out."
    elif kind == "abroad":
        abroad = rng.choice(["Tokyo", "Paris", "New York", "Singapore", "Sydney"])
        text = f"Find me flights from {city} to {abroad} next week."
        reason = "my flight search only covers domestic routes between the cities I know."
    elif kind == "app":
        text = rng.choice(["Turn on voice guidance in my navigation app.",
                           "Share my live location with my friend until I arrive.",
                           "Play my road-trip playlist in the car.",
                           "Set an alarm for 6 am tomorrow."])
        reason = "I can't control apps or devices; I can only look up places, routes, trips and weather."
    else:
        text = f"Pay for my parking at {pick('parking_lot')} in {city} with my saved card."
        reason = "I have no payment tool, so I can't pay for anything on your behalf."
    params = {"request": kind, "reason": reason}
    gt = {"kind": "unsolved", "tools": []}
    return make_query(world, "unsolvable", text, city, params, gt, -1)


# ---------------------------------------------------------------- no tool needed

def gen_no_tool(world, rng):
    op = rng.choice(["km_to_miles", "miles_to_km", "f_to_c", "c_to_f", "hours_to_minutes", "split_bill",
                     "kg_to_lb", "minutes_to_hours"])
    params = {"op": op}
    if op == "km_to_miles":
        x = rng.choice([3, 5, 8, 10, 15, 21.1, 42.2, 100])
        value, text = x * 0.621371, f"How many miles is {x:g} km?"
    elif op == "miles_to_km":
        x = rng.choice([1, 3, 5, 13.1, 26.2, 50])
        value, text = x * 1.609344, f"Convert {x:g} miles to kilometres."
    elif op == "f_to_c":
        x = rng.choice([32, 50, 68, 77, 86, 95, 100])
        value, text = (x - 32) * 5 / 9, f"What is {x} degrees Fahrenheit in Celsius?"
    elif op == "c_to_f":
        x = rng.choice([-5, 0, 12, 18, 25, 30, 37])
        value, text = x * 9 / 5 + 32, f"Convert {x} degrees Celsius to Fahrenheit."
    elif op == "hours_to_minutes":
        x = rng.choice([1.5, 2.25, 2.5, 3.75, 4.5])
        value, text = x * 60, f"How many minutes are there in {x:g} hours?"
    elif op == "minutes_to_hours":
        x = rng.choice([90, 135, 150, 200, 270])
        value, text = x / 60, f"How many hours is {x} minutes?"
    elif op == "kg_to_lb":
        x = rng.choice([7, 10, 20, 23, 32])
        value, text = x * 2.20462, f"My suitcase weighs {x} kg. How much is that in pounds?"
    else:
        x = rng.choice([180, 236, 450, 599, 1280])
        n = rng.choice([2, 3, 4, 5])
        value, text = x / n, f"Dinner cost {x} yuan and we are {n} people. How much does each of us pay?"
        params["n"] = n
    params["x"] = x
    gt = {"kind": "no_tool", "require_numbers": [[round(value, 2), max(0.011, abs(value) * 0.002)]], "tools": []}
    return make_query(world, "no_tool", text, "", params, gt, 0)

