"""Steps the oracle solvers share: one tool call with a retry on error, locating a named
place, the mistakes a noisy oracle makes, and how numbers are written in answers.

Solvers are generators: they `yield (thought, tool_name, arguments)` and receive the tool's
result dict back from `.send()`. The helpers here are sub-generators used with
`yield from`.
"""

from __future__ import annotations

from datetime import date

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def failed(result) -> bool:
    return not isinstance(result, dict) or "error" in result


def call(thought: str, tool: str, args: dict, correct_args: dict | None = None):
    """One tool call. When it comes back as an error and we know the right arguments
    (a noisy step broke them on purpose), retry once with those."""
    result = yield (thought, tool, args)
    if failed(result) and correct_args is not None and correct_args != args:
        message = result.get("error", {}).get("message", "") if isinstance(result, dict) else ""
        result = yield (f"That call failed ({message[:80]}). Retrying with corrected arguments.", tool,
                        correct_args)
    return result


def broken(args: dict) -> dict:
    """A realistic malformed version of `args` that the tool rejects (a made-up argument
    name, a date in the wrong format, swapped coordinates)."""
    out = dict(args)
    if "region" in out:
        out["city"] = out.pop("region")
    elif "location" in out:
        out["place"] = out.pop("location")
    elif "date" in out:
        out["date"] = out["date"].replace("-", "/")
    elif "origin" in out and "," in str(out["origin"]):
        lat, lng = out["origin"].split(",")
        out["origin"] = f"{lng},{lat}"  # lng first: latitude out of range
    elif "query" in out:
        out["keywords"] = out.pop("query")
    return out


def maybe_broken(args: dict, rng, noise: float) -> dict:
    """`args` as the oracle first writes them: broken with probability noise / 2."""
    return broken(args) if rng.random() < noise / 2 else args


def lookup(name: str, city: str, rng, noise: float):
    """Find a named place in a city; returns its result dict (with "location") or None."""
    args = {"query": name, "region": city}
    result = yield from call(f"Let me look up where {name} is.", "map_search_places",
                             maybe_broken(args, rng, noise), args)
    if failed(result):
        return None
    hit = next((r for r in result["results"] if r["name"].lower() == name.lower()), None)
    if hit is None:
        more = {**args, "limit": 50}
        result = yield ("It isn't in the first results; let me widen the search.", "map_search_places", more)
        if failed(result):
            return None
        hit = next((r for r in result["results"] if r["name"].lower() == name.lower()), None)
    return hit


def lookup_all(places: list[tuple[str, str]], rng, noise: float):
    """Look up each (name, city) in turn; returns (hits, None), or (None, the answer to give)
    at the first place that can't be found."""
    hits = []
    for name, city in places:
        hit = yield from lookup(name, city, rng, noise)
        if hit is None:
            return None, not_found(name, city)
        hits.append(hit)
    return hits, None


def not_found(name: str, city: str) -> str:
    return (f"I couldn't locate {name} in {city} with the map search, so I can't answer this reliably. "
            f"Could you check the name?")


def tool_trouble(result) -> str:
    message = result.get("error", {}).get("message", "unknown error") if isinstance(result, dict) else ""
    return f"The tool returned an error I couldn't work around ({message[:100]}), so I can't answer reliably."


# ---------------------------------------------------------------- writing facts

def price_text(avg_price: int, category: str) -> str:
    if avg_price == 0:
        return "free entry" if category in ("museum", "park", "attraction") else "no listed price"
    return f"about {avg_price} CNY per person"


def weekday_of(iso: str) -> str:
    return WEEKDAYS[date.fromisoformat(iso[:10]).weekday()]


def condition_text(condition: str) -> str:
    return condition.replace("_", " ")


def open_during(hours: str, hhmm: str) -> bool:
    """Whether an hours text as the tools print it ("09:00-17:00, 18:00-22:00", "24h",
    "closed") covers a clock time."""
    if hours == "24h":
        return True
    if hours == "closed":
        return False
    for span in hours.split(", "):
        start, end = span.split("-")
        if start <= hhmm < (end if end != "24:00" else "24:01"):
            return True
    return False


def number_text(value: float) -> str:
    """6.2137 -> "6.21", 90.0 -> "90"."""
    return f"{value:.2f}".rstrip("0").rstrip(".")
