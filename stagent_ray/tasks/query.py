"""The Query record and the small helpers every query family shares (phrasing of dates
and times, picking places the tools can find, difficulty labels)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import date

from stagent_ray.tasks.taxonomy import intent_of
from stagent_ray.world import search

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


@dataclass
class Query:
    """One user request with what produced it and its answer.

    `params` are the structured slots behind `text` (an oracle may read them);
    `ground_truth` is the answer in the form `reward.verify` checks (an oracle never reads
    it). `world_seed` names the world the ground truth was computed in.
    """
    query_id: str
    family: str
    intent: dict          # {"level1": ..., "level2": ...}
    difficulty: int       # -1 unexecutable, 0 no tool needed, 1..5
    text: str
    city: str
    params: dict
    ground_truth: dict
    world_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Query":
        d = dict(d)
        for key in ("intent", "params", "ground_truth"):
            if isinstance(d.get(key), str):
                d[key] = json.loads(d[key])
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_row(self) -> dict:
        """Flat form for Parquet: nested dicts become JSON strings (their keys vary by
        family, which Arrow struct columns cannot hold); `from_dict` reads it back."""
        row = asdict(self)
        for key in ("intent", "params", "ground_truth"):
            row[key] = json.dumps(row[key], ensure_ascii=False, sort_keys=True)
        return row


# ---------------------------------------------------------------- what makes two queries the same

# params that name a place, an anchor or a district (a city name is not an entity: the
# entity split asks in the pool's cities)
ENTITY_FIELDS = ("anchor", "name", "origins", "origin", "destination", "stops", "start_place",
                 "entity", "location", "region")
ROUTE_FAMILIES = ("route_stop", "mode_choice", "drive_time", "intercity_trip")


def _family_and_params(query) -> tuple[str, dict]:
    """Of a Query or its Parquet row (params as JSON text)."""
    if isinstance(query, Query):
        return query.family, query.params
    params = query["params"]
    return query["family"], json.loads(params) if isinstance(params, str) else params


def answer_key(query) -> str:
    """The family and the answer-relevant slots (params): two queries with the same key ask
    for the same tool calls and the same answer, however they are worded."""
    family, params = _family_and_params(query)
    return f"{family}|{json.dumps(params, sort_keys=True, ensure_ascii=False)}"


def named_entities(query, city_names) -> set[str]:
    """The places, anchors and districts a query names, and its route (origin → destination,
    for the route families: intercity trips name only cities, so their route is what they
    hold out)."""
    family, params = _family_and_params(query)
    names = set()
    for key in ENTITY_FIELDS:
        value = params.get(key)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v and v not in city_names:
                names.add(v)
    if family in ROUTE_FAMILIES and params.get("origin") and params.get("destination"):
        names.add(f"route:{params['origin']} -> {params['destination']}")
    return names


def make_query_id(family: str, text: str, world_seed: int) -> str:
    return hashlib.sha1(f"{family}|{text}|{world_seed}".encode("utf-8")).hexdigest()[:16]


def make_query(world, family: str, text: str, city: str, params: dict, ground_truth: dict,
               difficulty: int) -> Query:
    return Query(make_query_id(family, text, world.seed), family, intent_of(family), difficulty,
                 text, city, params, ground_truth, world.seed)


def difficulty_from(tool_calls: int, constraints: int) -> int:
    """1..5 from the depth of the tool chain plus how many constraints must hold at once."""
    return max(1, min(5, (tool_calls + constraints + 1) // 2))


# ---------------------------------------------------------------- phrasing

def day_phrase(iso: str, rng) -> str:
    """A date as people write it; every form names month and day (the verifier parses all)."""
    d = date.fromisoformat(iso)
    return rng.choice([iso, f"{WEEKDAYS[d.weekday()]}, {MONTHS[d.month - 1]} {d.day}",
                       f"{WEEKDAYS[d.weekday()]} ({iso})", f"{MONTHS[d.month - 1]} {d.day}"])


def time_phrase(hhmm: str, rng) -> str:
    """"20:30" or "8:30 pm"."""
    h, m = int(hhmm[:2]), int(hhmm[3:])
    if rng.random() < 0.5:
        return hhmm
    suffix = "am" if h < 12 else "pm"
    h12 = h % 12 or 12
    return f"{h12} {suffix}" if m == 0 else f"{h12}:{m:02d} {suffix}"


def hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def category_word(category: str) -> str:
    """How a user (and the oracle's search query) names a category."""
    return {"charging_station": "charging station", "gas_station": "gas station",
            "shopping_mall": "shopping mall", "parking_lot": "parking lot",
            "train_station": "railway station"}.get(category, category)


def tag_words(tag: str) -> str:
    return tag.replace("_", " ")


# ---------------------------------------------------------------- places the tools can find

def findable(world, poi) -> bool:
    """Whether searching the POI's own name in its city lists it in the top 10.

    Families use such POIs as anchors (origins, hotels, stops): the oracle locates them
    that way, and a name like "Garden Tower" (an attraction whose name says park) would
    not come back.
    """
    seen = world.cache.setdefault("tasks.findable", {})
    if poi.poi_id not in seen:
        hits, _ = search.search_places(world, poi.name, region=poi.city, limit=10)
        seen[poi.poi_id] = any(p.poi_id == poi.poi_id for p, _ in hits)
    return seen[poi.poi_id]


def pick_anchor(world, rng, city: str, categories: tuple[str, ...]):
    """A findable POI of one of `categories` in `city`; None if a few draws find none."""
    pool = [p for p in world.pois_by_city[city] if p.category in categories]
    for _ in range(20):
        if not pool:
            return None
        poi = rng.choice(pool)
        if findable(world, poi):
            return poi
    return None


ANCHOR_CATEGORIES = ("hotel", "attraction", "shopping_mall", "museum", "train_station", "park",
                     "library", "cinema")
