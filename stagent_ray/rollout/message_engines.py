"""Engines that work on conversations instead of token ids.

`oracle`: the world's scripted expert (the embedded default teacher).
`openai`: any OpenAI-compatible `/v1/chat/completions` endpoint (a hosted teacher, a judge,
or our own Serve ingress). Tool calls cross the wire in OpenAI's `tool_calls` form and are
turned back into `<tool_call>` text (models/chat_format.py), so every trajectory has one
format.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from stagent_ray.models.chat_format import from_openai_message, to_openai_messages


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
