"""Engines that work on conversations instead of token ids.

`oracle`: the world's scripted expert (the embedded default teacher).
`openai`: any OpenAI-compatible `/v1/chat/completions` endpoint (a hosted teacher, a judge,
or our own Serve ingress). Tool calls cross the wire in OpenAI's `tool_calls` form and are
turned back into `<tool_call>` text here, so every trajectory has one format.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from stagent_ray.models.chat_format import (format_tool_call, parse_assistant_turn)


class MessageEngine:
    def chat(self, queries: list, conversations: list[list[dict]], seeds: list[int]) -> list[str]:
        """Next assistant content for each conversation (`queries[i]` is the task record)."""
        raise NotImplementedError


class OracleEngine(MessageEngine):
    """Replays the family's scripted solver over the tool responses so far (stateless)."""

    def __init__(self, noise: float = 0.0):
        self.noise = noise

    def chat(self, queries, conversations, seeds):
        from stagent_ray.tasks.oracle import oracle_next_turn

        return [oracle_next_turn(q, [m for m in msgs if m["role"] != "system"],
                                 noise=self.noise, seed=seed)
                for q, msgs, seed in zip(queries, conversations, seeds)]


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
                text = m["content"][:m["content"].find("<tool_call>")].strip()
                pending_ids = [f"call_{i}_{j}" for j in range(len(parsed.calls))]
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


class OpenAIEngine(MessageEngine):
    """Chat completions over plain HTTP, with retries, backoff and a concurrency limit."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY",
                 tools: list[dict] | None = None, temperature: float = 1.0,
                 max_tokens: int = 1024, concurrency: int = 8, retries: int = 4,
                 timeout_s: float = 120.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.tools = model, tools
        self.api_key = os.environ.get(api_key_env or "", "")
        self.temperature, self.max_tokens = temperature, max_tokens
        self.concurrency, self.retries, self.timeout_s = concurrency, retries, timeout_s

    def complete(self, messages: list[dict], seed: int | None = None) -> dict:
        body = {"model": self.model, "messages": to_openai_messages(messages),
                "temperature": self.temperature, "max_tokens": self.max_tokens}
        if self.tools:
            body["tools"] = self.tools
        if seed is not None:
            body["seed"] = seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, json.dumps(body).encode(), headers)
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read())["choices"][0]["message"]
            except urllib.error.HTTPError as exc:
                if exc.code not in (429, 500, 502, 503, 504) or attempt == self.retries:
                    raise RuntimeError(f"{self.url} answered HTTP {exc.code}: "
                                       f"{exc.read()[:300]!r}") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.retries:
                    raise RuntimeError(f"cannot reach {self.url}: {exc}") from exc
            time.sleep(delay)
            delay *= 2

    def chat(self, queries, conversations, seeds):
        with ThreadPoolExecutor(self.concurrency) as pool:
            messages = list(pool.map(self.complete, conversations, seeds))
        return [from_openai_message(m) for m in messages]


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
