"""Pull checkable facts out of text: times, dates, prices, distances, durations,
temperatures, percentages, flight/train numbers and place-like names.

Two sides use these. The answer side (`answer_facts`) lists what the final answer claims;
the evidence side (`Evidence`) indexes everything the user query and the tool outputs of
the trajectory contain. A claim is grounded when the evidence holds it, up to unit
conversion and the rounding a person would do when quoting it.

Everything here is regular expressions and set look-ups: the scorer runs on millions of
trajectories.
"""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field

from stagent_ray.world.generate import CATEGORIES, DISTRICT_SECOND

# ---------------------------------------------------------------- patterns

_NUM = r"(\d+(?:,\d{3})*(?:\.\d+)?)"
TIME_RE = re.compile(r"(?<![\d:.])([01]?\d|2[0-3]):([0-5]\d)(?::\d\d)?(?!\d)")
AMPM_RE = re.compile(r"\b(1[0-2]|0?[1-9])(?::([0-5]\d))?\s*([ap])\.?m\.?\b", re.IGNORECASE)
ISO_DATE_RE = re.compile(r"\b(20\d\d)-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])\b")
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august",
          "september", "october", "november", "december"]
# Month words must be capitalised: "may 10" in a sentence is not a date.
_MONTH_ALT = "|".join(m[:3].capitalize() + f"(?:{m[3:]})?" for m in MONTHS)
WORD_DATE_RE = re.compile(rf"\b({_MONTH_ALT})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?\b(?!:)")
WORD_DATE_DM_RE = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_ALT})\b")
MONEY_RE = re.compile(
    rf"(?:(?:¥|￥|\$|€|CNY|RMB|USD)\s?{_NUM})|(?:{_NUM}\s?(?:yuan|CNY|RMB|USD|dollars|euros?)\b)",
    re.IGNORECASE)
DISTANCE_RE = re.compile(rf"{_NUM}\s?(km|kilometers|kilometres|m|meters|metres|mi|miles)\b",
                         re.IGNORECASE)
DURATION_RE = re.compile(
    rf"(?:{_NUM}\s?(?:h|hr|hrs|hours?)\b(?:\s*(?:and\s+)?{_NUM}\s?(?:min|mins|minutes?)\b)?)"
    rf"|(?:{_NUM}\s?(?:min|mins|minutes?)\b)", re.IGNORECASE)
TEMP_RE = re.compile(rf"(-?{_NUM})\s?(?:°\s?C|℃|degrees?(?: C(?:elsius)?)?)(?![a-zA-Z])",
                     re.IGNORECASE)
PERCENT_RE = re.compile(rf"{_NUM}\s?%")
# Flight numbers: two letters/digits airline code + 3-4 digits (CA1234, MU5101, 3U8888).
# Train numbers: G/D/C/Z/T/K + 1-4 digits (G102, D3021).
FLIGHT_RE = re.compile(r"\b([A-Z][A-Z0-9]\d{3,4}|[A-Z]{2}\d{2,4})\b")
TRAIN_RE = re.compile(r"\b([GDCZTK]\d{1,4})\b")

# Capitalised runs of words: place-like names ("Jade Garden Hotpot", "Xuhui Art Museum").
_CAP_WORD = r"[A-Z][\w'’&-]*"
_LINK = r"(?:of|the|de|la|du|del|&)"
NAME_RE = re.compile(rf"\b{_CAP_WORD}(?:\s+(?:{_LINK}\s+)*{_CAP_WORD})+")
# Capitalised words that open sentences or name days/months/units, not places.
NAME_STOPWORDS = {
    "the", "a", "an", "i", "it", "its", "this", "that", "these", "those", "there", "here",
    "at", "in", "on", "to", "from", "for", "by", "with", "near", "try", "visit", "go",
    "head", "take", "book", "stay", "meet", "both", "either", "my", "your", "our", "you",
    "we", "they", "he", "she", "if", "when", "then", "and", "or", "but", "so", "also", "yes",
    "no", "not", "best", "top", "option", "options", "answer", "recommendation", "note",
    "monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
    "today", "tomorrow", "tonight", "am", "pm", "aqi", "pm2.5", "km", "cny", "rmb",
    "flight", "train", "walking", "driving", "transit", "bicycling", "cycling", "taxi",
    "metro", "bus", "unsolved", "sorry", "unfortunately", "however", "based", "according",
    "after", "before", "arrive", "arrival", "depart", "departure", "leave", "start", "end",
    "first", "second", "third", "next", "last", "stop", "day", "days", "step", "total",
    "rating", "price", "open", "closed", "opening", "hours", "weather", "forecast",
    "sunny", "cloudy", "rain", "rainy", "clear", "overcast", "snow", "fog", "drizzle",
} | set(MONTHS) | {m[:3] for m in MONTHS}
CALENDAR_WORDS = {"monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday",
                  "today", "tomorrow", "tonight"} | set(MONTHS) | {m[:3] for m in MONTHS}


# Words that end a place name. A capitalised run is treated as a place (and must be
# grounded) only when its last word is one of these, so headings such as "Route Summary"
# or "Day Plan" are not taken for invented places.
PLACE_NOUNS = {w.lower() for _, nouns, _ in CATEGORIES.values() for noun in nouns for w in noun.split()[-1:]}
PLACE_NOUNS |= {w.lower() for w in DISTRICT_SECOND}
PLACE_NOUNS |= {"airport", "station", "terminal", "expressway", "highway", "area", "district", "road",
                "street", "avenue", "square", "center", "centre", "hall", "court", "tower", "temple",
                "restaurant", "hotel", "cafe", "café", "bar", "park", "museum", "mall", "market", "shop",
                "store", "bookstore", "bakery", "pharmacy", "hospital", "clinic", "cinema", "gym",
                "library", "plaza", "garden", "gardens", "resort", "beach", "island", "lodge", "fuel"}


def looks_like_place(name: str) -> bool:
    return name.split()[-1].strip(".,;:!?'\"").lower() in PLACE_NOUNS


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


# ---------------------------------------------------------------- answer side

@dataclass
class Quantity:
    """A number the answer states with a unit, in a canonical unit, plus the rounding
    step implied by how it was written (e.g. "1.2 km" -> 1200 m, step 100 m)."""
    kind: str      # "price" | "distance_m" | "duration_min" | "temp_c" | "percent"
    value: float
    step: float
    text: str


@dataclass
class AnswerFacts:
    times: list[str] = field(default_factory=list)          # "HH:MM"
    dates: list[str] = field(default_factory=list)          # "MM-DD" (year is not checked)
    quantities: list[Quantity] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)          # flight / train numbers
    names: list[str] = field(default_factory=list)          # capitalised name-like runs
    openers: set[str] = field(default_factory=set)          # names that open a sentence


def parse_times(text: str) -> list[str]:
    """All clock times in text as "HH:MM", in order of appearance (ISO datetimes and
    "8:30 pm" too; an am/pm reading wins over the bare "8:30" inside it)."""
    found: list[tuple[int, str]] = []
    ampm_spans = []
    for m in AMPM_RE.finditer(text):
        hour = int(m.group(1)) % 12 + (12 if m.group(3).lower() == "p" else 0)
        found.append((m.start(), f"{hour:02d}:{m.group(2) or '00'}"))
        ampm_spans.append((m.start(), m.end()))
    for m in TIME_RE.finditer(text):
        if not any(a <= m.start() < b for a, b in ampm_spans):
            found.append((m.start(), f"{int(m.group(1)):02d}:{m.group(2)}"))
    return [t for _, t in sorted(found)]


def parse_dates(text: str) -> list[str]:
    """All calendar dates in text as "MM-DD", in order of appearance."""
    found: list[tuple[int, str]] = []
    for m in ISO_DATE_RE.finditer(text):
        found.append((m.start(), f"{m.group(2)}-{m.group(3)}"))
    for m in WORD_DATE_RE.finditer(text):
        month = [i for i, name in enumerate(MONTHS) if name.startswith(m.group(1).lower()[:3])]
        if month and 1 <= int(m.group(2)) <= 31:
            found.append((m.start(), f"{month[0] + 1:02d}-{int(m.group(2)):02d}"))
    for m in WORD_DATE_DM_RE.finditer(text):
        month = [i for i, name in enumerate(MONTHS) if name.startswith(m.group(2).lower()[:3])]
        if month and 1 <= int(m.group(1)) <= 31:
            found.append((m.start(), f"{month[0] + 1:02d}-{int(m.group(1)):02d}"))
    return [d for _, d in sorted(found)]


def parse_quantities(text: str) -> list[Quantity]:
    out: list[Quantity] = []
    for m in MONEY_RE.finditer(text):
        raw = m.group(1) or m.group(2)
        out.append(Quantity("price", _num(raw), 10.0 ** -_decimals(raw), m.group(0)))
    for m in DISTANCE_RE.finditer(text):
        raw, unit = m.group(1), m.group(2).lower()
        scale = {"km": 1000.0, "kilometers": 1000.0, "kilometres": 1000.0,
                 "mi": 1609.344, "miles": 1609.344}.get(unit, 1.0)
        out.append(Quantity("distance_m", _num(raw) * scale, scale * 10.0 ** -_decimals(raw),
                            m.group(0)))
    for m in DURATION_RE.finditer(text):
        hours, minutes_after, minutes_only = m.group(1), m.group(2), m.group(3)
        if hours is not None:
            value = _num(hours) * 60 + (_num(minutes_after) if minutes_after else 0.0)
            step = 1.0 if minutes_after else 60.0 * 10.0 ** -_decimals(hours)
        else:
            value, step = _num(minutes_only), 10.0 ** -_decimals(minutes_only)
        out.append(Quantity("duration_min", value, step, m.group(0)))
    for m in TEMP_RE.finditer(text):
        raw = m.group(1)
        out.append(Quantity("temp_c", float(raw.replace(",", "")), 10.0 ** -_decimals(raw),
                            m.group(0)))
    for m in PERCENT_RE.finditer(text):
        raw = m.group(1)
        out.append(Quantity("percent", _num(raw), 10.0 ** -_decimals(raw), m.group(0)))
    return out


def parse_codes(text: str) -> list[str]:
    """Flight and train numbers, in order of appearance."""
    found = {m.start(): m.group(1) for m in FLIGHT_RE.finditer(text)}
    found.update({m.start(): m.group(1) for m in TRAIN_RE.finditer(text)})
    return [code for _, code in sorted(found.items())]


_SENTENCE_START_RE = re.compile(r"(?:^|[.!?:;\n(\"]\s*|\d\.\s+)$")


def parse_names(text: str) -> tuple[list[str], set[str]]:
    """Capitalised multi-word runs that end in a place noun ("Jade Lotus Hotpot", "Cloud
    Square"), with calendar words and common openers trimmed.

    Also returns the runs that open a sentence: their first word may be an ordinary word
    capitalised by position ("Leaving Jade Hotel at ..."), which grounding may drop.
    """
    names, openers = [], set()
    for m in NAME_RE.finditer(text):
        words = m.group(0).split()
        trimmed = 0
        while words and (words[0].lower().strip(".,") in NAME_STOPWORDS):
            words.pop(0)
            trimmed += 1
        while words and (words[-1].lower().strip(".,") in CALENDAR_WORDS):
            words.pop()
        if len(words) >= 2 and looks_like_place(" ".join(words)):
            name = " ".join(words).rstrip(".,;:!?")
            names.append(name)
            if trimmed == 0 and _SENTENCE_START_RE.search(text[:m.start()]):
                openers.add(name)
    return names, openers


def answer_facts(text: str) -> AnswerFacts:
    names, openers = parse_names(text)
    return AnswerFacts(times=parse_times(text), dates=parse_dates(text),
                       quantities=parse_quantities(text), codes=parse_codes(text),
                       names=names, openers=openers)


# ---------------------------------------------------------------- evidence side

# Keys whose string values name a place (POIs, stations, airports) in tool outputs.
ENTITY_KEYS = {"name", "items", "place", "poi", "station", "airport", "origin_station",
               "destination_station", "origin_airport", "destination_airport"}


def _walk(value, strings: list[str], numbers: list[float], entities: list[str],
          key: str = "") -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _walk(v, strings, numbers, entities, k)
    elif isinstance(value, list):
        for v in value:
            _walk(v, strings, numbers, entities, key)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        numbers.append(float(value))
    else:
        strings.append(str(value))
        if key in ENTITY_KEYS:
            entities.append(str(value))


WORD_RE = re.compile(r"[\w'%-]+")
_ANY_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


class Evidence:
    """Everything the trajectory's tool outputs and the user query state."""

    def __init__(self, user_text: str, tool_contents: list[str]):
        strings: list[str] = [user_text]
        numbers: list[float] = []
        entities: list[str] = []
        for content in tool_contents:
            try:
                _walk(json.loads(content), strings, numbers, entities)
            except (json.JSONDecodeError, TypeError):
                strings.append(content)
        self.entity_names = list(dict.fromkeys(entities))
        self.text = "\n".join(strings)
        self.lower = self.text.lower()
        # what only the tools said, as space-joined words (for quoted-phrase checks)
        self.tool_words = " ".join(WORD_RE.findall("\n".join(strings[1:]).lower()))
        self.words = set(re.findall(r"[\w']+", self.lower))
        for s in strings:
            numbers += [_num(x) for x in _ANY_NUMBER_RE.findall(s.replace(",", ""))
                        if x not in ("-",)]
        self.numbers = sorted(set(numbers))
        self.times = set(parse_times(self.text))
        self.dates = set(parse_dates(self.text))
        self.codes = set(parse_codes(self.text))

    def has_number(self, value: float, step: float) -> bool:
        """Some evidence number rounds to `value` at the answer's precision `step`."""
        tol = max(step / 2, 1e-6) * 1.0001 + 1e-9
        return any(abs(n - value) <= tol for n in self._near(value, tol))

    def _near(self, value: float, tol: float) -> list[float]:
        lo = bisect.bisect_left(self.numbers, value - tol)
        hi = bisect.bisect_right(self.numbers, value + tol)
        return self.numbers[lo:hi]

    def supports(self, q: Quantity) -> bool:
        """A stated quantity is grounded when a tool number equals it in some unit the tools
        use (metres or km; seconds, minutes or hours), at the answer's rounding."""
        if q.kind == "distance_m":
            return self.has_number(q.value, q.step) or self.has_number(q.value / 1000, q.step / 1000)
        if q.kind == "duration_min":
            step = max(q.step, 1.0)
            return (self.has_number(q.value, step) or self.has_number(q.value * 60, step * 60)
                    or self.has_number(q.value / 60, step / 60))
        return self.has_number(q.value, q.step)

    def has_name(self, name: str) -> bool:
        return name.lower() in self.lower
