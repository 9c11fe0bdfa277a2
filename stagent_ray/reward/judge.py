"""An LLM judge behind any OpenAI-compatible endpoint, grading with the same rubric as the
rule-based scorer: for real data that has no ground truth.

    judge = LLMJudge("http://127.0.0.1:8000/v1", "qwen3-32b")
    score = judge.judge(query_text, messages, task_type="retrieval")     # a reward.Score
    scores = judge.judge_many([(text, messages, "planning"), ...])       # concurrent, in order

The judge sees the user request, every assistant turn (tool calls included) with each tool
output, and the final answer, and must reply with one JSON verdict:

    {"planning": 1-5, "fidelity": 1-5, "presentation": 1-5, "hallucination": bool, "reason": "..."}

    value = 0                                           if hallucination (the veto)
    value = sum_d TASK_WEIGHTS[task_type]_d * (s_d - 1) / 4   otherwise

so 5/5/5 is 1.0 and 1/1/1 is 0.0, weighted exactly as `rubric.rubric_value` weights the
rule-based dimensions. `verified` is always False: a judge has no ground truth (see
`combined_score` for pairing it with a verifier).

Plain urllib (no openai package). HTTP 429/5xx, timeouts and refused connections are retried
with exponential backoff; a reply that is not a valid verdict is retried with a note saying
what was wrong; verdicts are cached by hash of (model, query text, messages), so re-scoring a
trajectory costs nothing, and identical trajectories judged at the same time share one request.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor

from stagent_ray.models.chat_format import UNSOLVED_MARKER, parse_assistant_turn
from stagent_ray.reward.rubric import TASK_WEIGHTS
from stagent_ray.reward.score import Score

DIMENSIONS = ("planning", "fidelity", "presentation")
RETRY_STATUS = (408, 429, 500, 502, 503, 504)

JUDGE_SYSTEM_PROMPT = f"""You are a strict grader of tool-using assistants for places, routes, trips, \
weather and travel. You see the user's request, every tool call the assistant made with the tool's \
output, and the assistant's final answer. Grade three dimensions from 1 (very poor) to 5 (excellent):

planning: the assistant called the right tools with sensible arguments, without failed, repeated or \
needless calls. A request that needs no tool must be answered without one; a request the tools cannot \
serve must be declined with the literal marker {UNSOLVED_MARKER} without wasted calls.
fidelity: every fact the final answer states (place names, times, dates, prices, distances, durations, \
temperatures, flight or train numbers) is supported by a tool output or by the user's request, allowing \
unit conversion and ordinary rounding; and the answer actually uses what the tools returned.
presentation: the final answer is complete, answers what was asked, and is clear and well formed: no \
leftover tool-call syntax, no raw JSON dump, no repeated sentences, a sensible length; it carries \
{UNSOLVED_MARKER} exactly when it declines.

hallucination: true when the final answer states any specific fact (a place, time, date, price, number, \
code) that no tool output and not the user's request supports. Facts in answers to requests that need \
no tool (general knowledge, arithmetic) are not hallucinations.

Reply with only one JSON object and nothing else:
{{"planning": <1-5>, "fidelity": <1-5>, "presentation": <1-5>, "hallucination": <true|false>, \
"reason": "<one or two sentences>"}}"""


def render_trajectory(query_text: str, messages: list[dict], final_answer: str, max_tool_chars: int) -> str:
    """The judge's user prompt: the request, the turns before the final answer, the final answer."""
    lines = ["## User request", query_text.strip(), "", "## Trajectory (tool calls and tool outputs)"]
    steps = messages[:-1]  # the last message is the final answer, shown on its own
    shown = 0
    for msg in steps:
        content = msg["content"] or ""
        if msg["role"] == "assistant":
            lines += ["[assistant]", content.strip()]
            shown += 1
        elif msg["role"] == "user" and content.strip() != query_text.strip():  # a later user turn
            lines += ["[user]", content.strip()]
            shown += 1
        elif msg["role"] == "tool":
            if len(content) > max_tool_chars:
                content = content[:max_tool_chars] + f" ... [{len(content) - max_tool_chars} more characters cut]"
            lines += ["[tool output]", content.strip()]
            shown += 1
    if not shown:
        lines.append("(no tool calls)")
    lines += ["", "## Final answer", final_answer.strip()]
    return "\n".join(lines)


def _as_score(value) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 <= value <= 5:
        return None
    return float(value)


def parse_verdict(text: str | None) -> tuple[dict | None, str]:
    """The first JSON object in `text` that is a valid verdict -> (verdict, ""), else (None, problem).

    Models wrap JSON in prose or ``` fences; raw_decode from every '{' finds it anyway.
    """
    if not text:
        return None, "the reply is empty"
    decoder = json.JSONDecoder()
    found = None
    start = text.find("{")
    while start >= 0:
        try:
            obj, _ = decoder.raw_decode(text, start)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            found = found if found is not None else obj
            if "planning" in obj:
                found = obj
                break
        start = text.find("{", start + 1)
    if found is None:
        return None, "the reply holds no JSON object"
    verdict = {}
    for dim in DIMENSIONS:
        verdict[dim] = _as_score(found.get(dim))
        if verdict[dim] is None:
            return None, f"'{dim}' must be a number from 1 to 5, got {found.get(dim)!r}"
    flag = found.get("hallucination")
    if isinstance(flag, str) and flag.strip().lower() in ("true", "false", "yes", "no"):
        flag = flag.strip().lower() in ("true", "yes")
    if not isinstance(flag, bool):
        return None, f"'hallucination' must be true or false, got {flag!r}"
    verdict["hallucination"] = flag
    verdict["reason"] = str(found.get("reason", "")).strip()
    return verdict, ""


class LLMJudge:
    """Grades trajectories through an OpenAI-compatible /chat/completions endpoint. Thread-safe."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, concurrency: int = 8,
                 retries: int = 4, timeout_s: float = 60.0, cache_size: int = 100_000,
                 temperature: float = 0.0, max_tokens: int = 512, max_tool_chars: int = 6000,
                 backoff_s: float = 0.5):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"LLMJudge needs an http:// or https:// base_url, got {base_url!r}")
        self.args = dict(base_url=base_url, model=model, api_key_env=api_key_env, concurrency=concurrency,
                         retries=retries, timeout_s=timeout_s, cache_size=cache_size, temperature=temperature,
                         max_tokens=max_tokens, max_tool_chars=max_tool_chars, backoff_s=backoff_s)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = None
        if api_key_env:
            self.api_key = os.environ.get(api_key_env)
            if not self.api_key:
                raise ValueError(f"LLMJudge: environment variable {api_key_env} (the judge's API key) is not set")
        self.concurrency, self.retries, self.timeout_s = concurrency, retries, timeout_s
        self.cache_size, self.temperature, self.max_tokens = cache_size, temperature, max_tokens
        self.max_tool_chars, self.backoff_s = max_tool_chars, backoff_s
        self._cache: OrderedDict[str, dict] = OrderedDict()
        self._inflight: dict[str, Future] = {}
        self._lock = threading.Lock()
        # bounds requests in flight across all callers, not just one judge_many
        self._slots = threading.BoundedSemaphore(concurrency)
        self._stats = {"judged": 0, "cache_hits": 0, "requests": 0, "retries": 0, "malformed": 0}

    def __reduce__(self):
        # Ray ships the judge to actors: rebuild from the arguments (fresh cache, locks, counters)
        return (_judge_from_args, (self.args,))

    def stats(self) -> dict:
        with self._lock:
            return {**self._stats, "cache_entries": len(self._cache)}

    # ---- public
    def judge(self, query_text: str, messages: list[dict], task_type: str = "retrieval") -> Score:
        """Score one trajectory (our messages, or OpenAI-style ones with `tool_calls`)."""
        if task_type not in TASK_WEIGHTS:
            raise ValueError(f"unknown task_type {task_type!r} (one of {', '.join(TASK_WEIGHTS)})")
        if any("tool_calls" in m or not isinstance(m.get("content", ""), (str, type(None))) for m in messages):
            from stagent_ray.models.chat_format import from_openai_messages

            messages = from_openai_messages(messages)
        last = messages[-1] if messages else {"role": "", "content": ""}
        final = parse_assistant_turn(last["content"] or "", max_calls=64) if last["role"] == "assistant" else None
        if final is None or not final.is_final:  # as score_trajectory: nothing to grade, no request spent
            return Score(0.0, False, {"veto": False, "judge_model": self.model}, "no final answer")

        verdict = self._verdict(query_text, messages, final.answer)
        weights = TASK_WEIGHTS[task_type]
        dims = {d: (verdict[d] - 1) / 4 for d in DIMENSIONS}
        rubric = sum(w * dims[d] for w, d in zip(weights, DIMENSIONS))
        veto = verdict["hallucination"]
        parts = {**{d: round(v, 4) for d, v in dims.items()}, "rubric": round(rubric, 4), "veto": veto,
                 "judge_model": self.model,
                 "verdict": {d: verdict[d] for d in (*DIMENSIONS, "hallucination")}}
        if veto:
            return Score(0.0, False, parts, "hallucination: " + verdict["reason"])
        return Score(round(rubric, 6), False, parts, verdict["reason"])

    def judge_many(self, items) -> list[Score]:
        """Score [(query_text, messages[, task_type]) or {"query_text", "messages", "task_type"}, ...]
        with at most `concurrency` requests in flight; results in order."""
        def one(item):
            return self.judge(**item) if isinstance(item, dict) else self.judge(*item)

        items = list(items)
        if not items:
            return []
        with ThreadPoolExecutor(min(self.concurrency, len(items))) as pool:
            return list(pool.map(one, items))

    # ---- the verdict: cache, then requests
    def _verdict(self, query_text: str, messages: list[dict], answer: str) -> dict:
        key = hashlib.sha256(json.dumps([self.model, query_text, messages], sort_keys=True,
                                        ensure_ascii=False).encode()).hexdigest()
        with self._lock:
            self._stats["judged"] += 1
            if key in self._cache:
                self._stats["cache_hits"] += 1
                self._cache.move_to_end(key)
                return dict(self._cache[key])
            waiting = self._inflight.get(key)
            if waiting is None:
                self._inflight[key] = mine = Future()
        if waiting is not None:  # the same trajectory is being judged right now: share its answer
            with self._lock:
                self._stats["cache_hits"] += 1
            return dict(waiting.result())
        try:
            prompt = render_trajectory(query_text, messages, answer, self.max_tool_chars)
            verdict = self._grade(prompt)
            mine.set_result(verdict)
        except BaseException as e:
            mine.set_exception(e)
            raise
        finally:
            with self._lock:
                del self._inflight[key]
        with self._lock:
            if self.cache_size > 0:
                self._cache[key] = verdict
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return dict(verdict)

    def _grade(self, prompt: str) -> dict:
        """Ask until the reply is a valid verdict; a retry tells the model what was wrong."""
        base = [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        messages = base
        for _ in range(self.retries + 1):
            reply = self._complete(messages)
            verdict, problem = parse_verdict(reply)
            if verdict is not None:
                return verdict
            with self._lock:
                self._stats["malformed"] += 1
            messages = base + [{"role": "assistant", "content": reply or ""},
                               {"role": "user", "content": f"That is not a valid verdict: {problem}. Reply with "
                                                           "only the JSON object in the format given."}]
        raise RuntimeError(f"judge {self.model!r} at {self.url} gave no valid verdict in {self.retries + 1} "
                           f"attempts; last problem: {problem}; last reply: {(reply or '')[:300]!r}")

    def _complete(self, messages: list[dict]) -> str | None:
        """One chat completion's text (None when the body has no message), with HTTP retries."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": self.temperature,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                with self._slots:
                    with self._lock:
                        self._stats["requests"] += 1
                    request = urllib.request.Request(self.url, body, headers)
                    with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                        payload = resp.read()
                try:
                    return json.loads(payload)["choices"][0]["message"]["content"]
                except (ValueError, KeyError, IndexError, TypeError):
                    return None  # a 200 without a message: counted as a malformed verdict
            except urllib.error.HTTPError as exc:
                if exc.code not in RETRY_STATUS or attempt == self.retries:
                    raise RuntimeError(f"judge endpoint {self.url} answered HTTP {exc.code} (attempt "
                                       f"{attempt + 1} of {self.retries + 1}): {exc.read()[:300]!r}") from exc
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                if attempt == self.retries:
                    reason = getattr(exc, "reason", exc)
                    raise RuntimeError(f"cannot reach judge endpoint {self.url} after {attempt + 1} attempts: "
                                       f"{reason}") from exc
            with self._lock:
                self._stats["retries"] += 1
            time.sleep(delay)
            delay *= 2


def _judge_from_args(args: dict) -> LLMJudge:
    return LLMJudge(**args)


def combined_score(judge_score: Score, verifier_score: Score, weight: float = 0.5) -> Score:
    """A judge score and a rule-based verifier's score in one.

    value = weight * judge + (1 - weight) * verifier, and 0 when either one vetoes (a fact no
    tool output supports). `verified` comes from the verifier: only it knows the ground truth.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    veto = bool(judge_score.parts.get("veto")) or bool(verifier_score.parts.get("veto"))
    value = 0.0 if veto else weight * judge_score.value + (1 - weight) * verifier_score.value
    parts = {"judge": judge_score.value, "verifier": verifier_score.value, "weight": weight, "veto": veto,
             "rubric": judge_score.parts.get("rubric"), "verified": float(verifier_score.verified),
             "judge_parts": judge_score.parts, "verifier_parts": verifier_score.parts}
    reason = f"judge: {judge_score.reason}; verifier: {verifier_score.reason}"
    return Score(round(value, 6), verifier_score.verified, parts, reason)
