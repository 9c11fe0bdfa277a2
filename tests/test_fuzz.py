"""Property-based fuzzing of what a model can reach: the tool-call parser and every tool.
Over 10,000 generated malformed inputs in all; none may raise."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagent_ray.models.chat_format import (TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ParsedTurn,
                                            format_tool_call, parse_assistant_turn)
from stagent_ray.world.backends import make_executor
from stagent_ray.world.schemas import SCHEMAS, TOOL_NAMES

EXECUTOR = make_executor()
FRAGMENTS = [TOOL_CALL_OPEN, TOOL_CALL_CLOSE, "<tool_response>", "</tool_response>",
             "<|im_end|>", "{", "}", "[", "]", '"name"', '"arguments"', ":", ",", '"',
             "\\", "null", "true", "1e999", "NaN", "\n", " ", "map_search_places", "[Unsolved]"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) |
    st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) |
    st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)

turn_texts = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=30).map("".join),
    st.builds(lambda name, args, pre, post: pre + format_tool_call(name, args) + post,
              st.sampled_from(TOOL_NAMES) | st.text(max_size=10),
              st.dictionaries(st.text(max_size=12), json_values, max_size=5),
              st.text(max_size=10), st.text(max_size=10)),
    st.builds(lambda body: f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}",
              json_values.map(lambda v: json.dumps(v, allow_nan=True)) | st.text(max_size=60)),
)


@settings(max_examples=6000, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=turn_texts, max_calls=st.integers(1, 3))
def test_parser_never_raises(text, max_calls):
    turn = parse_assistant_turn(text, SCHEMAS, max_calls=max_calls)
    assert isinstance(turn, ParsedTurn)
    assert (turn.error is not None) + bool(turn.calls) + (turn.answer is not None) == 1
    if turn.error is not None:
        assert set(turn.error) == {"error"} and turn.error["error"]["type"]
    assert len(turn.calls) <= max_calls


@settings(max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(TOOL_NAMES) | st.text(max_size=20),
       arguments=st.dictionaries(st.text(max_size=15), json_values, max_size=6) | json_values)
def test_every_tool_answers_garbage_with_an_observation(name, arguments):
    result = EXECUTOR.call(name, arguments)
    assert isinstance(result, dict)
    json.dumps(result)  # always serialisable: it goes back into the conversation
    if "error" in result:
        assert result["error"]["type"] != "internal_error", result
