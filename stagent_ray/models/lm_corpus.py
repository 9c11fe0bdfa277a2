"""Synthetic pretraining text for the tiny model built from scratch (`pretrain.docs`).

The STAgent recipe starts from a pretrained LLM, which can already copy a name it has never
seen from a question into a tool call, read a JSON record, and turn "June 15" into
2026-06-15. A model from scratch trained on a few hundred teacher QAs cannot: it memorises
them (on CPU and GPU it verifies 0.00 on `place_hours`, whose every question names a place it
never saw). These documents stand in for that pretraining: made-up places, dates and weather
from the world's vocabulary, each stated twice (prose and JSON, in either order), so that
next-token prediction rewards copying from the context. They hold no fact of the generated
world (names are drawn afresh, not its POIs), no question and no tool call.
"""

from __future__ import annotations

import json
import random
from datetime import date, timedelta

from stagent_ray.world.generate import (CATEGORIES, CITY_NAMES, CONDITIONS, DISTRICT_FIRST,
                                        DISTRICT_SECOND, NAME_WORDS)

MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
NOUNS = sorted({(noun, cat) for cat, spec in CATEGORIES.items() for noun in spec[1]})


def _json(record: dict, rng: random.Random) -> str:
    """Compact, as tool responses are, or spaced, as tool calls are."""
    return json.dumps(record, separators=(",", ":")) if rng.random() < 0.5 else json.dumps(record)


def made_up_place(rng: random.Random) -> tuple[str, str]:
    """A place name the way the world names its POIs (one or two name words and a category
    noun), drawn afresh; and its category."""
    noun, category = rng.choice(NOUNS)
    return " ".join(rng.sample(NAME_WORDS, rng.choice([1, 2])) + [noun]), category


def place_document(rng: random.Random) -> str:
    name, category = made_up_place(rng)
    city = rng.choice(CITY_NAMES)
    district = f"{rng.choice(DISTRICT_FIRST)} {rng.choice(DISTRICT_SECOND)}"
    opens, closes = f"{rng.randrange(6, 12):02d}:{rng.choice(['00', '30'])}", \
        f"{rng.randrange(17, 24):02d}:{rng.choice(['00', '30'])}"
    rating, price = round(rng.uniform(3.0, 5.0), 1), rng.randrange(0, 300)
    record = _json({"name": name, "category": category, "city": city, "district": district,
                    "rating": rating, "avg_price": price, "hours": f"{opens}-{closes}"}, rng)
    prose = rng.choice([
        f"{name} is a {category.replace('_', ' ')} in {district}, {city}, open {opens}-{closes}.",
        f"Visitors to {city} often stop at {name}. {name} opens at {opens} and closes at {closes}.",
        f"In {district} ({city}), {name} is rated {rating}; about {price} CNY per person.",
        f"{name} ({city}): hours {opens}-{closes}, rating {rating}."])
    return " ".join([prose, record] if rng.random() < 0.5 else [record, prose])


def date_document(rng: random.Random, today: date) -> str:
    day = today + timedelta(days=rng.randrange(-60, 120))
    month_day = f"{MONTHS[day.month - 1]} {day.day}"
    return rng.choice([
        f"{month_day} is a {WEEKDAYS[day.weekday()]}: {day.isoformat()}.",
        f"{WEEKDAYS[day.weekday()]}, {month_day}, {day.year} ({day.isoformat()})",
        f"{day.isoformat()} = {month_day} = {WEEKDAYS[day.weekday()]}",
        f"{day - timedelta(days=1)} comes before {day.isoformat()}, and "
        f"{day + timedelta(days=1)} comes after it ({month_day})."])


def weather_document(rng: random.Random, today: date) -> str:
    city = rng.choice(CITY_NAMES)
    day = today + timedelta(days=rng.randrange(0, 14))
    high = rng.randrange(-5, 38)
    low, rain, condition = high - rng.randrange(3, 10), rng.randrange(0, 100), rng.choice(CONDITIONS)
    record = _json({"location": city, "date": day.isoformat(), "condition": condition,
                    "high_c": high, "low_c": low, "precip_prob": rain}, rng)
    prose = rng.choice([
        f"{city} on {day.isoformat()}: {condition.replace('_', ' ')}, {low}-{high}°C, "
        f"{rain}% chance of rain.",
        f"On {MONTHS[day.month - 1]} {day.day} {city} expects a high of {high}°C and a low of "
        f"{low}°C ({condition.replace('_', ' ')}).",
        f"Rain in {city} on {day.isoformat()}: {rain}%. High {high}°C."])
    return " ".join([prose, record] if rng.random() < 0.5 else [record, prose])


def documents(n: int, seed: int, today: str, per_row: int = 1) -> list[str]:
    """n documents (three quarters places, an eighth each dates and weather), `per_row` to a
    string (a training sample). Places dominate: in-process runs of the probe's kind (1000
    steps of 32 single documents) taught the 2.4M model to copy unseen names 0.13 of the time
    with half the documents places, 0.5-0.8 with places only. One document to a sample: with
    four, the same pretraining through Ray Train taught it almost nothing (1-3 of 48 names
    copied in scripts/probe_copy.py against 21 of 48)."""
    rng, day = random.Random(seed), date.fromisoformat(today)
    makers = [place_document] * 6 + [lambda r: date_document(r, day),
                                     lambda r: weather_document(r, day)]
    docs = [rng.choice(makers)(rng) for _ in range(n)]
    return ["\n".join(docs[i:i + per_row]) for i in range(0, n, per_row)]
