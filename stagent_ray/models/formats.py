"""A model's own chat format: who renders the prompt, how it writes tool calls, what stops it.

Messages inside the project are always in one canonical form (models/chat_format.py): an
assistant turn that calls a tool holds `<tool_call>{json}</tool_call>` in its content, and
the scorer, rubric, judge and oracle read that. What a model sees and writes is its own:

- `project`: the project's ChatML/Hermes renderer. The embedded tiny model's tokenizer
  carries it as its chat template, and so does a model with no template at all (with a
  warning).
- `template`: the tokenizer's own chat template through `apply_chat_template`. A template
  that takes `tools=` gets the tool schemas and the calls as OpenAI-style `tool_calls`, and
  writes them in its own format; one that does not (SmolLM2) gets the project's tool prompt
  in its system turn and the canonical call text in its assistant turns, in its own markup.

Generated text is parsed by the model's parser (PARSERS: hermes, llama3_json, mistral;
chosen by `agent.tool_parser` or detected from the template) and stored canonically.
`<think>` blocks never reach a parser; `agent.train_thinking` decides whether SFT trains on
them. Stop tokens are the tokenizer's EOS and `generation_config`'s, plus the template's
end-of-turn token; a marker that is not one token in the vocabulary is never a stop token.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field

from stagent_ray.models.chat_format import (IM_END, PROJECT_TEMPLATE, TOOL_CALL_CLOSE,
                                            TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN, ParsedTurn,
                                            ToolCall, check_call, error_turn, format_tool_call,
                                            parse_assistant_turn, render_text_segments,
                                            split_think, to_openai_messages, tool_response_ids,
                                            tools_system_block)

# ---------------------------------------------------------------- parsers: text -> calls


def parse_hermes(text: str, tool_schemas, max_calls: int) -> ParsedTurn:
    """Qwen2.5/3, Hermes and the project: `<tool_call>\\n{"name", "arguments"}\\n</tool_call>`."""
    return parse_assistant_turn(text, tool_schemas, max_calls)


def _json_calls(payload: str, args_key: str, tool_schemas, max_calls: int) -> ParsedTurn:
    """Calls written as one JSON object or a list of them, arguments under `args_key`."""
    try:
        value = json.loads(payload)
    except (json.JSONDecodeError, RecursionError) as exc:
        return error_turn("invalid_json", f"tool call is not valid JSON: {str(exc)[:120]}")
    items = value if isinstance(value, list) else [value]
    calls = []
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            return error_turn("malformed_tool_call", "a tool call is a JSON object with 'name'")
        arguments = item.get(args_key, item.get("arguments", {}))
        problem = check_call(item["name"], arguments, tool_schemas)
        if problem:
            return ParsedTurn(error={"error": problem})
        calls.append(ToolCall(item["name"], arguments))
    if len(calls) > max_calls:
        return error_turn("too_many_tool_calls",
                          f"{len(calls)} tool calls in one turn; at most {max_calls} allowed")
    return ParsedTurn(calls=calls)


def parse_llama3_json(text: str, tool_schemas, max_calls: int) -> ParsedTurn:
    """Llama 3.1+: the whole turn is `{"name": ..., "parameters": {...}}` (after an optional
    `<|python_tag|>`); anything else is a final answer."""
    _, body = split_think(text)
    body = body.replace("<|python_tag|>", "").replace("<|eom_id|>", "").replace("<|eot_id|>", "")
    if not body.strip().startswith("{"):
        return parse_assistant_turn(text, tool_schemas, max_calls)
    return _json_calls(body.strip(), "parameters", tool_schemas, max_calls)


def parse_mistral(text: str, tool_schemas, max_calls: int) -> ParsedTurn:
    """Mistral: `[TOOL_CALLS][{"name": ..., "arguments": {...}, "id": ...}]`."""
    _, body = split_think(text)
    if "[TOOL_CALLS]" not in body:
        return parse_assistant_turn(text, tool_schemas, max_calls)
    before, payload = body.split("[TOOL_CALLS]", 1)
    if before.strip():
        return error_turn("text_before_tool_call", "text precedes [TOOL_CALLS]")
    return _json_calls(payload.replace("</s>", "").strip(), "arguments", tool_schemas, max_calls)


PARSERS = {"hermes": parse_hermes, "llama3_json": parse_llama3_json, "mistral": parse_mistral}


def detect_parser(template: str | None) -> str:
    """The tool-call format a chat template writes (hermes when it writes none)."""
    if not template:
        return "hermes"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    if "<tool_call>" in template:
        return "hermes"
    if "<|python_tag|>" in template or ('"parameters"' in template and "<|eot_id|>" in template):
        return "llama3_json"
    return "hermes"


def template_takes_tools(template: str | None) -> bool:
    return bool(template) and re.search(r"\btools\b", template) is not None


# ---------------------------------------------------------------- the format


@dataclass
class ChatFormat:
    tokenizer: object
    renderer: str                 # project | template
    parser: str                   # a key of PARSERS
    tools_in_template: bool       # template renders tools= and tool_calls itself
    stop_ids: list[int]
    enable_thinking: bool = False
    train_thinking: bool = True
    turn_end_id: int | None = None  # appended when a turn stopped on another stop token
    call_close_id: int | None = None  # </tool_call> when hermes writes it as one token
    notes: list[str] = field(default_factory=list)  # what was chosen and why (warnings)

    # ---- parsing generated text
    def parse(self, text: str, tool_schemas, max_calls: int) -> ParsedTurn:
        return PARSERS[self.parser](text, tool_schemas, max_calls)

    def canonical(self, text: str, parsed: ParsedTurn) -> str:
        """The content stored for a generated turn: calls in the canonical form."""
        if self.parser == "hermes" or not parsed.calls:
            return text
        think, _ = split_think(text)
        calls = "\n".join(format_tool_call(c.name, c.arguments) for c in parsed.calls)
        return f"{think}{calls}"

    # ---- rendering
    def render_ids(self, messages: list[dict], tool_schemas: list[dict] | None = None,
                   add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
        """Ids and loss mask (1 on what the assistant wrote, its end-of-turn token included).
        Each piece is tokenised on its own: pieces meet at special tokens or newlines."""
        if self.renderer == "project":
            pieces = render_text_segments(messages, tool_schemas, add_generation_prompt)
            pieces = [p for text, trainable in pieces
                      for p in (self._assistant_segments(text) if trainable else [(text, False)])]
        else:
            pieces = self.template_segments(messages, tool_schemas, add_generation_prompt)
        ids, mask = [], []
        for text, trainable in pieces:
            seg = self.tokenizer.encode(text, add_special_tokens=False)
            ids += seg
            mask += [int(trainable)] * len(seg)
        return ids, mask

    def tool_response_ids(self, messages: list[dict], tool_schemas, contents: list[str]) -> list[int]:
        """Ids after a generated assistant turn (whose end-of-turn token is already there):
        the tool results and the next assistant header. `messages` ends with that turn's
        tool messages."""
        if self.renderer == "project":
            return tool_response_ids(self.tokenizer, contents)
        text = self.template_segments(messages, tool_schemas, True)[-1][0]
        return self.tokenizer.encode(text, add_special_tokens=False)

    def template_messages(self, messages: list[dict], tool_schemas) -> list[dict]:
        """Canonical messages -> what the template reads."""
        if self.tools_in_template:
            out = []
            for m in to_openai_messages(messages):
                if m.get("tool_calls"):  # templates want the arguments as an object
                    m = {**m, "content": m["content"] or "", "tool_calls": [
                        {**c, "function": {**c["function"],
                                           "arguments": json.loads(c["function"]["arguments"])}}
                        for c in m["tool_calls"]]}
                out.append(m)
            return out
        out = []
        for i, m in enumerate(messages):  # the project's tool prompt, in the model's markup
            if m["role"] == "system" and not out and tool_schemas:
                out.append({"role": "system",
                            "content": f"{m['content']}\n\n{tools_system_block(tool_schemas)}"})
            elif m["role"] == "tool":  # consecutive results share one user turn
                block = f"{TOOL_RESPONSE_OPEN}\n{m['content']}\n{TOOL_RESPONSE_CLOSE}"
                if i and messages[i - 1]["role"] == "tool":
                    out[-1]["content"] += "\n" + block
                else:
                    out.append({"role": "user", "content": block})
            else:
                out.append({"role": m["role"], "content": m["content"]})
        return out

    def _render(self, conv, tool_schemas, generation: bool) -> str:
        kwargs = {"tools": tool_schemas or []} if self.tools_in_template else {}
        return self.tokenizer.apply_chat_template(
            conv, tokenize=False, add_generation_prompt=generation,
            enable_thinking=self.enable_thinking, **kwargs)

    def _end_text(self) -> str:
        return self.tokenizer.convert_ids_to_tokens(self.turn_end_id)

    def template_segments(self, messages, tool_schemas, add_generation_prompt):
        """(text, trainable) pieces as the rollout builds them: the prompt, each assistant
        turn up to its end-of-turn token, and what the template puts between that token and
        the next assistant turn. A template that re-renders earlier turns (Qwen3 drops an
        empty <think> from them) is cut at the n-th end-of-turn token, which every render
        of the same messages places after the same turns."""
        conv = self.template_messages(messages, tool_schemas)
        end = self._end_text()
        segments, cut_turns = [], None

        def after_turns(text: str, n: int) -> str:
            pos = 0
            for _ in range(n):
                pos = text.index(end, pos) + len(end)
            return text[pos:]

        for i, m in enumerate(conv):
            if m["role"] != "assistant":
                continue
            head = self._render(conv[:i], tool_schemas, True)
            segments.append((head if cut_turns is None else after_turns(head, cut_turns), False))
            # The assistant turn as the template writes it: in the render that ends with it,
            # after as many end-of-turn tokens as the prompt has, and the prompt's header.
            turns = head.count(end)
            header = after_turns(head, turns)
            rest = after_turns(self._render(conv[:i + 1], tool_schemas, False), turns)
            if not rest.startswith(header) or end not in rest[len(header):]:
                raise ValueError(
                    "the chat template writes an assistant turn that does not follow its own "
                    f"generation prompt (or ends it without {end!r}); an agent episode cannot "
                    "be extended turn by turn with it: set agent.chat_format=project")
            body = rest[len(header):]
            body = body[:body.index(end) + len(end)]
            segments += self._assistant_segments(body)
            cut_turns = turns + body.count(end)
        tail = self._render(conv, tool_schemas, add_generation_prompt)
        if cut_turns is None:
            return [(tail, False)]
        segments.append((after_turns(tail, cut_turns), False))
        return [(t, trainable) for t, trainable in segments if t]

    def _assistant_segments(self, body: str) -> list[tuple[str, bool]]:
        if self.train_thinking or "</think>" not in body:
            return [(body, True)]
        cut = body.index("</think>") + len("</think>")
        return [(body[:cut], False), (body[cut:], True)]


def single_token(tokenizer, text: str) -> int | None:
    """The id of `text` when it is exactly one known token (never the unknown token)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1 or (tokenizer.unk_token_id is not None and ids[0] == tokenizer.unk_token_id):
        return None
    return ids[0]


def stop_token_ids(tokenizer, generation_config=None, extra: tuple[str, ...] = ()) -> list[int]:
    """EOS of the tokenizer and of `generation_config`, then `extra` markers that are single
    tokens, in that order, without repeats."""
    ids = [tokenizer.eos_token_id]
    eos = getattr(generation_config, "eos_token_id", None)
    ids += eos if isinstance(eos, list) else [eos]
    ids += [single_token(tokenizer, t) for t in extra]
    out = []
    for i in ids:
        if i is not None and i not in out:
            out.append(i)
    return out


def chat_format(tokenizer, agent, generation_config=None) -> ChatFormat:
    """The format for this tokenizer under `agent.chat_format` (auto | project | template)."""
    template = getattr(tokenizer, "chat_template", None)
    mode = agent.chat_format
    notes = []
    if mode == "auto":
        mode = "project" if (not template or template == PROJECT_TEMPLATE) else "template"
        if not template:
            notes.append("the tokenizer has no chat template: using the project's format")
            warnings.warn(f"stagent-ray: {notes[-1]}", stacklevel=2)
    if mode == "template" and not template:
        raise ValueError("agent.chat_format=template, but the tokenizer has no chat template")
    parser = agent.tool_parser if agent.tool_parser != "auto" else (
        "hermes" if mode == "project" else detect_parser(template))
    if parser not in PARSERS:
        raise ValueError(f"agent.tool_parser must be auto or one of {sorted(PARSERS)}, "
                         f"got {parser!r}")
    end_markers = (IM_END, "<|eot_id|>", "<|eom_id|>", "<|end|>", "</s>")
    if mode == "project":
        im_end = single_token(tokenizer, IM_END)
        if im_end is None:
            raise ValueError(f"the project's format needs {IM_END!r} as one token; this "
                             "tokenizer splits it: add it as a special token or set "
                             "agent.chat_format=template")
        stops = [im_end] + [i for i in stop_token_ids(tokenizer, generation_config)
                            if i != im_end]
        turn_end = im_end
    else:
        stops = stop_token_ids(tokenizer, generation_config, end_markers)
        in_template = [i for i in stops if tokenizer.convert_ids_to_tokens(i) in template]
        turn_end = in_template[0] if in_template else stops[0]
    call_close = single_token(tokenizer, TOOL_CALL_CLOSE) if parser == "hermes" else None
    if call_close is None and parser == "hermes":
        notes.append(f"{TOOL_CALL_CLOSE} is not one token: a call turn ends at the "
                     "end-of-turn token, and the markers are read as text")
    return ChatFormat(tokenizer, mode, parser, mode == "template" and template_takes_tools(template),
                      stops, agent.enable_thinking, agent.train_thinking, turn_end, call_close,
                      notes)


_FORMATS: dict = {}


def format_for(tokenizer, agent) -> ChatFormat:
    """`chat_format` with the generation config saved beside the tokenizer, once per
    tokenizer and setting (the agent loop asks for it every batch)."""
    key = (id(tokenizer), agent.chat_format, agent.tool_parser, agent.enable_thinking,
           agent.train_thinking)
    if key not in _FORMATS:
        generation_config = None
        folder = getattr(tokenizer, "name_or_path", "")
        if folder and os.path.exists(os.path.join(folder, "generation_config.json")):
            from transformers import GenerationConfig

            generation_config = GenerationConfig.from_pretrained(folder)
        _FORMATS[key] = (tokenizer, chat_format(tokenizer, agent, generation_config))
    return _FORMATS[key][1]
