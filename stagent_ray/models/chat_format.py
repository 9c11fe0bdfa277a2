"""The chat format: Qwen/Hermes-style turns with <tool_call> blocks.

A conversation is a list of messages `{"role": "system"|"user"|"assistant"|"tool",
"content": str}`. An assistant turn that calls a tool carries the call inside its content:

    <tool_call>
    {"name": "map_search_places", "arguments": {"query": "cafe"}}
    </tool_call>

Rendering (`render_ids`) gives token ids plus a loss mask that is 1 exactly on the tokens
the assistant wrote (its content and the closing `<|im_end|>`), so SFT and RL train only on
what the model produced. Parsing (`parse_assistant_turn`) turns generated text into tool
calls, a final answer, or a structured error that the agent loop shows the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
UNSOLVED_MARKER = "[Unsolved]"
SPECIAL_TOKENS = [IM_START, IM_END, TOOL_CALL_OPEN, TOOL_CALL_CLOSE, TOOL_RESPONSE_OPEN,
                  TOOL_RESPONSE_CLOSE, "<|endoftext|>"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a spatio-temporal assistant for places, routes, trips and weather. "
    "Call tools when you need facts; state only facts that a tool returned. "
    f"If the tools cannot serve a request, answer with {UNSOLVED_MARKER} and say why.")


# The renderer below as a Jinja chat template: the tiny tokenizer carries it, so its
# checkpoints work with `apply_chat_template`, vLLM and TGI (tests check they agree).
PROJECT_TEMPLATE = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' and loop.first and tools %}"
    "{%- elif message.role == 'system' or message.role == 'user' %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}"
    "{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def format_tool_call(name: str, arguments: dict) -> str:
    """The exact text an assistant writes to call one tool."""
    payload = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{payload}\n{TOOL_CALL_CLOSE}"


def format_tool_response(result) -> str:
    """Tool results travel as compact JSON text."""
    if isinstance(result, str):
        return result
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


def compact_tool_schemas(tool_schemas: list[dict]) -> list[dict]:
    """Names and argument types only (`*` = required): ~500 tokens instead of ~2,800 for the
    ten world tools. For small models trained from scratch, which learn the tools from data."""
    out = []
    for schema in tool_schemas:
        fn = schema.get("function", schema)
        params = fn.get("parameters", {})
        required = set(params.get("required", []))
        out.append({"name": fn["name"], "args": {
            k: str(v.get("type", "any")) + ("*" if k in required else "")
            for k, v in params.get("properties", {}).items()}})
    return out


def prompt_tools(tool_schemas: list[dict], mode: str = "full") -> list[dict]:
    """The tool list as shown in the system prompt (`agent.tool_prompt`: full | compact |
    none). `none` is for models trained from scratch on this world: they learn the tools
    from their SFT data, and a prompt of 60 tokens instead of 500 trains 2-3x faster."""
    if mode == "none":
        return []
    return compact_tool_schemas(tool_schemas) if mode == "compact" else tool_schemas


def tools_system_block(tool_schemas: list[dict]) -> str:
    """The tool list appended to the system prompt (same text as the Jinja template)."""
    lines = ["# Tools", "", "You may call one or more functions to assist with the user query.",
             "", "You are provided with function signatures within <tools></tools> XML tags:",
             "<tools>"]
    lines += [json.dumps(schema, ensure_ascii=False) for schema in tool_schemas]
    lines += ["</tools>", "",
              "For each function call, return a json object with function name and arguments "
              "within <tool_call></tool_call> XML tags:",
              "<tool_call>", '{"name": <function-name>, "arguments": <args-json-object>}',
              "</tool_call>"]
    return "\n".join(lines)


def render_text_segments(messages: list[dict], tool_schemas: list[dict] | None = None,
                         add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """Split the rendered conversation into (text, trainable) segments.

    Consecutive tool messages share one user turn, as in Qwen3's template.
    """
    segments: list[tuple[str, bool]] = []
    msgs = list(messages)
    if tool_schemas:
        if msgs and msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
        else:
            system = ""
        system = f"{system}\n\n" if system else ""
        segments.append((f"{IM_START}system\n{system}{tools_system_block(tool_schemas)}{IM_END}\n",
                         False))
    for i, msg in enumerate(msgs):
        role, content = msg["role"], msg["content"]
        if role == "assistant":
            segments.append((f"{IM_START}assistant\n", False))
            segments.append((f"{content}{IM_END}", True))
            segments.append(("\n", False))
        elif role == "tool":
            first = i == 0 or msgs[i - 1]["role"] != "tool"
            last = i == len(msgs) - 1 or msgs[i + 1]["role"] != "tool"
            text = (f"{IM_START}user" if first else "") + \
                f"\n{TOOL_RESPONSE_OPEN}\n{content}\n{TOOL_RESPONSE_CLOSE}" + \
                (f"{IM_END}\n" if last else "")
            segments.append((text, False))
        elif role in ("system", "user"):
            segments.append((f"{IM_START}{role}\n{content}{IM_END}\n", False))
        else:
            raise ValueError(f"unknown message role {role!r}")
    if add_generation_prompt:
        segments.append((f"{IM_START}assistant\n", False))
    return segments


def render_ids(tokenizer, messages: list[dict], tool_schemas: list[dict] | None = None,
               add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """Token ids and loss mask (1 on assistant-written tokens) of a conversation.

    Each segment is tokenised on its own; segment borders fall on special tokens or
    newlines, so the ids equal tokenising the whole text (checked in the tests against
    `apply_chat_template`).
    """
    ids: list[int] = []
    mask: list[int] = []
    for text, trainable in render_text_segments(messages, tool_schemas, add_generation_prompt):
        seg = tokenizer.encode(text, add_special_tokens=False)
        ids += seg
        mask += [int(trainable)] * len(seg)
    return ids, mask


def tool_response_ids(tokenizer, results: list[str]) -> list[int]:
    """Ids appended after an assistant turn that called tools: closes the assistant turn's
    trailing newline, the tool turn, and opens the next assistant turn."""
    msgs = [{"role": "tool", "content": r} for r in results]
    text = "\n" + "".join(t for t, _ in render_text_segments(msgs)) + f"{IM_START}assistant\n"
    return tokenizer.encode(text, add_special_tokens=False)


# ---------------------------------------------------------------- parsing

@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class ParsedTurn:
    """What an assistant turn amounts to: calls, or a final answer, or an error."""
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    error: dict | None = None  # {"error": {"type": ..., "message": ...}}

    @property
    def is_final(self) -> bool:
        return self.error is None and not self.calls


def error_turn(kind: str, message: str) -> ParsedTurn:
    return ParsedTurn(error={"error": {"type": kind, "message": message}})


def check_call(name, arguments, tool_schemas) -> dict | None:
    """The structured error of a call that does not fit its tool (None when it fits): a
    string name, an object of arguments, and with `tool_schemas`, a known tool whose required
    arguments are there with their JSON types (a shallow check)."""
    if not isinstance(name, str) or not name:
        return {"type": "malformed_tool_call", "message": "tool call needs a string 'name'"}
    if not isinstance(arguments, dict):
        return {"type": "malformed_tool_call", "message": "'arguments' must be a JSON object"}
    by_name = {s.get("function", s)["name"]: s.get("function", s) for s in (tool_schemas or [])}
    if not by_name:
        return None
    if name not in by_name:
        return {"type": "unknown_tool", "message": f"unknown tool {name!r}"}
    params = by_name[name].get("parameters", by_name[name])
    props = params.get("properties", {})
    for req in params.get("required", []):
        if req not in arguments:
            return {"type": "invalid_arguments",
                    "message": f"missing required argument {req!r} for {name}"}
    py_types = {"string": str, "integer": int, "number": (int, float), "boolean": bool,
                "array": list, "object": dict}
    for key, value in arguments.items():
        if key not in props:
            return {"type": "invalid_arguments", "message": f"unknown argument {key!r} for {name}"}
        want = props[key].get("type")
        ok = py_types.get(want)
        if ok is not None and (not isinstance(value, ok) or
                               (want in ("integer", "number") and isinstance(value, bool))):
            return {"type": "invalid_arguments", "message":
                    f"argument {key!r} of {name} must be {want}, got {type(value).__name__}"}
    return None


def split_think(text: str) -> tuple[str, str]:
    """(the leading `<think>...</think>` block with what follows it up to the reply, the
    reply). Thinking is never parsed for tool calls or scored as the answer."""
    if THINK_CLOSE not in text:
        return "", text
    cut = text.index(THINK_CLOSE) + len(THINK_CLOSE)
    rest = text[cut:]
    reply = rest.lstrip("\n")
    return text[:cut] + rest[:len(rest) - len(reply)], reply


def parse_assistant_turn(text: str, tool_schemas: list[dict] | None = None,
                         max_calls: int = 1) -> ParsedTurn:
    """Parse generated assistant text (without `<|im_end|>`).

    No `<tool_call>` → a final answer. Otherwise every block must be closed, hold a JSON
    object with a known `name` and an `arguments` object that fits the schema, nothing but
    whitespace may follow the last block, and at most `max_calls` blocks may appear.
    """
    text = split_think(text.replace(IM_END, ""))[1]
    if TOOL_CALL_OPEN not in text:
        if TOOL_CALL_CLOSE in text:
            return error_turn("malformed_tool_call", "found </tool_call> without <tool_call>")
        if TOOL_RESPONSE_OPEN in text or TOOL_RESPONSE_CLOSE in text:
            return error_turn("malformed_turn", "the assistant may not write <tool_response> blocks")
        if not text.strip():
            return error_turn("empty_answer", "the assistant turn is empty")
        return ParsedTurn(answer=text.strip())
    calls: list[ToolCall] = []
    rest = text
    while TOOL_CALL_OPEN in rest:
        start = rest.index(TOOL_CALL_OPEN) + len(TOOL_CALL_OPEN)
        end = rest.find(TOOL_CALL_CLOSE, start)
        if end < 0:
            return error_turn("unterminated_tool_call", "<tool_call> block is not closed")
        body = rest[start:end]
        if TOOL_CALL_OPEN in body:
            return error_turn("malformed_tool_call", "nested <tool_call> inside a block")
        try:
            call = json.loads(body)
        except (json.JSONDecodeError, RecursionError) as exc:
            return error_turn("invalid_json", f"tool call is not valid JSON: {str(exc)[:120]}")
        if not isinstance(call, dict):
            return error_turn("invalid_json", "tool call must be a JSON object")
        if set(call) - {"name", "arguments"}:
            extra = sorted(set(call) - {"name", "arguments"})
            return error_turn("malformed_tool_call", f"unexpected keys in tool call: {extra}")
        name, arguments = call.get("name"), call.get("arguments", {})
        problem = check_call(name, arguments, tool_schemas)
        if problem:
            return ParsedTurn(error={"error": problem})
        calls.append(ToolCall(name, arguments))
        rest = rest[end + len(TOOL_CALL_CLOSE):]
        next_open = rest.find(TOOL_CALL_OPEN)
        if TOOL_CALL_CLOSE in rest[:next_open if next_open >= 0 else None]:
            return error_turn("malformed_tool_call", "stray </tool_call>")
        if rest.strip() and TOOL_CALL_OPEN not in rest:
            return error_turn("text_after_tool_call", "text follows the last </tool_call>")
        if TOOL_CALL_OPEN in rest and rest[:rest.index(TOOL_CALL_OPEN)].strip():
            return error_turn("text_after_tool_call", "text between tool calls")
    if len(calls) > max_calls:
        return error_turn("too_many_tool_calls",
                      f"{len(calls)} tool calls in one turn; at most {max_calls} allowed")
    return ParsedTurn(calls=calls)


# ---- OpenAI chat messages <-> our messages (the openai engine, the judge, the Serve ingress)

def to_openai_messages(messages: list[dict]) -> list[dict]:
    """Our messages -> OpenAI chat messages with `tool_calls` and `tool_call_id`.

    OpenAI-style servers answer HTTP 400 unless every tool call id gets a tool message and
    every tool message answers a call. The agent loop rejects some turns whole (more calls
    than `agent.max_calls_per_turn`) with one error observation: that error answers each of
    the turn's calls. A turn that did not parse has no calls, so its error goes back as a
    user message.
    """
    out, pending_ids = [], []

    def answer_rejected_calls():
        while pending_ids and out[-1]["role"] == "tool":
            out.append({"role": "tool", "tool_call_id": pending_ids.pop(0),
                        "content": out[-1]["content"]})
        pending_ids.clear()

    for i, m in enumerate(messages):
        if m["role"] != "tool":
            answer_rejected_calls()
        if m["role"] == "assistant":
            parsed = parse_assistant_turn(m["content"], max_calls=64)
            if parsed.calls:
                think, reply = split_think(m["content"])  # calls in <think> are no calls
                text = (think + reply[:reply.find(TOOL_CALL_OPEN)]).strip()
                pending_ids = [f"call{i:03d}{j:02d}" for j in range(len(parsed.calls))]  # 9 chars, as Mistral wants
                out.append({"role": "assistant", "content": text or None, "tool_calls": [
                    {"id": cid, "type": "function",
                     "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                    for cid, c in zip(pending_ids, parsed.calls)]})
                continue
            out.append({"role": "assistant", "content": m["content"]})
        elif m["role"] == "tool" and pending_ids:
            out.append({"role": "tool", "tool_call_id": pending_ids.pop(0),
                        "content": m["content"]})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"Your last turn could not be run: "
                                                   f"{m['content']}"})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    answer_rejected_calls()
    return out


def from_openai_message(message: dict) -> str:
    """An OpenAI assistant message -> our assistant content (text + <tool_call> blocks)."""
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or []:
        fn = call.get("function", {})
        try:
            arguments = json.loads(fn.get("arguments") or "{}")
        except json.JSONDecodeError:
            arguments = {"_unparseable": fn.get("arguments")}
        parts.append(format_tool_call(fn.get("name", ""), arguments))
    return "\n".join(p for p in parts if p).strip()


def from_openai_messages(messages: list[dict]) -> list[dict]:
    """OpenAI chat messages (with `tool_calls`, content parts) -> our messages."""
    out = []
    for m in messages:
        role, content = m.get("role"), m.get("content")
        if isinstance(content, list):  # content parts: keep the text ones
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if role == "assistant":
            out.append({"role": "assistant",
                        "content": from_openai_message({**m, "content": content})})
        elif role in ("system", "user", "tool"):
            out.append({"role": role, "content": content or ""})
        elif role == "developer":
            out.append({"role": "system", "content": content or ""})
        else:
            raise ValueError(f"unsupported message role {role!r}")
    return out
