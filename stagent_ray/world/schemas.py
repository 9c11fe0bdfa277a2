"""The ten tool schemas (OpenAI function format) and the argument validator.

Validation here is world-independent (types, ranges, enums, formats, coordinate ranges), so the
executor can run it before any backend. World-dependent checks (date window, known regions)
happen in `tools.py`. Errors are {"error": {"type": <kind>, "message": <names the argument>}}.
"""

from __future__ import annotations

import copy
import json

from stagent_ray.world.geo import MODES, PREFERENCES, parse_date, parse_datetime, parse_latlng
from stagent_ray.world.search import CENTRAL_SORT_BY, SORT_BY

LATLNG_PATTERN = r"^\s*-?\d+(\.\d+)?\s*,\s*-?\d+(\.\d+)?\s*$"
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
DATETIME_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$"

ERROR_TYPES = ("unknown_tool", "invalid_arguments", "missing_argument", "unexpected_argument", "invalid_type",
               "invalid_value", "invalid_coordinates", "invalid_date", "date_out_of_range", "unknown_location",
               "timeout", "internal_error", "replay_miss", "backend_error")


def tool_error(type: str, message: str) -> dict:
    return {"error": {"type": type, "message": message}}


def _latlng(description: str) -> dict:
    return {"type": "string", "pattern": LATLNG_PATTERN, "description": description + " as 'lat,lng'"}


def _text(description: str) -> dict:
    return {"type": "string", "minLength": 1, "maxLength": 200, "description": description}


def _int(lo: int, hi: int, default: int | None, description: str) -> dict:
    spec = {"type": "integer", "minimum": lo, "maximum": hi, "description": description}
    if default is not None:
        spec["default"] = default
    return spec


_DATE = {"type": "string", "pattern": DATE_PATTERN, "description": "date YYYY-MM-DD, today .. today+15"}
_DATETIME = {"type": "string", "pattern": DATETIME_PATTERN, "description": "local time YYYY-MM-DDTHH:MM"}
_QUERY = _text("keyword or category, e.g. 'cafe', 'quiet cafe', 'fast charging', 'hotpot'")
_PRICE_MIN = {"type": "number", "minimum": 0, "description": "minimum average price per person, CNY"}
_PRICE_MAX = {"type": "number", "minimum": 0, "description": "maximum average price per person, CNY"}
_MIN_RATING = {"type": "number", "minimum": 0, "maximum": 5, "description": "minimum rating (0-5)"}
_LIMIT = _int(1, 50, 10, "maximum number of results")


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required,
                       "additionalProperties": False}}}


SCHEMAS = [
    _tool("map_search_places",
          "Search places (POIs) by keyword or category near a point (center + radius) and/or in a city or "
          "district (region). Returns name, category, district, location, rating, average price, distance, "
          "that day's opening hours and tags.",
          {"query": _QUERY, "center": _latlng("search centre"),
           "radius": _int(100, 20000, 5000, "search radius in metres around center"),
           "region": _text("city or district name"),
           "sort_by": {"type": "string", "enum": list(SORT_BY), "default": "weight",
                       "description": "weight (relevance), distance, rating:d (high first), price:a, price:d"},
           "min_rating": _MIN_RATING, "price_min": _PRICE_MIN, "price_max": _PRICE_MAX,
           "open_at": {**_DATETIME, "description": "only places open at this local time YYYY-MM-DDTHH:MM"},
           "limit": _LIMIT},
          ["query"]),
    _tool("map_compute_routes",
          "Travel distance and time between points by one or more modes, optionally through intermediate "
          "stops, leaving at departure_time or arriving by arrival_time (then the latest departure is given).",
          {"origin": _latlng("start point"), "destination": _latlng("end point"),
           "intermediates": {"type": "array", "items": _latlng("stop"), "maxItems": 10,
                             "description": "stops visited in order between origin and destination"},
           "modes": {"type": "array", "items": {"type": "string", "enum": list(MODES)}, "minItems": 1,
                     "maxItems": 4, "default": ["driving"], "description": "travel modes to compare"},
           "departure_time": {**_DATETIME, "description": "leave at this local time (default: now)"},
           "arrival_time": {**_DATETIME, "description": "arrive by this local time (instead of departure_time)"},
           "traffic_aware": {"type": "boolean", "default": True, "description": "driving times follow traffic"},
           "preference": {"type": "string", "enum": list(PREFERENCES), "description": "driving route preference"}},
          ["origin", "destination"]),
    _tool("map_search_along_route",
          "Find places along the route from origin to destination, within buffer_radius metres of it, "
          "ordered by distance from the origin along the route.",
          {"query": _QUERY, "origin": _latlng("start point"), "destination": _latlng("end point"),
           "transport_mode": {"type": "string", "enum": ["driving", "walking"], "default": "driving",
                              "description": "how the route is travelled"},
           "buffer_radius": _int(50, 5000, None, "metres either side of the route (default 2000 driving, 500 walking)"),
           "limit": _LIMIT},
          ["query", "origin", "destination"]),
    _tool("map_search_central_places",
          "Find meeting places central to two or more origins (within radius of their centroid), with each "
          "origin's straight-line distance.",
          {"query": _QUERY,
           "origins": {"type": "array", "items": _latlng("origin"), "minItems": 2, "maxItems": 10,
                       "description": "two or more starting points"},
           "radius": _int(100, 50000, 10000, "metres around the origins' centroid"),
           "sort_by": {"type": "string", "enum": list(CENTRAL_SORT_BY), "default": "balanced",
                       "description": "balanced (close and fair), min_max_distance, total_distance"},
           "min_rating": _MIN_RATING, "price_min": _PRICE_MIN, "price_max": _PRICE_MAX, "limit": _LIMIT},
          ["query", "origins"]),
    _tool("map_search_ranking_list",
          "Curated ranking lists for a city or district (e.g. must-eat restaurants, best coffee, top museums).",
          {"query": _text("what the list is about, e.g. 'must-eat', 'coffee', 'museum'"),
           "region": _text("city or district name"),
           "max_lists": _int(1, 10, 5, "maximum number of lists"),
           "max_items": _int(1, 20, 3, "maximum items per list")},
          ["query", "region"]),
    _tool("travel_search_flights",
          "Flights between two cities on a date, or over date .. date+days.",
          {"origin": _text("departure city"), "destination": _text("arrival city"), "date": _DATE,
           "days": _int(0, 15, 0, "also search this many following days")},
          ["origin", "destination", "date"]),
    _tool("travel_search_trains",
          "Train timetables and fares between two cities on a date, or over date .. date+days.",
          {"origin": _text("departure city"), "destination": _text("arrival city"), "date": _DATE,
           "days": _int(0, 15, 0, "also search this many following days")},
          ["origin", "destination", "date"]),
    _tool("weather_current_conditions",
          "Current weather and air quality (AQI) for a city or district.",
          {"location": _text("city or district name")},
          ["location"]),
    _tool("weather_forecast_days",
          "Daily weather forecast for a city or district for `days` days starting at date.",
          {"location": _text("city or district name"), "date": _DATE,
           "days": _int(1, 15, 3, "number of days")},
          ["location", "date"]),
    _tool("web_search",
          "Search web pages (ticket rules, opening policies, events, refund policies, travel tips).",
          {"query": _text("search words")},
          ["query"]),
]
SCHEMA_BY_NAME = {s["function"]["name"]: s for s in SCHEMAS}
TOOL_NAMES = tuple(SCHEMA_BY_NAME)


def _check_value(path: str, value, spec: dict):
    """Return (normalised value, None) or (None, error dict) for one argument value."""
    if not isinstance(spec, dict):  # `true` / foreign schemas (MCP servers): accept as is
        return value, None
    kind = spec.get("type")
    if kind == "string":
        if not isinstance(value, str):
            return None, tool_error("invalid_type", f"argument '{path}' must be a string, got {type(value).__name__}")
        if "enum" in spec and value not in spec["enum"]:
            return None, tool_error("invalid_value", f"argument '{path}' must be one of {spec['enum']}, got {value!r}")
        if len(value.strip()) < spec.get("minLength", 0):
            return None, tool_error("invalid_value", f"argument '{path}' must not be empty")
        if len(value) > spec.get("maxLength", 10_000):
            return None, tool_error("invalid_value", f"argument '{path}' is longer than {spec['maxLength']} characters")
        pattern = spec.get("pattern")
        try:
            if pattern == LATLNG_PATTERN:
                parse_latlng(value)
            elif pattern == DATE_PATTERN:
                parse_date(value)
            elif pattern == DATETIME_PATTERN:
                parse_datetime(value)
        except ValueError as e:
            kind_ = "invalid_coordinates" if pattern == LATLNG_PATTERN else "invalid_date"
            return None, tool_error(kind_, f"argument '{path}': {e}")
        return value, None
    if kind in ("integer", "number"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if kind == "integer" and ok and isinstance(value, float):
            ok = value.is_integer()
            value = int(value) if ok else value
        if not ok:
            wanted = "an integer" if kind == "integer" else "a number"
            return None, tool_error("invalid_type", f"argument '{path}' must be {wanted}, got {json.dumps(value)}")
        too_low = "minimum" in spec and value < spec["minimum"]
        too_high = "maximum" in spec and value > spec["maximum"]
        if value != value or too_low or too_high:  # value != value: NaN
            lo, hi = spec.get("minimum", "-inf"), spec.get("maximum", "inf")
            return None, tool_error("invalid_value", f"argument '{path}' must be between {lo} and {hi}, got {value}")
        return value, None
    if kind == "boolean":
        if not isinstance(value, bool):
            return None, tool_error("invalid_type", f"argument '{path}' must be true or false, got {json.dumps(value)}")
        return value, None
    if kind == "array":
        if not isinstance(value, list):
            return None, tool_error("invalid_type", f"argument '{path}' must be an array, got {type(value).__name__}")
        if len(value) < spec.get("minItems", 0) or len(value) > spec.get("maxItems", 10_000):
            return None, tool_error("invalid_value", f"argument '{path}' must have {spec.get('minItems', 0)} to "
                                    f"{spec.get('maxItems', 'any number of')} items, got {len(value)}")
        out = []
        for i, item in enumerate(value):
            item, err = _check_value(f"{path}[{i}]", item, spec.get("items", {}))
            if err:
                return None, err
            out.append(item)
        return out, None
    return value, None  # a type this validator does not check (only in foreign schemas)


def validate_call(name, arguments, schema_by_name: dict | None = None) -> tuple[dict | None, dict | None]:
    """Check a call against its schema. Returns (normalised arguments, None) or (None, error dict).

    `arguments` may be a dict or a JSON string of one. Integral floats become ints.
    `schema_by_name` defaults to the ten built-in tools.
    """
    schema_by_name = SCHEMA_BY_NAME if schema_by_name is None else schema_by_name
    if not isinstance(name, str) or name not in schema_by_name:
        return None, tool_error("unknown_tool", f"unknown tool {name!r}; available tools: {', '.join(schema_by_name)}")
    if arguments is None:
        arguments = {}
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as e:
            return None, tool_error("invalid_arguments", f"arguments for {name} are not valid JSON: {e}")
    if not isinstance(arguments, dict):
        return None, tool_error("invalid_arguments", f"arguments for {name} must be a JSON object")
    params = schema_by_name[name]["function"]["parameters"]
    props = params.get("properties", {})
    for key in arguments:
        if key not in props and params.get("additionalProperties", True) is False:
            return None, tool_error("unexpected_argument", f"unexpected argument {key!r} for {name}; allowed: "
                                    + ", ".join(props))
    for key in params.get("required", []):
        if key not in arguments:
            return None, tool_error("missing_argument", f"missing required argument '{key}' for {name}")
    clean = {}
    for key, value in arguments.items():
        clean[key], err = _check_value(key, value, props.get(key, {}))
        if err:
            return None, err
    return clean, None


def canonical_json(obj) -> str:
    """Stable JSON used for cache and replay keys."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ToolBackend:
    """Answers tool calls. `call` must return a JSON-serialisable dict and should not raise.
    (Here, beside the schemas, so backends.py and mcp_client.py both build on it.)"""

    def schemas(self) -> list[dict]:
        return copy.deepcopy(SCHEMAS)

    def call(self, name: str, arguments: dict) -> dict:
        raise NotImplementedError
