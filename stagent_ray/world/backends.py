"""Tool backends (world, replay, recording, http) and the ToolExecutor in front of them.

The executor is what rollouts use: it validates every call, caches answers (LRU), runs calls
concurrently under a timeout, retries infrastructure faults and counts everything. It is
built inside Ray actors, so `make_executor(...)` takes plain config and executors pickle as
that config.

Fault injection (`config.FaultConfig`, off by default) sits in the executor: a drawn share of
call attempts hangs past the timeout, raises, or gets a payload that is not a JSON object
(a faulty link to the tool service, so a cached answer does not protect a call). The draw is
a hash of (seed, the caller's key, tool, arguments, attempt): a run with the same seed meets
the same faults whatever the batching or the state of the cache.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import threading
import urllib.error
import urllib.request
from collections import Counter, OrderedDict

from stagent_ray.world.generate import load_world
from stagent_ray.world.schemas import (SCHEMAS, ToolBackend, canonical_json, tool_error,
                                       validate_call)
from stagent_ray.world.tools import call_tool

# errors that say something about the backend at that moment, not about the call: never recorded
TRANSIENT_ERRORS = ("timeout", "internal_error", "backend_error")


TOOL_FAULTS = ("timeout", "error", "malformed")  # the injectable kinds, faults.tool_<kind>
# What an injected `malformed` fault returns: a truncated body, as from a proxy cut mid-reply.
MALFORMED_PAYLOAD = '{"results": [{"name": "Jade Lo'


def _is_error(result) -> bool:
    return isinstance(result, dict) and "error" in result


def is_infra_error(result) -> bool:
    """A failure of the tool infrastructure (not of the call the model wrote): retryable."""
    return _is_error(result) and result["error"].get("type") in TRANSIENT_ERRORS


def fault_draw(seed: int, key: str) -> float:
    """A number in [0, 1) fixed by (seed, key)."""
    digest = hashlib.sha1(f"{seed}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def injected_tool_fault(faults: dict | None, key: str) -> str | None:
    """Which tool fault, if any, the call with this key meets (`faults`: a FaultConfig dict)."""
    if not faults:
        return None
    u = fault_draw(faults["seed"], key)
    for kind in TOOL_FAULTS:
        u -= faults[f"tool_{kind}"]
        if u < 0:
            return kind
    return None


class WorldBackend(ToolBackend):
    """The seeded synthetic world (default)."""

    def __init__(self, world):
        self.world = world

    def call(self, name: str, arguments: dict) -> dict:
        return call_tool(self.world, name, arguments)


class ReplayBackend(ToolBackend):
    """Answers from a recorded JSONL file of {"tool", "arguments", "response"} lines.

    Key = tool name + canonical JSON of the arguments; the last line for a key wins.
    A call that was never recorded gets a `replay_miss` error.
    """

    def __init__(self, path: str):
        self.path = path
        self.responses: dict[tuple[str, str], dict] = {}
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    self.responses[(row["tool"], canonical_json(row["arguments"]))] = row["response"]

    def call(self, name: str, arguments: dict) -> dict:
        response = self.responses.get((name, canonical_json(arguments)))
        if response is None:
            return tool_error("replay_miss", f"no recorded response for {name} with arguments "
                              f"{canonical_json(arguments)} in {self.path}")
        return copy.deepcopy(response)


class RecordingBackend(ToolBackend):
    """Forwards to `inner` and appends each answered call to `path` in the replay format."""

    def __init__(self, inner: ToolBackend, path: str):
        self.inner = inner
        self.path = path
        self._lock = threading.Lock()

    def schemas(self) -> list[dict]:
        return self.inner.schemas()

    def call(self, name: str, arguments: dict) -> dict:
        response = self.inner.call(name, arguments)
        if not (_is_error(response) and response["error"].get("type") in TRANSIENT_ERRORS):
            line = json.dumps({"tool": name, "arguments": arguments, "response": response}, ensure_ascii=False)
            with self._lock, open(self.path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
        return response


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect becomes an HTTPError: we only ever talk to base_url


class HttpBackend(ToolBackend):
    """A user's live tool service at one URL.

    Each call POSTs {"name": ..., "arguments": {...}} as JSON to exactly `base_url` and expects a
    JSON object back (a result, or {"error": {...}}). Model-supplied values only ever go in the
    body; redirects and environment proxies are disabled. `schemas()` returns the `schemas`
    given here, else the ten built-in tool schemas.
    """

    def __init__(self, base_url: str, timeout_s: float = 10.0, schemas: list[dict] | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"HttpBackend needs an http:// or https:// URL, got {base_url!r}")
        self.base_url = base_url
        self.timeout_s = timeout_s
        self._schemas = schemas
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def schemas(self) -> list[dict]:
        return copy.deepcopy(self._schemas if self._schemas is not None else SCHEMAS)

    def call(self, name: str, arguments: dict) -> dict:
        body = json.dumps({"name": name, "arguments": arguments}).encode("utf-8")
        request = urllib.request.Request(self.base_url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                result = json.loads(payload)
                if _is_error(result):
                    return result
            except ValueError:
                pass
            return tool_error("backend_error", f"{name}: HTTP {e.code} from tool service")
        except (urllib.error.URLError, OSError) as e:
            if isinstance(e, TimeoutError) or isinstance(getattr(e, "reason", None), TimeoutError):
                return tool_error("timeout", f"{name}: tool service did not answer within {self.timeout_s} s")
            return tool_error("backend_error", f"{name}: cannot reach tool service: {e}")
        try:
            result = json.loads(payload)
        except ValueError:
            return tool_error("backend_error", f"{name}: tool service returned invalid JSON")
        if not isinstance(result, dict):
            return tool_error("backend_error", f"{name}: tool service returned {type(result).__name__}, not an object")
        return result


class ToolExecutor:
    """Validation, an LRU cache, timeouts, retries and counters in front of a ToolBackend.

    Thread-safe. Errors (validation, semantic, timeout) are never cached. Callers get copies,
    so mutating a result cannot corrupt the cache. A backend call that fails for
    infrastructure reasons (timeout, raised, malformed payload, backend error) is tried
    `retries` more times. `faults` (a FaultConfig dict) injects such failures.
    """

    def __init__(self, backend: ToolBackend, cache_size: int = 4096, timeout_s: float | None = 10.0,
                 config: dict | None = None, retries: int = 0, faults: dict | None = None):
        self.backend = backend
        self.cache_size = cache_size
        self.timeout_s = timeout_s
        self.retries = retries
        self.faults = faults if faults and any(faults[f"tool_{k}"] for k in TOOL_FAULTS) else None
        self.config = config  # make_executor kwargs, used to pickle cheaply
        self._schema_by_name = {s["function"]["name"]: s for s in backend.schemas()}
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._stats = {"calls": 0, "errors": 0, "cache_hits": 0, "cache_misses": 0, "timeouts": 0}
        self._fault_stats: Counter = Counter()

    def __reduce__(self):
        if self.config is not None:
            return (_executor_from_config, (self.config,))
        return (ToolExecutor, (self.backend, self.cache_size, self.timeout_s, None, self.retries,
                               self.faults))

    def schemas(self) -> list[dict]:
        return [copy.deepcopy(s) for s in self._schema_by_name.values()]

    def stats(self) -> dict:
        with self._lock:
            return {**self._stats, "cache_entries": len(self._cache)}

    def fault_stats(self) -> dict:
        """injected_<kind>, infra_errors (injected or real), retried, unrecovered."""
        with self._lock:
            return dict(self._fault_stats)

    # ---- the steps shared by call and acall
    def _begin(self, name, arguments):
        """Validate and look up the cache. Returns (key, args, result-or-None)."""
        args, err = validate_call(name, arguments, self._schema_by_name)
        with self._lock:
            self._stats["calls"] += 1
            if err:
                self._stats["errors"] += 1
                return None, None, err
            key = (name, canonical_json(args))
            if key in self._cache:
                self._stats["cache_hits"] += 1
                self._cache.move_to_end(key)
                return key, args, copy.deepcopy(self._cache[key])
            self._stats["cache_misses"] += 1
        return key, args, None

    def _finish(self, key, result) -> dict:
        with self._lock:
            if _is_error(result):
                self._stats["errors"] += 1
                if result["error"].get("type") == "timeout":
                    self._stats["timeouts"] += 1
            elif self.cache_size > 0:
                self._cache[key] = copy.deepcopy(result)
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def _backend_call(self, name: str, args: dict, fault: str | None = None) -> dict:
        try:
            if fault == "timeout":  # the synchronous path has no timer: report it as a backend would
                result = tool_error("timeout", f"{name}: tool service did not answer (injected fault)")
            elif fault == "error":
                raise RuntimeError("injected fault: the tool backend raised")
            elif fault == "malformed":
                result = MALFORMED_PAYLOAD
            else:
                result = self.backend.call(name, args)
        except Exception as e:  # a backend bug must not kill a rollout
            return tool_error("internal_error", f"{name} failed: {type(e).__name__}: {e}")
        if not isinstance(result, dict):
            return tool_error("internal_error", f"{name}: backend returned {type(result).__name__}, not an object")
        return result

    async def _attempt(self, name: str, args: dict, fault: str | None) -> dict:
        if fault == "timeout" and self.timeout_s:
            await asyncio.sleep(2 * self.timeout_s)  # hangs: the executor's timer fires first
        return await asyncio.to_thread(self._backend_call, name, args, fault)

    def _fault_for(self, key: str, name: str, args: dict, attempt: int) -> str | None:
        if self.faults is None:
            return None
        return injected_tool_fault(self.faults, f"{key}|{name}|{canonical_json(args)}|{attempt}")

    def _tally(self, result: dict, fault: str | None, attempt: int, counts: Counter | None) -> bool:
        """Count one backend attempt; True when it failed for infrastructure reasons and
        may be retried."""
        tally = [f"injected_{fault}"] if fault else []
        infra = is_infra_error(result)
        if infra:
            tally += ["infra_errors", "retried" if attempt < self.retries else "unrecovered"]
        with self._lock:
            self._fault_stats.update(tally)
        if counts is not None:
            counts.update(tally)
        return infra and attempt < self.retries

    # ---- public calls
    def call(self, name: str, arguments, key: str = "", counts: Counter | None = None) -> dict:
        """Run one call synchronously (no executor timeout; HttpBackend has its own).
        `key` names the caller's context for fault draws; `counts` collects fault tallies."""
        cache_key, args, cached = self._begin(name, arguments)
        if cache_key is None:  # invalid call: the error is the answer
            return cached
        for attempt in range(self.retries + 1):
            fault = self._fault_for(key, name, args, attempt)
            if cached is not None and fault is None:
                return cached
            result = self._backend_call(name, args, fault)
            if not self._tally(result, fault, attempt, counts):
                break
        return self._finish(cache_key, result)

    async def acall(self, name: str, arguments, key: str = "", counts: Counter | None = None) -> dict:
        """Run one call in a worker thread, giving up after `timeout_s` with a `timeout` error."""
        cache_key, args, cached = self._begin(name, arguments)
        if cache_key is None:
            return cached
        for attempt in range(self.retries + 1):
            fault = self._fault_for(key, name, args, attempt)
            if cached is not None and fault is None:
                return cached
            try:
                result = await asyncio.wait_for(self._attempt(name, args, fault), self.timeout_s)
            except asyncio.TimeoutError:
                result = tool_error("timeout", f"{name} did not finish within {self.timeout_s} s")
            if not self._tally(result, fault, attempt, counts):
                break
        return self._finish(cache_key, result)

    async def acall_many(self, calls, key: str = "", counts: Counter | None = None) -> list[dict]:
        """Run [(name, arguments), ...] concurrently; results in the same order."""
        return list(await asyncio.gather(*(self.acall(name, args, f"{key}/{i}", counts)
                                           for i, (name, args) in enumerate(calls))))


def make_executor(backend: str = "world", seed: int = 0, n_cities: int = 4, pois_per_city: int = 320,
                  today: str = "2026-06-01", replay_path: str | None = None, http_url: str | None = None,
                  cache_size: int = 4096, timeout_s: float = 10.0, record_path: str | None = None,
                  mcp_servers: list[dict] | None = None, retries: int = 0,
                  faults: dict | None = None) -> ToolExecutor:
    """Build an executor from plain config (what Ray actors receive).

    backend: "world" (seeded world, cached per process by load_world), "replay" (needs
    replay_path), "http" (needs http_url) or "mcp" (needs mcp_servers: server spec dicts, see
    world/mcp_client.py). record_path: also append every answered call to
    this JSONL file, for later replay. retries: how often an infrastructure-failed call is
    tried again; faults: a FaultConfig dict of faults to inject.
    """
    config = dict(backend=backend, seed=seed, n_cities=n_cities, pois_per_city=pois_per_city, today=today,
                  replay_path=replay_path, http_url=http_url, cache_size=cache_size, timeout_s=timeout_s,
                  record_path=record_path, mcp_servers=mcp_servers, retries=retries, faults=faults)
    if backend == "world":
        inner: ToolBackend = WorldBackend(load_world(seed, n_cities, pois_per_city, today))
    elif backend == "replay":
        if not replay_path:
            raise ValueError("backend 'replay' needs replay_path")
        inner = ReplayBackend(replay_path)
    elif backend == "http":
        if not http_url:
            raise ValueError("backend 'http' needs http_url")
        inner = HttpBackend(http_url, timeout_s=timeout_s)
    elif backend == "mcp":
        if not mcp_servers:
            raise ValueError("backend 'mcp' needs mcp_servers")
        from stagent_ray.world.mcp_client import McpBackend  # imports the mcp SDK only when used

        inner = McpBackend(mcp_servers, timeout_s=timeout_s)
    else:
        raise ValueError(f"unknown tool backend {backend!r} (world, replay, http, mcp)")
    if record_path:
        inner = RecordingBackend(inner, record_path)
    return ToolExecutor(inner, cache_size=cache_size, timeout_s=timeout_s, config=config,
                        retries=retries, faults=faults)


def _executor_from_config(config: dict) -> ToolExecutor:
    return make_executor(**config)


def executor_from_config(w, faults=None) -> ToolExecutor:
    """The executor a `config.WorldConfig` describes (every stage builds its tools this way);
    `faults`: the run's `config.FaultConfig` (retries, and faults to inject)."""
    from dataclasses import asdict

    return make_executor(backend=w.backend, seed=w.seed, n_cities=w.n_cities,
                         pois_per_city=w.pois_per_city, today=w.today, replay_path=w.replay_path,
                         http_url=w.http_url, cache_size=w.cache_size, timeout_s=w.tool_timeout_s,
                         mcp_servers=list(w.mcp_servers) or None,
                         retries=faults.tool_retries if faults else 0,
                         faults=asdict(faults) if faults else None)
