"""Geometry, opening hours and the travel-time model shared by the tools and by ground truth.

Everything here is a pure, deterministic function of its arguments, so query families can
compute the same numbers the tools report. Coordinates are (lat, lng) tuples of floats in
degrees; tools exchange them as "lat,lng" strings (see `parse_latlng` / `fmt_latlng`).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

EARTH_RADIUS_KM = 6371.0088

MODES = ("driving", "walking", "bicycling", "transit")
PREFERENCES = ("prefer_highways", "avoid_highways", "avoid_tolls", "prefer_main_roads", "avoid_highways+avoid_tolls")

# road distance = straight-line distance x detour factor (roads are never straight)
DETOUR = {"driving": 1.30, "walking": 1.20, "bicycling": 1.25, "transit": 1.35}

# driving: the first URBAN_KM of a leg run at city speed (slowed by traffic), the rest on highways
URBAN_KM = 12.0
URBAN_KMH = 30.0
HIGHWAY_KMH = {"default": 100.0, "prefer_main_roads": 90.0, "avoid_highways": 60.0}
TOLL_CNY_PER_HIGHWAY_KM = 0.45
PARKING_MIN = 2.0
WALK_KMH = 4.8
BIKE_KMH = 15.0
TRANSIT_KMH = 22.0
TRANSIT_MAX_KM = 60.0  # straight-line; longer trips need a train or a flight

# multiplier on urban driving time by hour of day (index = hour); weekends have milder peaks
TRAFFIC_WEEKDAY = (0.8, 0.8, 0.8, 0.8, 0.8, 0.85, 1.0, 1.5, 1.7, 1.3, 1.0, 1.0,
                   1.1, 1.0, 1.0, 1.0, 1.1, 1.5, 1.7, 1.4, 1.1, 1.0, 0.9, 0.85)
TRAFFIC_WEEKEND = (0.8, 0.8, 0.8, 0.8, 0.8, 0.8, 0.85, 0.9, 1.0, 1.1, 1.2, 1.2,
                   1.2, 1.1, 1.1, 1.1, 1.2, 1.3, 1.3, 1.2, 1.1, 1.0, 0.9, 0.85)
# minutes of walking to/from stops plus waiting, by hour of departure; None = no service
TRANSIT_OVERHEAD_MIN = (None, None, None, None, None, 18, 14, 10, 10, 10, 10, 10,
                        10, 10, 10, 10, 10, 10, 10, 10, 12, 14, 16, 18)

_LATLNG_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*$")
_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


# ---------------------------------------------------------------- coordinates

def haversine_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in km between two (lat, lng) points."""
    lat1, lng1 = math.radians(a[0]), math.radians(a[1])
    lat2, lng2 = math.radians(b[0]), math.radians(b[1])
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lng2 - lng1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def parse_latlng(text: str) -> tuple[float, float]:
    """"31.2304,121.4737" -> (31.2304, 121.4737). Raises ValueError on bad format or range."""
    m = _LATLNG_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"expected 'lat,lng' (e.g. '31.23040,121.47370'), got {text!r}")
    lat, lng = float(m.group(1)), float(m.group(2))
    if not (-90.0 <= lat <= 90.0) or not (-180.0 <= lng <= 180.0):
        raise ValueError(f"coordinates out of range (lat -90..90, lng -180..180): {text!r}")
    return lat, lng


def fmt_latlng(p: tuple[float, float]) -> str:
    """(31.2304, 121.4737) -> "31.23040,121.47370" (5 decimals, ~1 m)."""
    return f"{p[0]:.5f},{p[1]:.5f}"


def project_on_segment(p, a, b) -> tuple[float, float]:
    """Where point p falls relative to the straight segment a->b.

    Returns (along_km, offset_km): distance from a to p's projection (clamped to the segment)
    and the perpendicular distance from p to the segment. Uses a local equirectangular
    projection centred on the segment midpoint, accurate to well under 1% at these scales.
    """
    lat0 = math.radians((a[0] + b[0]) / 2)
    kx = math.pi / 180 * EARTH_RADIUS_KM * math.cos(lat0)  # km per degree of longitude
    ky = math.pi / 180 * EARTH_RADIUS_KM  # km per degree of latitude
    bx, by = (b[1] - a[1]) * kx, (b[0] - a[0]) * ky
    px, py = (p[1] - a[1]) * kx, (p[0] - a[0]) * ky
    seg2 = bx * bx + by * by
    t = 0.0 if seg2 == 0 else max(0.0, min(1.0, (px * bx + py * by) / seg2))
    cx, cy = t * bx, t * by
    return t * math.sqrt(seg2), math.hypot(px - cx, py - cy)


# ---------------------------------------------------------------- dates and hours

def parse_date(text: str):
    """"2026-06-01" -> datetime.date. Raises ValueError."""
    if not isinstance(text, str) or not _DATE_RE.match(text):
        raise ValueError(f"expected a date 'YYYY-MM-DD', got {text!r}")
    return datetime.strptime(text, "%Y-%m-%d").date()


def parse_datetime(text: str) -> datetime:
    """"2026-06-01T08:30" -> naive datetime (world-local time). Seconds are not accepted."""
    if not isinstance(text, str) or not _DATETIME_RE.match(text):
        raise ValueError(f"expected a time 'YYYY-MM-DDTHH:MM', got {text!r}")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M")


def fmt_datetime(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M")


def hhmm_to_min(hhmm: str) -> int:
    """"09:30" -> 570; "24:00" -> 1440."""
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def is_open(poi, dt: datetime) -> bool:
    """Whether `poi` is open at `dt`: some [open, close) interval of that weekday contains it.

    `poi.hours[weekday]` (0 = Monday) lists [open, close] "HH:MM" intervals within the day;
    "24:00" closes at midnight. A venue open past midnight lists the early-morning part on
    the next weekday, e.g. a bar: [["00:00", "02:00"], ["18:00", "24:00"]].
    """
    minute = dt.hour * 60 + dt.minute
    return any(hhmm_to_min(o) <= minute < hhmm_to_min(c) for o, c in poi.hours[dt.weekday()])


def hours_text(intervals: list) -> str:
    """Human form of one weekday's intervals: "closed", "24h" or "10:00-14:00, 17:00-22:00"."""
    if not intervals:
        return "closed"
    if len(intervals) == 1 and intervals[0] == ["00:00", "24:00"]:
        return "24h"
    return ", ".join(f"{o}-{c}" for o, c in intervals)


# ---------------------------------------------------------------- travel-time model

def traffic_factor(dt: datetime) -> float:
    """Multiplier on urban driving time for a departure at `dt` (weekday vs weekend peaks)."""
    table = TRAFFIC_WEEKEND if dt.weekday() >= 5 else TRAFFIC_WEEKDAY
    return table[dt.hour]


def route_leg(a, b, mode: str, depart_dt: datetime, preference: str | None = None,
              traffic_aware: bool = True) -> dict | None:
    """One leg a->b by `mode`, departing at `depart_dt`.

    Returns {"distance_km": float (unrounded), "duration_min": int (>= 1), "toll_cny": int,
    "fare_cny": int} or None when the mode has no service (transit over TRANSIT_MAX_KM
    straight-line, or departing 00:00-04:59).
      driving:   road = straight x 1.30; first 12 km at 30 km/h x traffic_factor (if traffic_aware),
                 the rest at 100 km/h (90 prefer_main_roads, 60 avoid_highways*), +2 min parking;
                 toll 0.45 CNY per highway km unless avoiding tolls/highways.
      walking:   road = straight x 1.20 at 4.8 km/h.
      bicycling: road = straight x 1.25 at 15 km/h.
      transit:   road = straight x 1.35 at 22 km/h + TRANSIT_OVERHEAD_MIN[hour]; fare 2 + 0.2/km.
    Durations are rounded to whole minutes here, so chained legs stay integral.
    """
    straight = haversine_km(a, b)
    road = straight * DETOUR[mode]
    toll = fare = 0
    if mode == "driving":
        urban = min(road, URBAN_KM)
        highway = road - urban
        factor = traffic_factor(depart_dt) if traffic_aware else 1.0
        if preference in ("avoid_highways", "avoid_highways+avoid_tolls"):
            hw_speed = HIGHWAY_KMH["avoid_highways"]
        elif preference == "prefer_main_roads":
            hw_speed = HIGHWAY_KMH["prefer_main_roads"]
        else:
            hw_speed = HIGHWAY_KMH["default"]
        minutes = urban / URBAN_KMH * 60 * factor + highway / hw_speed * 60 + PARKING_MIN
        if preference not in ("avoid_tolls", "avoid_highways", "avoid_highways+avoid_tolls"):
            toll = round(highway * TOLL_CNY_PER_HIGHWAY_KM)
    elif mode == "walking":
        minutes = road / WALK_KMH * 60
    elif mode == "bicycling":
        minutes = road / BIKE_KMH * 60
    elif mode == "transit":
        overhead = TRANSIT_OVERHEAD_MIN[depart_dt.hour]
        if overhead is None or straight > TRANSIT_MAX_KM:
            return None
        minutes = overhead + road / TRANSIT_KMH * 60
        fare = round(2 + 0.2 * road)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return {"distance_km": road, "duration_min": max(1, round(minutes)), "toll_cny": toll, "fare_cny": fare}


def compute_route(points: list, mode: str, depart_dt: datetime, preference: str | None = None,
                  traffic_aware: bool = True) -> dict | None:
    """Route through `points` (origin, intermediates..., destination) by one mode.

    Each leg departs when the previous one arrives (no dwell time). Returns
    {"distance_km": float rounded to 0.1, "duration_min": int, "toll_cny", "fare_cny",
     "departure": datetime, "arrival": datetime, "legs": [{"distance_km", "duration_min"}...]}
    or None if any leg has no service in this mode.
    """
    t = depart_dt
    legs, dist, toll, fare = [], 0.0, 0, 0
    for a, b in zip(points, points[1:]):
        leg = route_leg(a, b, mode, t, preference, traffic_aware)
        if leg is None:
            return None
        legs.append({"distance_km": round(leg["distance_km"], 1), "duration_min": leg["duration_min"]})
        dist += leg["distance_km"]
        toll += leg["toll_cny"]
        fare += leg["fare_cny"]
        t = t + timedelta(minutes=leg["duration_min"])
    return {"distance_km": round(dist, 1), "duration_min": int((t - depart_dt).total_seconds() // 60),
            "toll_cny": toll, "fare_cny": fare, "departure": depart_dt, "arrival": t, "legs": legs}


def latest_departure(points: list, mode: str, arrive_by: datetime, preference: str | None = None,
                     traffic_aware: bool = True) -> dict | None:
    """The route (as `compute_route`) with the latest whole-minute departure arriving <= arrive_by.

    Durations depend on the departure hour, so we estimate a departure and then scan minute by
    minute from 5 h after that estimate down to 5 h before it; the first fit is the latest.
    Returns None if the mode has no service or nothing fits the scan window.
    """
    guess_route = compute_route(points, mode, arrive_by, preference, traffic_aware)
    if guess_route is None:
        # transit may have no service at arrive_by's hour; estimate from mid-day instead
        guess_route = compute_route(points, mode, arrive_by.replace(hour=12, minute=0), preference, traffic_aware)
        if guess_route is None:
            return None
    estimate = arrive_by - timedelta(minutes=guess_route["duration_min"])
    for offset in range(300, -301, -1):
        dep = estimate + timedelta(minutes=offset)
        if dep >= arrive_by:
            continue
        route = compute_route(points, mode, dep, preference, traffic_aware)
        if route is not None and route["arrival"] <= arrive_by:
            return route
    return None
