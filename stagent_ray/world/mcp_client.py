"""Tools from any MCP server (stdio or streamable HTTP) as a ToolBackend.

    backend = McpBackend([
        {"name": "maps", "transport": "stdio", "command": "/usr/bin/python3",
         "args": ["-m", "my_maps_server"], "env": {"MAPS_KEY": "..."}},
        {"name": "weather", "transport": "http", "url": "http://127.0.0.1:8765/mcp", "prefix": True},
    ])
    executor = ToolExecutor(backend)          # validation, LRU cache, timeouts, counters
    executor.call("weather__forecast", {...})

Server spec keys: `name` (required, unique), `transport` ("stdio" | "http"); stdio: `command`,
`args`, `env` (merged over the MCP SDK's minimal default environment, so give `command` as an
absolute path when PATH matters), `cwd`; http: `url`, `headers`; both: `prefix` (true: expose
tools as "<name>__<tool>", for combining servers whose tool names clash).

The MCP client API is async and its sessions live inside anyio task groups, which must be
entered and left by the same task. So each backend runs one event loop in a daemon thread, and
each server gets one long-lived task there (`_hold`) that opens the session and keeps it open
until told to stop. `call` is synchronous (the ToolExecutor calls it from worker threads) and
hands a coroutine to that loop with `run_coroutine_threadsafe`.

Schemas are discovered once at start (`tools/list`, all pages). A server that cannot be started
or listed at start is a configuration error and raises. After that `call` never raises: a dead
server or broken connection is a `backend_error` observation, and the next call after
`reconnect_after_s` tries to reconnect (a restarted HTTP service or a crashed stdio process
comes back without restarting the run).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
import time
from contextlib import AsyncExitStack

import jsonschema
from mcp import Client, MCPError, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CONNECTION_CLOSED, REQUEST_TIMEOUT

from stagent_ray.world.schemas import ERROR_TYPES, ToolBackend, tool_error

log = logging.getLogger(__name__)

SPEC_KEYS = {"name", "transport", "command", "args", "env", "cwd", "url", "headers", "prefix"}
PREFIX_SEP = "__"


def check_server_spec(spec: dict) -> dict:
    """Fail early, naming the server, on a spec that cannot work (typos included)."""
    if not isinstance(spec, dict) or not spec.get("name"):
        raise ValueError(f"an MCP server spec must be a dict with a 'name', got {spec!r}")
    name = spec["name"]
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"MCP server {name!r}: unknown keys {sorted(unknown)} (allowed: {sorted(SPEC_KEYS)})")
    transport = spec.get("transport", "stdio")
    if transport == "stdio":
        if not spec.get("command"):
            raise ValueError(f"MCP server {name!r}: transport 'stdio' needs a 'command'")
    elif transport == "http":
        if not str(spec.get("url", "")).startswith(("http://", "https://")):
            raise ValueError(f"MCP server {name!r}: transport 'http' needs an http:// or https:// 'url'")
    else:
        raise ValueError(f"MCP server {name!r}: unknown transport {transport!r} (stdio, http)")
    return {**spec, "transport": transport}


def describe_error(exc: BaseException) -> str:
    """One readable line; anyio wraps transport failures in (nested) exception groups."""
    while getattr(exc, "exceptions", None):  # an ExceptionGroup (duck-typed: Python 3.10 has none built in)
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def observation(result) -> dict:
    """An MCP CallToolResult -> the dict a tool result is everywhere else in this project.

    Structured content wins; else the text blocks, parsed as JSON when they are JSON. A server's
    own error in this project's shape ({"error": {"type", "message"}}, as our MCP server sends)
    is kept; any other isError result becomes a backend_error carrying the server's text.
    """
    text = "\n".join(block.text for block in result.content if getattr(block, "type", None) == "text")
    other = [block.type for block in result.content if getattr(block, "type", None) != "text"]
    data = result.structured_content
    if data is None and text:
        try:
            data = json.loads(text)
        except ValueError:
            data = None
    if result.is_error:
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict) and err.get("type") in ERROR_TYPES and isinstance(err.get("message"), str):
            return {"error": {"type": err["type"], "message": err["message"]}}
        return tool_error("backend_error", text.strip() or "the MCP tool reported an error without a message")
    if isinstance(data, dict):
        return data
    if data is not None:
        return {"result": data}  # a JSON list / number / string: still an object for the executor
    out = {"text": text}
    if other:
        out["non_text_content"] = other  # images, audio, resources: the model only reads text
    return out


def schema_error(validator, name: str, arguments: dict) -> dict | None:
    """Full JSON-schema check of a call against a discovered schema.

    The executor's own validator (schemas.validate_call) knows the top level and the keywords
    the ten world tools use; foreign schemas also carry nested objects, type unions, regex
    patterns, non-string enums, anyOf... A bad call stops here and never reaches the server.
    """
    if validator is None:
        return None
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    except Exception:  # a schema jsonschema cannot evaluate (bad regex, ...): let the server judge
        return None
    if error is None:
        return None
    kind = {"required": "missing_argument", "additionalProperties": "unexpected_argument",
            "type": "invalid_type"}.get(error.validator, "invalid_value")
    path = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p))
                   for i, p in enumerate(error.absolute_path))
    where = f"argument '{path}'" if path else f"arguments for {name}"
    return tool_error(kind, f"{where}: {error.message}")


class McpBackend(ToolBackend):
    """The tools of one or more MCP servers. `close()` when done (or use it as a context manager)."""

    def __init__(self, servers: list[dict] | dict, timeout_s: float = 30.0, start_timeout_s: float = 60.0,
                 reconnect_after_s: float = 5.0):
        servers = [servers] if isinstance(servers, dict) else list(servers)
        self.servers = [check_server_spec(s) for s in servers]
        names = [s["name"] for s in self.servers]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"McpBackend needs one or more servers with distinct names, got {names}")
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self.reconnect_after_s = reconnect_after_s
        self._spec_by_name = {s["name"]: s for s in self.servers}
        # per server: {"client", "stop" (asyncio.Event), "task", "down_since" (None while up)}
        self._conns: dict[str, dict] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="mcp-" + "+".join(names))
        self._thread.start()

        self._schemas: list[dict] = []
        self._route: dict[str, tuple[str, str]] = {}  # exposed tool name -> (server, tool name on that server)
        self._validators: dict = {}
        try:
            listings = self._submit(self._connect_all()).result()
            for spec, tools in zip(self.servers, listings):
                prefix = spec["name"] + PREFIX_SEP if spec.get("prefix") else ""
                for tool in tools:
                    exposed = prefix + tool.name
                    if exposed in self._route:
                        raise ValueError(f"tool {exposed!r} is offered by both MCP servers "
                                         f"{self._route[exposed][0]!r} and {spec['name']!r}; "
                                         f"set \"prefix\": true on one of them")
                    self._route[exposed] = (spec["name"], tool.name)
                    parameters = tool.input_schema or {"type": "object", "properties": {}}
                    self._schemas.append({"type": "function", "function": {
                        "name": exposed, "description": tool.description or tool.title or "",
                        "parameters": parameters}})
                    try:
                        self._validators[exposed] = jsonschema.validators.validator_for(parameters)(parameters)
                    except Exception:  # a schema jsonschema cannot load: the server alone validates
                        self._validators[exposed] = None
        except BaseException:
            self.close()
            raise

    def __reduce__(self):
        # Ray ships executors to actors: a copy reconnects from the specs (fresh sessions).
        return (McpBackend, (self.servers, self.timeout_s, self.start_timeout_s, self.reconnect_after_s))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def schemas(self) -> list[dict]:
        return json.loads(json.dumps(self._schemas))  # a deep copy

    def call(self, name: str, arguments: dict) -> dict:
        route = self._route.get(name)
        if route is None:
            return tool_error("unknown_tool", f"unknown tool {name!r}; available tools: {', '.join(self._route)}")
        server, tool = route
        error = schema_error(self._validators[name], name, arguments)
        if error:
            return error
        try:
            future = self._submit(self._call(server, tool, arguments))
            # _call is bounded by its own timeouts (reconnect + read); this only guards a hung loop
            return future.result(timeout=2 * self.timeout_s + 5)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return tool_error("timeout", f"{name}: MCP server {server!r} did not answer within {self.timeout_s} s")
        except MCPError as e:
            if e.code == REQUEST_TIMEOUT:
                return tool_error("timeout", f"{name}: MCP server {server!r} did not answer within {self.timeout_s} s")
            return tool_error("backend_error", f"{name}: MCP server {server!r}: {e.message}")
        except Exception as e:
            return tool_error("backend_error", f"{name}: MCP server {server!r} failed: {describe_error(e)}")

    def close(self) -> None:
        """Close every session (stdio servers are terminated) and stop the loop thread."""
        if self._closed:
            return
        self._closed = True

        async def shutdown():
            for conn in self._conns.values():
                conn["stop"].set()
            tasks = [c["task"] for c in self._conns.values()]
            if tasks:
                await asyncio.wait(tasks, timeout=5)
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=15)
        except Exception as e:
            log.warning("closing MCP sessions: %s", describe_error(e))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()

    # ---- everything below runs on the backend's event loop
    def _submit(self, coro) -> concurrent.futures.Future:
        if self._closed:
            coro.close()
            raise RuntimeError("McpBackend is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    async def _connect_all(self) -> list:
        return list(await asyncio.gather(*(self._connect(spec, self.start_timeout_s) for spec in self.servers)))

    async def _connect(self, spec: dict, timeout_s: float) -> list:
        """Open a session to one server in its own task; returns its tool list."""
        name = spec["name"]
        where = spec.get("url") or " ".join([spec["command"], *spec.get("args", [])])
        ready = self._loop.create_future()
        stop = asyncio.Event()
        task = asyncio.create_task(self._hold(spec, ready, stop))
        try:
            client, tools = await asyncio.wait_for(asyncio.shield(ready), timeout_s)
        except asyncio.TimeoutError:
            task.cancel()
            raise RuntimeError(f"MCP server {name!r} ({where}) did not start within {timeout_s} s") from None
        except Exception as e:
            raise RuntimeError(f"cannot connect to MCP server {name!r} ({where}): {describe_error(e)}") from None
        old = self._conns.get(name)
        if old is not None:
            old["stop"].set()  # lets the dead session's task unwind (and reap a crashed stdio process)
        self._conns[name] = {"client": client, "stop": stop, "task": task, "down_since": None}
        return tools

    async def _hold(self, spec: dict, ready: asyncio.Future, stop: asyncio.Event) -> None:
        """Own one session for its whole life: enter, list tools, wait for `stop`, leave."""
        try:
            async with AsyncExitStack() as stack:
                if spec["transport"] == "stdio":
                    target = StdioServerParameters(command=spec["command"], args=list(spec.get("args", [])),
                                                   env=spec.get("env"), cwd=spec.get("cwd"))
                elif spec.get("headers"):
                    import httpx2  # the MCP SDK's HTTP client; only needed to send headers (auth tokens)

                    http = await stack.enter_async_context(httpx2.AsyncClient(
                        headers=spec["headers"], timeout=httpx2.Timeout(30.0, read=300.0)))
                    target = streamable_http_client(spec["url"], http_client=http)
                else:
                    target = spec["url"]
                client = await stack.enter_async_context(Client(target, read_timeout_seconds=self.timeout_s))
                tools, cursor = [], None
                while True:
                    page = await client.list_tools(cursor=cursor)
                    tools += page.tools
                    cursor = page.next_cursor
                    if not cursor:
                        break
                ready.set_result((client, tools))
                await stop.wait()
        except Exception as e:
            if not ready.done():
                ready.set_exception(e)
            elif not stop.is_set():
                log.warning("MCP server %r disconnected: %s", spec["name"], describe_error(e))

    async def _call(self, server: str, tool: str, arguments: dict) -> dict:
        conn = self._conns[server]
        if conn["down_since"] is not None or conn["task"].done():
            await self._reconnect(server)
            conn = self._conns[server]
        try:
            result = await conn["client"].call_tool(tool, arguments, read_timeout_seconds=self.timeout_s)
        except MCPError as e:
            if e.code == CONNECTION_CLOSED:
                conn["down_since"] = time.monotonic()
            raise
        except Exception:  # transport failures (process gone, HTTP connection refused, ...)
            conn["down_since"] = time.monotonic()
            raise
        return observation(result)

    async def _reconnect(self, server: str) -> None:
        """Reconnect a dead server, at most once per `reconnect_after_s`; raise while it stays down."""
        lock = self._locks.setdefault(server, asyncio.Lock())
        async with lock:
            conn = self._conns[server]
            if conn["down_since"] is None and not conn["task"].done():
                return  # another call reconnected it while we waited
            if conn["down_since"] is None:
                conn["down_since"] = time.monotonic()  # the session task ended on its own
            wait = conn["down_since"] + self.reconnect_after_s - time.monotonic()
            if wait > 0:
                raise ConnectionError(f"server is down; next reconnect attempt in {wait:.1f} s")
            try:
                await self._connect(self._spec_by_name[server], self.timeout_s)
            except Exception as e:
                conn["down_since"] = time.monotonic()
                raise ConnectionError(f"reconnect failed: {describe_error(e)}") from None
            log.info("MCP server %r reconnected", server)
