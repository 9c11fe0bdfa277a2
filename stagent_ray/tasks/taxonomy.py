"""The intent taxonomy: five level-1 categories, their level-2 intents, and which query
family lands where.

The STAgent report's taxonomy has five level-1 nodes (Rules & Policies, Discovery,
Planning & Decision, Dynamic Information, Application Interaction). We replace
"Application Interaction" (phone/app control, which no tool here serves) with
"Out of scope", the home of the irrelevance set: requests that need no tool (difficulty 0)
and requests the tools cannot serve (difficulty -1, answered with `[Unsolved]`).

Each level-2 intent also says which rubric weighting its task type uses
(planning-heavy, fidelity-heavy or presentation-heavy; see `reward/rubric.py`).
"""

from __future__ import annotations

DISCOVERY = "Discovery"
PLANNING = "Planning & Decision"
DYNAMIC = "Dynamic Information"
POLICY = "Rules & Policies"
OUT_OF_SCOPE = "Out of scope"

LEVEL1 = [DISCOVERY, PLANNING, DYNAMIC, POLICY, OUT_OF_SCOPE]

# level-1 -> level-2 -> task type (which rubric dimension weighs most)
TAXONOMY: dict[str, dict[str, str]] = {
    DISCOVERY: {
        "constrained_poi_search": "retrieval",   # category + distance + rating/price + open
        "nearest_poi": "retrieval",
        "ranking_list": "retrieval",
        "poi_attribute": "retrieval",             # opening hours, price of one named place
    },
    PLANNING: {
        "meeting_point": "planning",
        "route_stop": "planning",                 # a stop along a route (charging, fuel)
        "mode_choice": "planning",                # fastest / cheapest way between places
        "itinerary": "planning",                  # multi-stop day plan with time windows
        "intercity_trip": "planning",             # flight or train under deadline / budget
        "weather_aware_plan": "planning",         # pick the day for an outdoor plan
    },
    DYNAMIC: {
        "current_conditions": "retrieval",        # live weather, AQI
        "forecast": "retrieval",
        "travel_time": "retrieval",
    },
    POLICY: {
        "travel_policy": "consultation",          # baggage, refunds, city rules via web search
        "local_fact": "consultation",
    },
    OUT_OF_SCOPE: {
        "no_tool_needed": "consultation",         # unit conversion, general knowledge
        "unsupported_action": "consultation",     # bookings, payments, app control
    },
}

# family name -> (level1, level2). Every family in tasks.families.FAMILIES must be here.
FAMILY_INTENT: dict[str, tuple[str, str]] = {
    "constrained_search": (DISCOVERY, "constrained_poi_search"),
    "nearest_open": (DISCOVERY, "nearest_poi"),
    "ranking_list": (DISCOVERY, "ranking_list"),
    "place_hours": (DISCOVERY, "poi_attribute"),
    "meeting_point": (PLANNING, "meeting_point"),
    "route_stop": (PLANNING, "route_stop"),
    "mode_choice": (PLANNING, "mode_choice"),
    "itinerary": (PLANNING, "itinerary"),
    "intercity_trip": (PLANNING, "intercity_trip"),
    "weather_day": (PLANNING, "weather_aware_plan"),
    "current_weather": (DYNAMIC, "current_conditions"),
    "forecast_check": (DYNAMIC, "forecast"),
    "drive_time": (DYNAMIC, "travel_time"),
    "policy_lookup": (POLICY, "travel_policy"),
    "unsolvable": (OUT_OF_SCOPE, "unsupported_action"),
    "no_tool": (OUT_OF_SCOPE, "no_tool_needed"),
}


def intent_of(family: str) -> dict[str, str]:
    """The {"level1", "level2"} label of a family (what Query.intent holds)."""
    level1, level2 = FAMILY_INTENT[family]
    return {"level1": level1, "level2": level2}


def task_type(level1: str, level2: str) -> str:
    """"planning", "retrieval" or "consultation": selects the rubric weights."""
    return TAXONOMY[level1][level2]


def check_taxonomy() -> None:
    """Every family points at a real (level1, level2) node."""
    for family, (level1, level2) in FAMILY_INTENT.items():
        if level1 not in TAXONOMY or level2 not in TAXONOMY[level1]:
            raise ValueError(f"family {family!r} maps to unknown intent {level1}/{level2}")
