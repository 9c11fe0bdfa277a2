"""The model's own chat format (models/formats.py), against real chat templates.

The templates in tests/data/chat_templates/ are the models' own, copied verbatim (sources in
SOURCES.md): Qwen2.5, Qwen3, Llama 3.1, Llama 3.2, Hermes-2-Pro, Mistral-Nemo, SmolLM2. Each
is put on a tokenizer trained here that has that model's special tokens, so rendering,
masking, parsing and stop tokens run through transformers' own `apply_chat_template`.
"""

import json
import os
import warnings

import pytest

from stagent_ray.config import AgentConfig
from stagent_ray.models.chat_format import (PROJECT_TEMPLATE, ToolCall,
                                            format_tool_call, parse_assistant_turn, render_ids)
from stagent_ray.models.formats import PARSERS, chat_format, detect_parser
from stagent_ray.models.tokenizer import SYNTAX_LINES, train_tokenizer
from stagent_ray.rollout.agent_loop import check_prompt_budget
from test_chat_format import SCHEMAS, conversation

TEMPLATES = os.path.join(os.path.dirname(__file__), "data", "chat_templates")
LLAMA = ("<|eot_id|>", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eom_id|>", "<|python_tag|>"], "<|begin_of_text|>")
# template -> (EOS, its other special tokens, BOS), as in the model's tokenizer_config.json
SPECIALS = {
    "qwen2_5": ("<|im_end|>", [], None),
    "qwen3": ("<|im_end|>", ["<think>", "</think>"], None),
    "llama3_1": LLAMA, "llama3_2": LLAMA,
    "hermes": ("<|im_end|>", ["<|begin_of_text|>"], "<|begin_of_text|>"),
    "mistral": ("</s>", ["<s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                         "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"], "<s>"),
    "smollm2": ("<|im_end|>", [], "<|im_start|>"),
}
PARSER_OF = {"qwen2_5": "hermes", "qwen3": "hermes", "llama3_1": "llama3_json",
             "llama3_2": "llama3_json", "hermes": "hermes", "mistral": "mistral",
             "smollm2": "hermes"}
CALLS = [ToolCall("map_search_places", {"query": "cafe", "center": "31.23,121.47", "radius": 1000}),
         ToolCall("weather_current_conditions", {"location": "Lakeport"})]


def template(name: str) -> str:
    with open(os.path.join(TEMPLATES, f"{name}.jinja")) as f:
        return f.read()


def tokenizer_for(name: str | None):
    tok = train_tokenizer(SYNTAX_LINES + [json.dumps(s) for s in SCHEMAS], vocab_size=600)
    if name is None:
        return tok
    eos, extra, bos = SPECIALS[name]
    tok.add_special_tokens({"eos_token": eos, "additional_special_tokens": extra,
                            **({"bos_token": bos} if bos else {})})
    tok.chat_template = template(name)
    return tok


def agent(**kw) -> AgentConfig:
    return AgentConfig(**{"chat_format": "template", **kw})


def test_the_projects_renderer_is_qwen25s_own_template():
    """The project format, token for token, is what Qwen2.5's real template renders."""
    tok = tokenizer_for(None)
    assert tok.chat_template == PROJECT_TEMPLATE
    qwen = tokenizer_for("qwen2_5")
    for msgs, gen in [(conversation(), False), (conversation()[:4], True)]:
        ids, _ = render_ids(tok, msgs, SCHEMAS, add_generation_prompt=gen)
        fmt = chat_format(qwen, agent())
        text = qwen.apply_chat_template(fmt.template_messages(msgs, SCHEMAS), tools=SCHEMAS,
                                        tokenize=False, add_generation_prompt=gen)
        assert tok.encode(text, add_special_tokens=False) == ids
        # and the tiny tokenizer's own template is the project's renderer too
        assert tok.encode(tok.apply_chat_template(msgs, tools=SCHEMAS, tokenize=False,
                                                  add_generation_prompt=gen),
                          add_special_tokens=False) == ids
    assert chat_format(tok, AgentConfig()).renderer == "project"


@pytest.mark.parametrize("name", ["qwen2_5", "qwen3", "llama3_1", "llama3_2", "hermes",
                                  "smollm2"])
def test_template_format_trains_what_the_model_writes_and_parses_it_back(name):
    tok = tokenizer_for(name)
    fmt = chat_format(tok, AgentConfig())  # auto: a template that is not the project's
    assert fmt.renderer == "template" and fmt.parser == PARSER_OF[name]
    assert detect_parser(template(name)) == PARSER_OF[name]
    assert fmt.tools_in_template == (name != "smollm2")
    assert tok.convert_ids_to_tokens(fmt.turn_end_id) == SPECIALS[name][0]
    ids, mask = fmt.render_ids(conversation(), SCHEMAS)
    pieces = fmt.template_segments(conversation(), SCHEMAS, False)
    trained = [text for text, trainable in pieces if trainable]
    assert len(trained) == 3 and all(t.endswith(SPECIALS[name][0]) for t in trained)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "".join(trained)
    # each trained turn, as the model would generate it, parses back to the canonical calls
    for text, call in zip(trained, CALLS):
        parsed = fmt.parse(text[:-len(SPECIALS[name][0])], SCHEMAS, 1)
        assert parsed.calls == [call], (name, text, parsed)
        canonical = fmt.canonical(text[:-len(SPECIALS[name][0])], parsed)
        assert parse_assistant_turn(canonical, SCHEMAS).calls == [call]
    final = fmt.parse(trained[2][:-len(SPECIALS[name][0])], SCHEMAS, 1)
    assert final.answer == conversation()[-1]["content"]
    # tool results never trained; the generation prompt is the template's own
    for m in conversation():
        if m["role"] == "tool":
            assert m["content"] not in "".join(trained)
    full = tok.apply_chat_template(fmt.template_messages(conversation()[:4], SCHEMAS),
                                   tools=SCHEMAS if fmt.tools_in_template else None,
                                   tokenize=False, add_generation_prompt=True,
                                   enable_thinking=False)
    prompt = "".join(t for t, _ in fmt.template_segments(conversation()[:4], SCHEMAS, True))
    whole = tok.encode(tok.apply_chat_template(
        fmt.template_messages(conversation(), SCHEMAS),
        tools=SCHEMAS if fmt.tools_in_template else None, tokenize=False, enable_thinking=False),
        add_special_tokens=False)
    # Turn by turn, the rollout keeps what it generated. Qwen3's template re-renders earlier
    # turns without their empty <think>; Hermes-2-Pro's adds a newline to a tool turn once
    # it is not the last: there the turn-by-turn ids differ from one render of the whole.
    assert (prompt == full) == (name != "qwen3")
    assert (ids == whole) == (name not in ("qwen3", "hermes"))


def test_mistral_parser_reads_the_real_template_and_the_format_refuses_clearly():
    tok = tokenizer_for("mistral")
    fmt = chat_format(tok, AgentConfig())
    assert fmt.parser == "mistral"
    text = tok.apply_chat_template(fmt.template_messages(conversation()[:3], SCHEMAS),
                                   tools=SCHEMAS, tokenize=False)
    turn = text[text.rindex("[/INST]") + len("[/INST]"):]
    assert turn.startswith("[TOOL_CALLS]")
    assert fmt.parse(turn, SCHEMAS, 1).calls == [CALLS[0]]
    assert fmt.parse("[TOOL_CALLS][{\"name\": \"nope\", \"arguments\": {}}]", SCHEMAS, 1).error[
        "error"]["type"] == "unknown_tool"
    # Mistral-Nemo's template moves the system prompt once an assistant turn follows: an
    # episode cannot be extended turn by turn, and the error says what to do
    with pytest.raises(ValueError, match="agent.chat_format=project"):
        fmt.render_ids(conversation(), SCHEMAS)


def test_parsers_turn_bad_calls_into_structured_errors():
    for name, parse in PARSERS.items():
        bad = {"hermes": "<tool_call>\n{\"name\": \"map_search_places\"",
               "llama3_json": "{\"name\": \"map_search_places\", \"parameters\": {\"query\": 3}}",
               "mistral": "[TOOL_CALLS][{\"name\": \"map_search_places\", \"arguments\": "}[name]
        parsed = parse(bad, SCHEMAS, 1)
        assert parsed.error and parsed.error["error"]["type"] in (
            "unterminated_tool_call", "invalid_arguments", "invalid_json"), (name, parsed)
        assert parse("It is sunny.", SCHEMAS, 1).answer == "It is sunny."


def test_think_blocks_stay_out_of_the_parser_and_are_masked_when_asked():
    tok = tokenizer_for("qwen3")
    call = format_tool_call("weather_current_conditions", {"location": "Lakeport"})
    text = f"<think>\nmaybe {format_tool_call('map_search_places', {'query': 'x'})}\n</think>\n\n"
    for parser in PARSERS:  # a call written while thinking is not a call
        assert PARSERS[parser](text + "Sunny.", SCHEMAS, 1).answer == "Sunny."
    assert parse_assistant_turn(text + call, SCHEMAS).calls == [CALLS[1]]
    msgs = conversation()[:2] + [{"role": "assistant", "content": text + call}]
    on = chat_format(tok, agent(enable_thinking=True))
    off = chat_format(tok, agent(enable_thinking=True, train_thinking=False))
    ids, mask_on = on.render_ids(msgs, SCHEMAS)
    _, mask_off = off.render_ids(msgs, SCHEMAS)
    trained_on = tok.decode([i for i, m in zip(ids, mask_on) if m])
    trained_off = tok.decode([i for i, m in zip(ids, mask_off) if m])
    assert "maybe" in trained_on and "maybe" not in trained_off
    assert trained_off.strip().startswith("<tool_call>") and trained_off.endswith("<|im_end|>")
    # the switch reaches the template: no empty <think> in the prompt when thinking is on
    prompt_on = on.template_segments(msgs[:2], SCHEMAS, True)[-1][0]
    prompt_off = chat_format(tok, agent()).template_segments(msgs[:2], SCHEMAS, True)[-1][0]
    assert prompt_off.endswith("<think>\n\n</think>\n\n") and not prompt_on.endswith("</think>\n\n")


def test_stop_tokens_come_from_the_tokenizer_and_never_from_the_unknown_token():
    from transformers import GenerationConfig

    tok = tokenizer_for("smollm2")
    tok.add_special_tokens({"unk_token": "<|endoftext|>"})
    unk = tok.unk_token_id
    assert tok.convert_tokens_to_ids("</tool_call>") != unk  # the tiny vocab has it ...
    tok2 = tokenizer_for("llama3_1")
    gen = GenerationConfig(eos_token_id=[tok2.convert_tokens_to_ids("<|eom_id|>"),
                                         tok2.eos_token_id])
    fmt = chat_format(tok2, AgentConfig(), gen)
    names = tok2.convert_ids_to_tokens(fmt.stop_ids)
    assert names[0] == "<|eot_id|>" and "<|eom_id|>" in names
    assert all(i != tok2.unk_token_id for i in fmt.stop_ids)


def test_real_smollm2_tokenizer_markers_are_text_not_unknown_stops():
    """SmolLM2's vocabulary has no <tool_call>: convert_tokens_to_ids gives the unknown id 0.
    The format reads the markers as text and stops only on <|im_end|>."""
    from stagent_ray.models.build import load_tokenizer
    from stagent_ray.models.formats import format_for
    from stagent_ray.models.pretrained import convert

    from stagent_ray.config import Config
    from stagent_ray.stages.base import run_base

    cfg = Config()
    cfg.model.name_or_path = "smollm2-135m"  # a name `stagent-ray models` knows
    assert run_base(cfg) == {"model": convert("smollm2-135m"), "built": False}
    tok = load_tokenizer(convert("smollm2-135m"))
    assert tok.convert_tokens_to_ids("</tool_call>") == tok.unk_token_id == 0
    fmt = format_for(tok, AgentConfig())
    assert fmt.renderer == "template" and not fmt.tools_in_template
    assert fmt.stop_ids == [2] and fmt.turn_end_id == 2
    assert any("</tool_call>" in n for n in fmt.notes)
    ids, mask = fmt.render_ids(conversation(), SCHEMAS)
    assert 0 not in ids
    assert tok.decode([i for i, m in zip(ids, mask) if m]).count("</tool_call>") == 2
    # the project's tool prompt, in SmolLM2's own system turn
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>system\n") and "<tools>" in text


def test_prompt_over_budget_fails_naming_both_numbers():
    with pytest.raises(ValueError, match=r"is 3295 tokens, and agent.max_tokens is 1536"):
        check_prompt_budget(3295, 1536, "query q1")
    check_prompt_budget(600, 1536, "query q1")


def test_no_template_gets_the_project_format_and_a_warning():
    tok = tokenizer_for(None)
    tok.chat_template = None
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fmt = chat_format(tok, AgentConfig())
    assert fmt.renderer == "project" and any("no chat template" in str(w.message) for w in seen)
    assert fmt.render_ids(conversation(), SCHEMAS) == render_ids(tok, conversation(), SCHEMAS)
    with pytest.raises(ValueError, match="no chat template"):
        chat_format(tok, agent())
    # a vocabulary without <|im_end|> (a base model's): the project format could not stop
    base = base_model_tokenizer()
    with pytest.raises(ValueError, match="needs '<\\|im_end\\|>' as one token"):
        chat_format(base, AgentConfig())


def base_model_tokenizer():
    """A base model's tokenizer: no chat template, no ChatML tokens, EOS `</s>`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.train_from_iterator(SYNTAX_LINES, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>")


def test_a_base_model_without_template_gets_the_markers_as_tokens(tmp_path):
    """The base stage adds the project's markers to such a model (embeddings resized) and
    every later checkpoint starts from that."""
    from stagent_ray.config import Config, ModelConfig
    from stagent_ray.models.build import build_tiny_model, load_model, load_tokenizer, save_checkpoint
    from stagent_ray.stages.base import run_base

    tok = base_model_tokenizer()
    small = ModelConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                        num_kv_heads=1)
    save_checkpoint(build_tiny_model(small, tok), tok, str(tmp_path / "user_model"))
    cfg = Config(run_dir=str(tmp_path / "run"))
    cfg.model.name_or_path = str(tmp_path / "user_model")
    with pytest.warns(UserWarning, match="markers added as tokens"):
        out = run_base(cfg)
    assert out == {"model": str(tmp_path / "run/ckpt/base"), "built": True}
    tok2, model = load_tokenizer(out["model"]), load_model(out["model"])
    assert len(tok2) == len(tok) + 7 and model.get_input_embeddings().weight.shape[0] == len(tok2)
    fmt = chat_format(tok2, AgentConfig())
    assert fmt.renderer == "project" and fmt.stop_ids[0] == tok2.convert_tokens_to_ids("<|im_end|>")
    ids, mask = fmt.render_ids(conversation(), SCHEMAS)
    assert tok2.decode([i for i, m in zip(ids, mask) if m]).count("<|im_end|>") == 3
    assert run_base(cfg) == {"model": out["model"], "built": False}  # once
