"""Chat rendering, the loss mask, and the tool-call parser."""

import json

import pytest

from stagent_ray.models.chat_format import (IM_END, PROJECT_TEMPLATE, format_tool_call, format_tool_response,
                                            parse_assistant_turn, prompt_tools, render_ids)
from stagent_ray.models.tokenizer import SYNTAX_LINES, train_tokenizer

SCHEMAS = [
    {"type": "function", "function": {
        "name": "map_search_places", "description": "Search places.",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string"}, "center": {"type": "string"},
            "radius": {"type": "integer"}, "min_rating": {"type": "number"}},
            "required": ["query"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "weather_current_conditions", "description": "Weather now.",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                       "required": ["location"], "additionalProperties": False}}},
]

@pytest.fixture(scope="module")
def tokenizer():
    texts = SYNTAX_LINES + [json.dumps(s) for s in SCHEMAS] + [
        "Find a quiet cafe near the museum open at 9. The weather in Lakeport is sunny."] * 3
    return train_tokenizer(texts, vocab_size=600)


def conversation():
    return [
        {"role": "system", "content": "You are a helpful travel agent."},
        {"role": "user", "content": "Find a cafe near 31.23,121.47 and tell me the weather."},
        {"role": "assistant", "content": "Searching.\n" + format_tool_call(
            "map_search_places", {"query": "cafe", "center": "31.23,121.47", "radius": 1000})},
        {"role": "tool", "content": format_tool_response(
            {"places": [{"name": "Blue Kettle", "rating": 4.6}]})},
        {"role": "assistant", "content": format_tool_call(
            "weather_current_conditions", {"location": "Lakeport"})},
        {"role": "tool", "content": format_tool_response({"condition": "sunny", "temp_c": 24})},
        {"role": "assistant", "content": "Blue Kettle (4.6) is close; it is sunny, 24 C."},
    ]


def test_mask_covers_exactly_the_assistant_spans(tokenizer):
    msgs = conversation()
    ids, mask = render_ids(tokenizer, msgs, SCHEMAS)
    assert len(ids) == len(mask)
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    expected = "".join(m["content"] + IM_END for m in msgs if m["role"] == "assistant")
    assert trained == expected
    untrained = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    for m in msgs:
        if m["role"] != "assistant":
            assert m["content"] in untrained
    # Three assistant spans, i.e. three runs of ones.
    runs = sum(1 for a, b in zip([0] + mask, mask) if b == 1 and a == 0)
    assert runs == 3


def test_render_equals_apply_chat_template(tokenizer):
    tokenizer.chat_template = PROJECT_TEMPLATE
    for msgs, gen in [(conversation(), False), (conversation()[:4], True),
                      (conversation()[1:], False)]:
        ids, _ = render_ids(tokenizer, msgs, SCHEMAS, add_generation_prompt=gen)
        text = tokenizer.apply_chat_template(msgs, tools=SCHEMAS, tokenize=False,
                                             add_generation_prompt=gen)
        assert tokenizer.encode(text, add_special_tokens=False) == ids
    ids, _ = render_ids(tokenizer, conversation()[1:3], None)
    text = tokenizer.apply_chat_template(conversation()[1:3], tokenize=False)
    assert tokenizer.encode(text, add_special_tokens=False) == ids


def test_tool_prompt_modes(tokenizer):
    compact = prompt_tools(SCHEMAS, "compact")
    assert prompt_tools(SCHEMAS, "full") == SCHEMAS and compact != SCHEMAS
    assert [t["name"] for t in compact] == [t["function"]["name"] for t in SCHEMAS]
    assert prompt_tools(SCHEMAS, "none") == []
    full_len = len(render_ids(tokenizer, conversation(), SCHEMAS)[0])
    none_ids, _ = render_ids(tokenizer, conversation(), prompt_tools(SCHEMAS, "none"))
    assert "<tools>" not in tokenizer.decode(none_ids) and len(none_ids) < full_len


def test_tokenizer_save_reload(tokenizer, tmp_path):
    from stagent_ray.models.build import load_tokenizer

    tokenizer.save_pretrained(tmp_path)
    again = load_tokenizer(str(tmp_path))
    text = "Blue Kettle " + format_tool_call("map_search_places", {"query": "cafe"})
    assert again.encode(text) == tokenizer.encode(text)
    assert again.padding_side == "left" and again.eos_token == IM_END
    assert len(tokenizer.encode("<tool_call>", add_special_tokens=False)) == 1


def test_parse_valid_calls_and_answers():
    call = format_tool_call("map_search_places", {"query": "cafe", "radius": 500})
    turn = parse_assistant_turn("Let me look.\n" + call, SCHEMAS)
    assert turn.error is None and turn.calls[0].name == "map_search_places"
    assert turn.calls[0].arguments == {"query": "cafe", "radius": 500}
    assert parse_assistant_turn(call + "\n" + IM_END, SCHEMAS).calls
    final = parse_assistant_turn("The Blue Kettle is open.", SCHEMAS)
    assert final.is_final and final.answer == "The Blue Kettle is open."
    two = parse_assistant_turn(call + "\n" + call, SCHEMAS, max_calls=2)
    assert len(two.calls) == 2 and two.error is None


TC = "<tool_call>\n{}\n</tool_call>"
MALFORMED = [
    ("<tool_call>\n{\"name\": \"map_search_places\", \"arguments\": {\"query\": \"x\"}",
     "unterminated_tool_call"),
    ("<tool_call>", "unterminated_tool_call"),
    (TC.format("{not json}"), "invalid_json"),
    (TC.format(""), "invalid_json"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x"}'), "invalid_json"),
    (TC.format('["map_search_places"]'), "invalid_json"),
    (TC.format('"just a string"'), "invalid_json"),
    (TC.format('{"arguments": {"query": "x"}}'), "malformed_tool_call"),
    (TC.format('{"name": 42, "arguments": {}}'), "malformed_tool_call"),
    (TC.format('{"name": "map_search_places", "arguments": "query=x"}'), "malformed_tool_call"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x"}, "id": 1}'),
     "malformed_tool_call"),
    (TC.format('{"name": "book_hotel", "arguments": {}}'), "unknown_tool"),
    (TC.format('{"name": "map_search_places", "arguments": {}}'), "invalid_arguments"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": 7}}'), "invalid_arguments"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x", "radius": "far"}}'),
     "invalid_arguments"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x", "radius": true}}'),
     "invalid_arguments"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x", "color": "red"}}'),
     "invalid_arguments"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x"}}') + " and then",
     "text_after_tool_call"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x"}}') * 2,
     "too_many_tool_calls"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x"}}') + " mid " +
     TC.format('{"name": "map_search_places", "arguments": {"query": "y"}}'),
     "text_after_tool_call"),
    ("</tool_call> oops", "malformed_tool_call"),
    ("<tool_call>\n<tool_call>{}</tool_call>", "malformed_tool_call"),
    ("<tool_response>fake</tool_response>", "malformed_turn"),
    ("   ", "empty_answer"),
    (TC.format('{"name": "map_search_places", "arguments": {"query": "x"}}') + "</tool_call>",
     "malformed_tool_call"),
    (TC.format("[" * 5000 + "]" * 5000), "invalid_json"),
]


@pytest.mark.parametrize("text, kind", MALFORMED)
def test_parse_malformed_gives_structured_error(text, kind):
    turn = parse_assistant_turn(text, SCHEMAS)
    assert turn.error is not None, text
    assert turn.error["error"]["type"] == kind
    assert turn.error["error"]["message"]
    assert not turn.calls
