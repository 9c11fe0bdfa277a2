"""The verified check: the final answer against the query's ground truth, exactly but
tolerant of phrasing.

A ground truth is a dict with a `kind` and a few optional requirements:

  kind "places_any"     every candidate place the answer names is in `accept`, and it
                        names at least one (constrained search: any fitting POI will do)
  kind "place_best"     the first candidate place the answer names is `answer`
  kind "places_ordered" the answer names all of `answer` (a list), in that order
  kind "choice"         the first of `options` the answer names is `answer` (travel modes)
  kind "code"           the first flight/train number the answer names is `answer`
  kind "date"           the first date the answer names is `answer` ("YYYY-MM-DD")
  kind "facts"          only the requirements below
  kind "unsolved"       the answer carries `[Unsolved]`
  kind "no_tool"        only the requirements below (and the rubric wants no tool call)

  require_times    ["HH:MM", ...]        each clock time must appear in the answer
  require_minutes  [minutes, ...]        each duration must appear ("85 min", "1 h 25 min")
  require_numbers  [[value, tol], ...]   each number must appear (any unit) within tol
  require_text     ["...", ...]          each phrase must appear (case-insensitive)
  forbid_numbers   [value, ...]          none of these may appear (the answer must pick the
                                         asked case, not quote every case of a policy)

Candidate places are the place names the tool outputs listed (`Evidence.entity_names`),
minus those the user mentioned. "The first one named" is the answer's pick: answers lead
with their recommendation, and naming every option must not pass.
Every solvable kind fails when the answer carries `[Unsolved]`.
"""

from __future__ import annotations

import re

from stagent_ray.models.chat_format import UNSOLVED_MARKER
from stagent_ray.reward.facts import (Evidence, parse_codes, parse_dates, parse_quantities,
                                      parse_times)

# How answers name travel modes; the first mention is the pick.
MODE_WORDS = {
    "driving": ["driving", "drive", "by car", "car", "taxi"],
    "walking": ["walking", "walk", "on foot"],
    "bicycling": ["bicycling", "cycling", "bike", "bicycle", "cycle"],
    "transit": ["transit", "public transport", "metro", "subway", "bus"],
    "flight": ["flight", "fly", "plane"],
    "train": ["train", "rail", "high-speed"],
}

_NUMBER_RE = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def _norm(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split())


def mentioned_in_order(answer: str, names: list[str]) -> list[str]:
    """The names that occur in the answer, ordered by first occurrence. Longer names win
    where one contains another ("Jade Lotus Hotpot" does not also count as "Lotus Hotpot")."""
    text = _norm(answer)
    hits: list[tuple[int, str]] = []
    taken = [False] * len(text)
    for name in sorted(set(names), key=len, reverse=True):
        key = _norm(name)
        if not key:
            continue
        for m in re.finditer(r"(?<![\w])" + re.escape(key) + r"(?![\w])", text):
            if not any(taken[m.start():m.end()]):
                hits.append((m.start(), name))
                for i in range(m.start(), m.end()):
                    taken[i] = True
                break
    return [name for _, name in sorted(hits)]


def first_option(answer: str, options: list[str]) -> str | None:
    """The option (e.g. a travel mode) the answer names first, through its synonyms."""
    text = _norm(answer)
    best: tuple[int, str] | None = None
    for option in options:
        for word in MODE_WORDS.get(option, [option]):
            m = re.search(r"(?<![\w-])" + re.escape(word) + r"(?![\w-])", text)
            if m and (best is None or m.start() < best[0]):
                best = (m.start(), option)
    return None if best is None else best[1]


def candidate_places(evidence: Evidence, user_text: str) -> list[str]:
    user = _norm(user_text)
    return [n for n in evidence.entity_names if _norm(n) not in user]


def check_requirements(gt: dict, answer: str) -> str | None:
    """None when every require_* is met, else what is missing."""
    times = set(parse_times(answer))
    for t in gt.get("require_times", []):
        if t not in times:
            return f"missing time {t}"
    durations = [q.value for q in parse_quantities(answer) if q.kind == "duration_min"]
    for minutes in gt.get("require_minutes", []):
        if not any(abs(d - minutes) < 0.5 for d in durations):
            return f"missing duration {minutes} min"
    numbers = [float(x.replace(",", "")) for x in _NUMBER_RE.findall(answer)]
    for value, tol in gt.get("require_numbers", []):
        if not any(abs(n - value) <= tol + 1e-9 for n in numbers):
            return f"missing number {value}"
    for value in gt.get("forbid_numbers", []):
        if any(abs(n - value) < 1e-9 for n in numbers):
            return f"states {value}, which is not the asked case"
    text = _norm(answer)
    for phrase in gt.get("require_text", []):
        if _norm(phrase) not in text:
            return f"missing {phrase!r}"
    return None


def verify_answer(gt: dict, answer: str, evidence: Evidence, user_text: str) -> tuple[bool, str]:
    """(verified, why) for one final answer."""
    kind = gt["kind"]
    unsolved = UNSOLVED_MARKER in answer
    if kind == "unsolved":
        return (True, "declined with [Unsolved]") if unsolved else (False, "missing [Unsolved]")
    if unsolved:
        return False, "[Unsolved] on a solvable query"
    if kind == "places_any":
        named = mentioned_in_order(answer, candidate_places(evidence, user_text))
        accept = {_norm(n) for n in gt["accept"]}
        wrong = [n for n in named if _norm(n) not in accept]
        if wrong:
            return False, f"wrong place {wrong[0]!r}"
        if not named:
            return False, "names no fitting place"
    elif kind == "place_best":
        named = mentioned_in_order(answer, candidate_places(evidence, user_text))
        if not named:
            return False, "names no place"
        if _norm(named[0]) != _norm(gt["answer"]):
            return False, f"wrong place {named[0]!r}"
    elif kind == "places_ordered":
        named = mentioned_in_order(answer, list(gt["answer"]) + candidate_places(evidence, user_text))
        want = [_norm(n) for n in gt["answer"]]
        got = [_norm(n) for n in named if _norm(n) in want]
        if got != want:
            return False, f"places not as expected: {named[:len(want) + 1]}"
    elif kind == "choice":
        # place names may hold mode words ("Lucky Car Park"): mask them first
        masked = answer
        for name in sorted(evidence.entity_names, key=len, reverse=True):
            masked = re.sub(re.escape(name), " ", masked, flags=re.IGNORECASE)
        pick = first_option(masked, gt["options"])
        if pick != gt["answer"]:
            return False, f"wrong choice {pick!r}"
    elif kind == "code":
        codes = parse_codes(answer)
        if not codes:
            return False, "names no flight or train"
        if codes[0] != gt["answer"]:
            return False, f"wrong pick {codes[0]}"
    elif kind == "date":
        dates = parse_dates(answer)
        if not dates:
            return False, "names no date"
        if dates[0] != gt["answer"][5:]:
            return False, f"wrong date {dates[0]}"
    elif kind not in ("facts", "no_tool"):
        raise ValueError(f"unknown ground-truth kind {kind!r}")
    missing = check_requirements(gt, answer)
    if missing:
        return False, missing
    return True, "matches ground truth"
