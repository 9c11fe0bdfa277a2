"""The query families and `generate_queries`.

A family is a function `gen(world, rng) -> Query | None` that draws slots from the world,
writes the request in one of several phrasings and computes the answer from the world
with the tools' own semantics. It returns None when a draw would make a poor question
(no answer, or no clear best); `generate_queries` simply draws again.
"""

from __future__ import annotations

import random

from stagent_ray.tasks.families_info import (gen_current_weather, gen_forecast_check, gen_no_tool,
                                             gen_policy_lookup, gen_unsolvable, gen_weather_day)
from stagent_ray.tasks.families_places import (gen_constrained_search, gen_meeting_point, gen_nearest_open,
                                               gen_place_hours, gen_ranking_list)
from stagent_ray.tasks.families_routes import (gen_drive_time, gen_intercity_trip, gen_itinerary,
                                               gen_mode_choice, gen_route_stop)
from stagent_ray.tasks.query import Query

FAMILIES = {
    "constrained_search": gen_constrained_search,
    "nearest_open": gen_nearest_open,
    "ranking_list": gen_ranking_list,
    "place_hours": gen_place_hours,
    "meeting_point": gen_meeting_point,
    "route_stop": gen_route_stop,
    "mode_choice": gen_mode_choice,
    "itinerary": gen_itinerary,
    "intercity_trip": gen_intercity_trip,
    "drive_time": gen_drive_time,
    "weather_day": gen_weather_day,
    "current_weather": gen_current_weather,
    "forecast_check": gen_forecast_check,
    "policy_lookup": gen_policy_lookup,
    "unsolvable": gen_unsolvable,
    "no_tool": gen_no_tool,
}

MAX_DRAWS_PER_QUERY = 200


def generate_queries(world, family: str, n: int, seed: int = 0) -> list[Query]:
    """`n` distinct queries of one family, deterministic for (world, family, n, seed).

    Small families (no_tool, current_weather) have fewer distinct texts than a large n
    asks for; they return what they have once draws stop finding new ones.
    """
    gen = FAMILIES[family]
    rng = random.Random(f"{family}:{seed}")
    out: dict[str, Query] = {}
    misses = 0
    while len(out) < n and misses < MAX_DRAWS_PER_QUERY:
        q = gen(world, rng)
        if q is None or q.query_id in out:
            misses += 1
            continue
        out[q.query_id] = q
        misses = 0
    return list(out.values())
