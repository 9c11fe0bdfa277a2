"""The scorer: perturbed answers are rejected for the right reason, the rubric reacts to
planning and presentation faults, fact parsing is tolerant of phrasing, and scoring is fast."""

import json
import re
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagent_ray.models.chat_format import UNSOLVED_MARKER, format_tool_call, format_tool_response
from stagent_ray.reward import Score, score_trajectory
from stagent_ray.reward.facts import Evidence, Quantity, parse_dates, parse_names, parse_quantities, parse_times
from stagent_ray.tasks.families import FAMILIES, generate_queries
from stagent_ray.tasks.oracle import run_oracle
from stagent_ray.world.backends import make_executor
from stagent_ray.world.generate import load_world


@pytest.fixture(scope="module")
def world():
    return load_world(0)


@pytest.fixture(scope="module")
def executor():
    return make_executor("world", seed=0)


@pytest.fixture(scope="module")
def solved(world, executor):
    """family -> [(query, oracle messages)] at noise 0."""
    return {f: [(q, run_oracle(q, executor)) for q in generate_queries(world, f, 10, seed=11)] for f in FAMILIES}


def with_answer(messages, answer):
    return messages[:-1] + [{"role": "assistant", "content": answer}]


def tool_text(messages):
    return " ".join(m["content"] for m in messages if m["role"] in ("tool", "user"))


def test_oracle_answers_score_full(solved):
    for family, runs in solved.items():
        for q, messages in runs:
            score = score_trajectory(q, messages)
            assert isinstance(score, Score) and score.verified and score.value >= 0.95, (family, score)


def test_wrong_place_from_the_tool_outputs_fails_verification(solved):
    for q, messages in solved["ranking_list"]:
        if q.ground_truth["kind"] != "place_best":
            continue
        items = json.loads(messages[2]["content"])["lists"][0]["items"]
        if len(items) < 2:
            continue
        answer = messages[-1]["content"].replace(items[0]["name"], items[1]["name"])
        score = score_trajectory(q, with_answer(messages, answer))
        assert not score.verified and score.reason.startswith("wrong place")
        assert score.value <= 0.3


def test_invented_place_is_a_hallucination(world, solved):
    for q, messages in solved["nearest_open"]:
        seen = tool_text(messages)
        invented = next(p.name for p in world.pois_by_city[q.city]
                        if p.category == q.params["category"] and p.name not in seen)
        answer = messages[-1]["content"].replace(q.ground_truth["answer"], invented)
        score = score_trajectory(q, with_answer(messages, answer))
        assert score.value == 0.0 and not score.verified
        assert score.reason.startswith("hallucination: place")


def test_invented_price_is_a_hallucination(solved):
    for q, messages in solved["intercity_trip"]:
        price = q.ground_truth["require_numbers"][0][0]
        answer = messages[-1]["content"].replace(f"{price} CNY", "9973 CNY")
        score = score_trajectory(q, with_answer(messages, answer))
        assert score.value == 0.0 and score.reason.startswith("hallucination: price")
    q, messages = solved["constrained_search"][0]
    answer = re.sub(r"about \d+ CNY", "about 7777 CNY", messages[-1]["content"])
    if answer != messages[-1]["content"]:
        assert score_trajectory(q, with_answer(messages, answer)).reason.startswith("hallucination: price")


def test_wrong_time_is_rejected(solved):
    for q, messages in solved["drive_time"]:
        wanted = q.ground_truth["require_times"][0]
        seen = set(parse_times(tool_text(messages)))
        minute = int(wanted[:2]) * 60 + int(wanted[3:])
        shifted = next(f"{m // 60:02d}:{m % 60:02d}" for m in range(minute + 3, minute + 60)
                       if f"{m // 60:02d}:{m % 60:02d}" not in seen)
        answer = messages[-1]["content"].replace(wanted, shifted)
        score = score_trajectory(q, with_answer(messages, answer))
        assert score.value == 0.0 and score.reason.startswith("hallucination: time")
    # a time the tools did state, but not the one asked for: grounded, yet not verified
    q, messages = solved["itinerary"][0]
    first, second = q.ground_truth["require_times"][:2]
    answer = messages[-1]["content"].replace(second, first)
    score = score_trajectory(q, with_answer(messages, answer))
    assert not score.verified and score.reason == f"missing time {second}"


def test_missing_unsolved_marker_fails(solved):
    for q, messages in solved["unsolvable"]:
        answer = messages[-1]["content"].replace(UNSOLVED_MARKER, "").strip()
        score = score_trajectory(q, with_answer(messages, answer))
        assert not score.verified and score.reason == "missing [Unsolved]"
        assert score.value < 0.3


def test_unsolved_marker_on_a_solvable_query_fails(solved):
    for family in ("constrained_search", "current_weather", "no_tool", "itinerary"):
        q, messages = solved[family][0]
        answer = f"{UNSOLVED_MARKER} I can't help with that."
        score = score_trajectory(q, with_answer(messages, answer))
        assert not score.verified and score.reason == "[Unsolved] on a solvable query"
        assert score.value < 0.3


def test_no_final_answer_scores_zero(solved):
    q, messages = solved["current_weather"][0]
    for cut in (messages[:-1], messages[:2], []):
        score = score_trajectory(q, cut)
        assert score.value == 0.0 and score.reason == "no final answer"


def test_tool_call_on_a_no_tool_query_costs_planning(solved):
    q, messages = solved["no_tool"][0]
    call = {"role": "assistant", "content": format_tool_call("web_search", {"query": "miles"})}
    result = {"role": "tool", "content": format_tool_response({"query": "miles", "results": []})}
    score = score_trajectory(q, [messages[0], call, result, messages[-1]])
    assert score.verified and score.parts["planning"] < 1.0 and score.value < 0.95


def test_failed_and_repeated_calls_cost_planning(solved):
    q, messages = solved["drive_time"][0]
    bad_call = {"role": "assistant", "content": format_tool_call("map_search_places", {"city": "x"})}
    error = {"role": "tool", "content": format_tool_response({"error": {"type": "missing_argument",
                                                                        "message": "missing 'query'"}})}
    score = score_trajectory(q, messages[:1] + [bad_call, error] + messages[1:])
    assert score.verified and score.parts["failed"] == 1 and score.value < 1.0
    repeated = score_trajectory(q, messages[:3] + messages[1:])
    assert repeated.verified and repeated.parts["planning"] < 1.0


def test_presentation_faults(solved):
    q, messages = solved["forecast_check"][0]
    leftover = messages[-1]["content"] + '\n{"name": "weather_forecast_days"}'
    score = score_trajectory(q, with_answer(messages, leftover))
    assert score.parts["presentation"] < 1.0
    broken = messages[-1]["content"] + "\n<tool_response>{}</tool_response>"
    assert score_trajectory(q, with_answer(messages, broken)).reason == "no final answer"
    looped = messages[-1]["content"] + " " + messages[-1]["content"]
    assert score_trajectory(q, with_answer(messages, looped)).parts["presentation"] < 1.0


def test_answers_are_read_tolerantly(solved):
    q, messages = solved["drive_time"][0]
    route = json.loads(messages[-2]["content"])["routes"][0]
    minutes, arrival = route["duration_min"], route["arrival_time"][11:]
    h, m = divmod(minutes, 60)
    spoken = f"{h} h {m} min" if h else f"{minutes} minutes"
    hour = int(arrival[:2])
    ampm = f"{hour % 12 or 12}:{arrival[3:]} {'pm' if hour >= 12 else 'am'}"
    answer = f"It takes {spoken} by car; you'd get there at {ampm}."
    if "depart" in q.params:
        score = score_trajectory(q, with_answer(messages, answer))
        assert score.verified, score.reason


def test_fact_parsing():
    assert parse_times("leave at 8:30 pm, back by 9 am, lunch 12:15") == ["20:30", "09:00", "12:15"]
    assert parse_times("open 10:00-14:00, 17:00-22:00") == ["10:00", "14:00", "17:00", "22:00"]
    assert parse_dates("Saturday, June 6 or 2026-06-07 or 8th of June") == ["06-06", "06-07", "06-08"]
    assert parse_dates("it may 10 times") == []
    kinds = {(q.kind, round(q.value, 3)) for q in parse_quantities(
        "1.2 km, 850 m, 1 h 25 min, 40 minutes, 176 CNY, ¥30, 23°C, 60%")}
    assert kinds == {("distance_m", 1200.0), ("distance_m", 850.0), ("duration_min", 85.0),
                     ("duration_min", 40.0), ("price", 176.0), ("price", 30.0), ("temp_c", 23.0),
                     ("percent", 60.0)}
    names, openers = parse_names("Route Summary: Leaving Jade Hotel at 09:00, then Cloud Square.")
    assert names == ["Leaving Jade Hotel", "Cloud Square"] and openers == {"Leaving Jade Hotel"}


def test_evidence_accepts_rounding_and_unit_changes():
    ev = Evidence("user", [json.dumps({"distance_m": 1234, "duration_min": 85, "distance_km": 12.3})])
    assert ev.supports(Quantity("distance_m", 1200.0, 100.0, "1.2 km"))
    assert ev.supports(Quantity("distance_m", 12300.0, 100.0, "12.3 km"))
    assert ev.supports(Quantity("duration_min", 85.0, 1.0, "1 h 25 min"))
    assert not ev.supports(Quantity("distance_m", 1500.0, 100.0, "1.5 km"))


@given(st.integers(0, 23), st.integers(0, 59))
def test_any_clock_time_round_trips(hour, minute):
    assert parse_times(f"at {hour:02d}:{minute:02d}.") == [f"{hour:02d}:{minute:02d}"]
    twelve = f"{hour % 12 or 12}:{minute:02d} {'pm' if hour >= 12 else 'am'}"
    assert parse_times(f"at {twelve}") == [f"{hour:02d}:{minute:02d}"]


def test_scoring_is_fast(solved):
    runs = [run for runs in solved.values() for run in runs]
    start = time.perf_counter()
    for _ in range(5):
        for q, messages in runs:
            score_trajectory(q, messages)
    per_trajectory = (time.perf_counter() - start) / (5 * len(runs))
    assert per_trajectory < 0.005, per_trajectory
