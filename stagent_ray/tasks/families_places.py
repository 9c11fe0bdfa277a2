"""Query families about places: constrained search, nearest open place, ranking lists,
opening hours, meeting points.

Each `gen_<family>(world, rng)` draws one query or returns None when the draw does not
make a good question (no answer, no unique best); `families.generate_queries` retries.
Ground truth comes from `world.search`, the functions the tools themselves call.
"""

from __future__ import annotations

from datetime import datetime

from stagent_ray.tasks.query import (ANCHOR_CATEGORIES, category_word, day_phrase, difficulty_from,
                                     make_query, pick_anchor, tag_words, time_phrase)
from stagent_ray.world import search
from stagent_ray.world.generate import CATEGORIES, CUISINES
from stagent_ray.world.geo import haversine_km

ALL = 10 ** 6  # "no limit" for ground-truth searches


def _search_query(category: str, tag: str | None) -> str:
    """The words the oracle searches with for a category plus an optional tag."""
    return category_word(category) if tag is None else f"{tag_words(tag)} {category_word(category)}"


def _described(category: str, tag: str | None) -> str:
    """How the user names what they want: "sichuan restaurant", "cafe with wifi"."""
    word = category_word(category)
    if tag is None:
        return word
    if tag in CUISINES or tag in ("quiet", "vegetarian_options"):
        return f"{tag_words(tag)} {word}"
    return f"{word} with {tag_words(tag)}"


def _radius_phrase(radius_m: int, rng) -> str:
    return f"{radius_m} m" if radius_m < 1000 or rng.random() < 0.4 else f"{radius_m / 1000:g} km"


def _dt(world, rng, max_days: int, times: list[str]) -> str:
    day = world.dates()[rng.randrange(0, max_days + 1)]
    return f"{day}T{rng.choice(times)}"


# ---------------------------------------------------------------- constrained search

SEARCH_CATEGORIES = ["restaurant", "cafe", "bar", "bakery", "gym", "cinema", "bookstore",
                     "supermarket", "pharmacy", "museum", "park"]


def gen_constrained_search(world, rng):
    city = rng.choice(world.cities).name
    anchor = pick_anchor(world, rng, city, ANCHOR_CATEGORIES)
    if anchor is None:
        return None
    category = rng.choice(SEARCH_CATEGORIES)
    if category == anchor.category:
        return None  # "a park near Golden Red Park" would find the anchor itself
    tags = list(CATEGORIES[category][2]) + (CUISINES if category == "restaurant" else [])
    tag = rng.choice(tags) if rng.random() < 0.5 else None
    radius = rng.choice([800, 1000, 1500, 2000, 3000])
    min_rating = rng.choice([3.8, 4.0, 4.2, 4.5]) if rng.random() < 0.7 else None
    priced = category in ("restaurant", "cafe", "bar", "bakery", "gym", "cinema")
    price_max = rng.choice([40, 60, 80, 100, 150]) if priced and rng.random() < 0.5 else None
    open_at = _dt(world, rng, 7, ["08:00", "10:00", "12:30", "18:30", "20:00", "21:30", "22:30"]) \
        if rng.random() < 0.7 else None
    if min_rating is None and price_max is None and open_at is None:
        return None
    query = _search_query(category, tag)
    hits, total = search.search_places(
        world, query, center=anchor.latlng, radius_m=radius, min_rating=min_rating,
        price_max=price_max, open_at=datetime.fromisoformat(open_at) if open_at else None, limit=ALL)
    _, unfiltered = search.search_places(world, query, center=anchor.latlng, radius_m=radius, limit=ALL)
    if not 1 <= total <= 10 or unfiltered == total:  # the constraints must rule something out
        return None

    want = _described(category, tag)
    where = rng.choice([f"within {_radius_phrase(radius, rng)} of {anchor.name} in {city}",
                        f"no more than {_radius_phrase(radius, rng)} from {anchor.name} ({city})"])
    conditions = []
    if min_rating is not None:
        conditions.append(rng.choice([f"rated {min_rating} or higher",
                                      f"with a rating of at least {min_rating}"]))
    if price_max is not None:
        conditions.append(rng.choice([f"at most {price_max} CNY per person",
                                      f"no more than {price_max} yuan a head"]))
    if open_at is not None:
        conditions.append(f"open at {time_phrase(open_at[11:], rng)} on {day_phrase(open_at[:10], rng)}")
    cond = ", ".join(conditions)
    text = rng.choice([
        f"Find me a {want} {where}, {cond}.",
        f"I'm at {anchor.name} in {city}. Is there a {want} within {_radius_phrase(radius, rng)}, {cond}?",
        f"Looking for a {want} {where} — {cond}. Any suggestions?",
    ])
    params = {"anchor": anchor.name, "city": city, "category": category, "tag": tag,
              "search_query": query, "radius_m": radius, "min_rating": min_rating,
              "price_max": price_max, "open_at": open_at}
    gt = {"kind": "places_any", "accept": [p.name for p, _ in hits],
          "tools": ["map_search_places"], "max_calls": 4}
    constraints = 2 + (tag is not None) + (min_rating is not None) + (price_max is not None) \
        + (open_at is not None)
    return make_query(world, "constrained_search", text, city, params, gt, difficulty_from(2, constraints))


# ---------------------------------------------------------------- nearest open place

NEAREST_CATEGORIES = ["pharmacy", "supermarket", "gas_station", "cafe", "bakery", "bar",
                      "restaurant", "charging_station", "gym", "bookstore"]


def gen_nearest_open(world, rng):
    city = rng.choice(world.cities).name
    anchor = pick_anchor(world, rng, city, ANCHOR_CATEGORIES)
    if anchor is None:
        return None
    category = rng.choice(NEAREST_CATEGORIES)
    when = _dt(world, rng, 10, ["06:30", "07:00", "09:00", "13:00", "21:30", "22:00", "22:30", "23:00",
                                "23:30"])
    query = category_word(category)
    hits, _ = search.search_places(world, query, center=anchor.latlng, radius_m=3000, sort_by="distance",
                                   open_at=datetime.fromisoformat(when), limit=ALL)
    if not hits or (len(hits) > 1 and hits[1][1] - hits[0][1] < 100):
        return None
    nearest_any, _ = search.search_places(world, query, center=anchor.latlng, radius_m=3000,
                                          sort_by="distance", limit=1)
    if nearest_any[0][0] is hits[0][0] and rng.random() < 0.6:
        return None  # prefer questions where the opening-time filter changes the answer
    t, d = time_phrase(when[11:], rng), day_phrase(when[:10], rng)
    text = rng.choice([
        f"I'm at {anchor.name} in {city}. Where's the nearest {query} that's open at {t} on {d}?",
        f"What is the closest {query} to {anchor.name} ({city}) that will be open on {d} at {t}?",
        f"Near {anchor.name} in {city}: which {query} is nearest and still open at {t} on {d}?",
    ])
    params = {"anchor": anchor.name, "city": city, "category": category, "search_query": query,
              "open_at": when}
    gt = {"kind": "place_best", "answer": hits[0][0].name, "tools": ["map_search_places"],
          "max_calls": 4}
    return make_query(world, "nearest_open", text, city, params, gt, difficulty_from(2, 3))


# ---------------------------------------------------------------- ranking lists

LIST_TOPICS = {  # tool query -> how users name the list
    "must-eat": "must-eat restaurants", "coffee": "coffee places", "museum": "museums",
    "park": "parks", "attraction": "attractions", "bar": "bars", "bakery": "bakeries",
    "hotel": "hotels", "budget eats": "budget eats", "family": "family favourites",
}


def gen_ranking_list(world, rng):
    city = rng.choice(world.cities)
    if rng.random() < 0.35:
        region, keyword = rng.choice(city.districts).name, "must-eat"
        where = f"{region} in {city.name}"
    else:
        region, keyword = city.name, rng.choice(list(LIST_TOPICS))
        where = city.name
    lists = search.search_ranking_lists(world, keyword, region, max_lists=5, max_items=3)
    if not lists:
        return None
    items = lists[0][1]
    topic = LIST_TOPICS[keyword]
    params = {"region": region, "city": city.name, "list_query": keyword}
    if len(items) >= 3 and rng.random() < 0.4:
        params["top_n"] = 3
        text = rng.choice([f"What are the top 3 {topic} in {where} according to the ranking lists?",
                           f"List the top three on the {topic} ranking for {where}, in order."])
        gt = {"kind": "places_ordered", "answer": items[:3]}
    else:
        params["top_n"] = 1
        text = rng.choice([f"What's number one on the {topic} list for {where}?",
                           f"Which place tops the {topic} ranking in {where}?",
                           f"According to the curated lists, what's the best of the {topic} in {where}?"])
        gt = {"kind": "place_best", "answer": items[0]}
    gt.update({"tools": ["map_search_ranking_list"], "max_calls": 3})
    return make_query(world, "ranking_list", text, city.name, params, gt, difficulty_from(1, 1))


# ---------------------------------------------------------------- opening hours today

HOURS_CATEGORIES = ("restaurant", "cafe", "museum", "library", "bakery", "bookstore", "bar",
                    "shopping_mall", "attraction", "supermarket", "gym", "cinema", "pharmacy")


def gen_place_hours(world, rng):
    city = rng.choice(world.cities).name
    poi = pick_anchor(world, rng, city, HOURS_CATEGORIES)
    if poi is None:
        return None
    today = datetime.fromisoformat(world.today).weekday()
    intervals = poi.hours[today]
    times = [t for interval in intervals for t in interval]
    if not intervals or "24:00" in times or "00:00" in times:
        return None  # closed today, overnight or 24h: no clock times to check
    ask_price = poi.avg_price > 0 and rng.random() < 0.4
    extra = " And roughly how much does it cost per person?" if ask_price else ""
    text = rng.choice([f"When is {poi.name} in {city} open today?",
                       f"What are today's opening hours for {poi.name} ({city})?",
                       f"Is {poi.name} in {city} open today? From when until when?"]) + extra
    params = {"name": poi.name, "city": city, "ask_price": ask_price}
    gt = {"kind": "facts", "require_times": times, "require_text": [poi.name],
          "tools": ["map_search_places"], "max_calls": 3}
    if ask_price:
        gt["require_numbers"] = [[poi.avg_price, 0]]
    return make_query(world, "place_hours", text, city, params, gt, difficulty_from(1, 1 + ask_price))


# ---------------------------------------------------------------- meeting point

MEET_CATEGORIES = ["cafe", "restaurant", "bar", "park", "shopping_mall", "cinema", "bakery", "bookstore"]
SORT_PHRASES = {
    "balanced": ["that's fair for everyone", "that's close and fair for all of us"],
    "min_max_distance": ["so that nobody has to travel too far", "minimising the longest trip"],
    "total_distance": ["so our total travel is as small as possible", "minimising our combined travel"],
}


def gen_meeting_point(world, rng):
    city = rng.choice(world.cities).name
    n = rng.choice([2, 3, 3])
    origins = []
    for _ in range(n):
        poi = pick_anchor(world, rng, city, ANCHOR_CATEGORIES)
        if poi is None or poi in origins:
            return None
        origins.append(poi)
    pairs = [(a, b) for i, a in enumerate(origins) for b in origins[i + 1:]]
    if not all(2.0 <= haversine_km(a.latlng, b.latlng) <= 10.0 for a, b in pairs):
        return None
    category = rng.choice(MEET_CATEGORIES)
    if any(o.category == category for o in origins):
        return None  # one of us already being at the answer makes a poor question
    min_rating = rng.choice([4.0, 4.3]) if rng.random() < 0.5 else None
    sort_by = rng.choices(list(SORT_PHRASES), [0.6, 0.2, 0.2])[0]
    query = category_word(category)
    hits, _ = search.search_central_places(world, query, [o.latlng for o in origins], 10000, sort_by,
                                           min_rating, limit=ALL)
    if len(hits) < 2 or round(hits[1][2], 2) - round(hits[0][2], 2) < 0.02:
        return None
    people = ["I'm at", "my friend is at", "my sister is at"][:n]
    where = ", ".join(f"{who} {o.name}" for who, o in zip(people, origins))
    rating = f" rated at least {min_rating}" if min_rating else ""
    how = rng.choice(SORT_PHRASES[sort_by])
    text = rng.choice([
        f"We're meeting up in {city}: {where}. Suggest a {query}{rating} {how}.",
        f"In {city}, {where}. Which {query}{rating} should we meet at, {how}?",
    ])
    params = {"city": city, "origins": [o.name for o in origins], "category": category,
              "search_query": query, "min_rating": min_rating, "sort_by": sort_by}
    gt = {"kind": "place_best", "answer": hits[0][0].name,
          "tools": ["map_search_places", "map_search_central_places"], "max_calls": n + 3}
    constraints = 2 + (min_rating is not None) + (sort_by != "balanced")
    return make_query(world, "meeting_point", text, city, params, gt, difficulty_from(n + 1, constraints))

