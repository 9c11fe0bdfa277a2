"""Oracle solvers for weather, policy lookups, declined requests and no-tool questions
(see oracle_places for the conventions)."""

from __future__ import annotations

import re

from stagent_ray.models.chat_format import UNSOLVED_MARKER
from stagent_ray.tasks.families_info import AIRLINE_WINDOWS, TRAIN_WINDOWS, WET
from stagent_ray.tasks.oracle_steps import (call, condition_text, failed, maybe_broken, number_text,
                                            tool_trouble, weekday_of)

AQI_WORDS = {"good": "good", "moderate": "moderate", "unhealthy_sensitive": "unhealthy for sensitive groups",
             "unhealthy": "unhealthy"}


def solve_weather_day(query, rng, noise):
    p = query.params
    days = p["days"] - 1 if rng.random() < noise / 2 else p["days"]  # wrong argument: one day short
    args = {"location": p["city"], "date": p["first_date"], "days": days}
    result = yield from call(f"Let me get the forecast for those {p['days']} days.", "weather_forecast_days",
                             maybe_broken(args, rng, noise), args)
    if failed(result):
        return tool_trouble(result)
    rows = result["days"]
    goal = p["goal"]
    if rng.random() < noise / 2:  # wrong criterion
        goal = rng.choice([g for g in ("driest", "coolest_dry", "warmest_clean") if g != goal])
    if goal == "driest":
        ranked = sorted(rows, key=lambda w: (w["precip_prob"], w["date"]))
    elif goal == "coolest_dry":
        ranked = sorted((w for w in rows if w["condition"] not in WET), key=lambda w: (w["high_c"], w["date"]))
    else:
        ranked = sorted((w for w in rows if w["condition"] not in WET and w["aqi"] <= 100),
                        key=lambda w: (-w["high_c"], w["date"]))
    if not ranked:
        return "None of those days fits: every one has rain or poor air in the forecast."
    w = ranked[0]
    return (f"{weekday_of(w['date'])} {w['date']} looks best: {condition_text(w['condition'])}, "
            f"{w['precip_prob']}% chance of rain, high {w['high_c']}°C, AQI {w['aqi']}.")


def solve_current_weather(query, rng, noise):
    p = query.params
    args = {"location": p["location"]}
    result = yield from call("Checking the live conditions.", "weather_current_conditions",
                             maybe_broken(args, rng, noise), args)
    if failed(result):
        return tool_trouble(result)
    r = result
    if rng.random() < noise / 2:  # wrong reading: the feels-like value as the temperature
        r = {**r, "temperature_c": r["feels_like_c"], "aqi": r["humidity"]}
    return (f"Right now in {p['location']} (observed {r['observed_at'][11:]}): {condition_text(r['condition'])}, "
            f"{r['temperature_c']}°C (feels like {r['feels_like_c']}°C), humidity {r['humidity']}%. "
            f"The AQI is {r['aqi']}, which is {AQI_WORDS.get(r['aqi_level'], r['aqi_level'])}.")


def solve_forecast_check(query, rng, noise):
    p = query.params
    args = {"location": p["city"], "date": p["date"], "days": 1}
    result = yield from call(f"Getting the forecast for {p['date']}.", "weather_forecast_days",
                             maybe_broken(args, rng, noise), args)
    if failed(result):
        return tool_trouble(result)
    rows = result["days"]
    w = rows[0]
    if rng.random() < noise / 2:  # premature answer: guesses without reading the numbers closely
        return f"{p['city']} on {p['date']} should be mild and dry, around 20°C."
    umbrella = "take an umbrella" if w["precip_prob"] >= 50 or w["condition"] in WET else "no umbrella needed"
    return (f"Forecast for {p['city']} on {w['date']}: {condition_text(w['condition'])}, high {w['high_c']}°C, "
            f"low {w['low_c']}°C, {w['precip_prob']}% chance of rain ({umbrella}).")


# ---------------------------------------------------------------- web facts

def _sentence_with(text: str, word: str) -> str:
    for sentence in re.split(r"(?<=\.)\s+", text):
        if word.lower() in sentence.lower():
            return sentence.strip()
    return text


def _fact_from_page(p: dict, page: dict) -> str:
    """The answer sentence for a policy question, read from the chosen page."""
    text, title, topic = page["snippet"], page["title"], p["topic"]
    if topic == "airline_refund":
        clause, pattern = AIRLINE_WINDOWS[p["window"]]
        m = re.search(pattern, text)
        if m is None:
            return f"The page \"{title}\" doesn't state that case."
        return (f"Per \"{title}\", refunding an economy ticket {clause} "
                f"costs {m.group(1)}% of the fare.")
    if topic == "train_refund":
        m = re.search(TRAIN_WINDOWS[p["window"]], text)
        if m is None:
            return f"The page \"{title}\" doesn't state that case."
        fee = "free" if m.group(1) == "free" else f"a {m.group(1)}% fee"
        return f"Per \"{title}\", refunding a train ticket {p['window']} is {fee}."
    word = {"baggage": "checked", "ticket_price": p["entity"], "event": p["entity"], "deposit": "deposit",
            "closed_day": "Closed on"}.get(topic)
    if topic == "hotel":
        word = {"checkin": "check-in", "checkout": "check-out", "breakfast": "reakfast", "pets": "Pets"}[p["ask"]]
    return f"According to \"{title}\": {_sentence_with(text, word)}"


def solve_policy_lookup(query, rng, noise):
    p = query.params
    if rng.random() < noise / 3:  # premature answer: from memory, no search
        return f"Usually this is around 50 CNY or 15% — please check with {p['entity']} directly."
    args = {"query": p["search_query"]}
    result = yield from call(f"I'll search the web for {p['search_query']}.", "web_search",
                             maybe_broken(args, rng, noise), args)
    if failed(result):
        return tool_trouble(result)
    pages = result["results"]
    page = next((r for r in pages if all(w.lower() in r["title"].lower() for w in p["title_words"])), None)
    if rng.random() < noise / 2 and pages:
        page = rng.choice(pages)  # wrong pick: trusts another page
    if page is None:
        return f"I couldn't find a page that answers this for {p['entity']}."
    return _fact_from_page(p, page)


# ---------------------------------------------------------------- declined and no-tool requests

def solve_unsolvable(query, rng, noise):
    p = query.params
    if rng.random() < noise / 2:  # wasted call before noticing the tools can't do it
        yield ("Let me see if a search helps with this.", "web_search", {"query": query.text[:200]})
    if rng.random() < noise / 3:  # misses the boundary and pretends
        return "Done — I've taken care of that for you."
    return f"{UNSOLVED_MARKER} Sorry, I can't do that: {p['reason']}"


CONVERSIONS = {  # op -> (function, how the answer reads)
    "km_to_miles": (lambda x, n: x * 0.621371, "{x} km is about {v} miles."),
    "miles_to_km": (lambda x, n: x * 1.609344, "{x} miles is about {v} km."),
    "f_to_c": (lambda x, n: (x - 32) * 5 / 9, "{x} °F is about {v} °C (subtract 32, then multiply by 5/9)."),
    "c_to_f": (lambda x, n: x * 9 / 5 + 32, "{x} °C is {v} °F (multiply by 9/5, then add 32)."),
    "hours_to_minutes": (lambda x, n: x * 60, "{x} hours is {v} minutes."),
    "minutes_to_hours": (lambda x, n: x / 60, "{x} minutes is {v} hours."),
    "kg_to_lb": (lambda x, n: x * 2.20462, "{x} kg is about {v} pounds."),
    "split_bill": (lambda x, n: x / n, "Split {n} ways, {x} yuan comes to {v} yuan each."),
}


def solve_no_tool(query, rng, noise):
    p = query.params
    if rng.random() < noise / 2:  # an unnecessary tool call
        yield ("Let me search for that.", "web_search", {"query": query.text[:200]})
    fn, template = CONVERSIONS[p["op"]]
    value = fn(p["x"], p.get("n"))
    if rng.random() < noise / 3:  # arithmetic slip
        value *= 1.1
    return template.format(x=number_text(p["x"]), n=p.get("n"), v=number_text(value))


SOLVERS = {
    "weather_day": solve_weather_day,
    "current_weather": solve_current_weather,
    "forecast_check": solve_forecast_check,
    "policy_lookup": solve_policy_lookup,
    "unsolvable": solve_unsolvable,
    "no_tool": solve_no_tool,
}
