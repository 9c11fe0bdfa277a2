"""McpBackend against real MCP servers: the project's own (stdio and streamable HTTP) and a tiny
foreign one written here, all behind a ToolExecutor. No Ray."""

import asyncio
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from stagent_ray.world.backends import ToolExecutor, make_executor
from stagent_ray.world.mcp_client import McpBackend
from stagent_ray.world.schemas import SCHEMAS, TOOL_NAMES

PLACES = ("map_search_places", {"query": "quiet cafe", "region": "Moling", "limit": 3})
WEATHER = ("weather_current_conditions", {"location": "Moling"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count_submits(backend: McpBackend) -> list:
    """Count the coroutines the backend hands to its loop, i.e. the calls that go to a server."""
    sent, submit = [], backend._submit
    backend._submit = lambda coro: (sent.append(1), submit(coro))[1]
    return sent


@pytest.fixture(scope="module")
def world():
    return make_executor("world", seed=0)


@pytest.fixture(scope="module")
def http_server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stagent_ray.world.mcp_server", "--transport", "http",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "MCP HTTP server did not start"
            time.sleep(0.05)
    yield proc, f"http://127.0.0.1:{port}/mcp"
    proc.kill()
    proc.wait(timeout=10)


# ---------------------------------------------------------------- the world over stdio

def test_stdio_world_server(tmp_path, world):
    pid_file = tmp_path / "pid"
    # the world server, writing its pid first so the test can kill it like a crash would
    boot = (f"import os, sys; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
            "from stagent_ray.world.mcp_server import main; sys.exit(main())")
    backend = McpBackend([{"name": "world", "transport": "stdio", "command": sys.executable, "args": ["-c", boot]}],
                         reconnect_after_s=0.5)
    try:
        ex = ToolExecutor(backend, cache_size=64)
        # the ten tools, discovered with the server's input schemas as parameters
        assert [s["function"]["name"] for s in ex.schemas()] == list(TOOL_NAMES)
        assert ex.schemas() == SCHEMAS
        sent = _count_submits(backend)

        # a call equals the direct world executor's answer, also for the world's own errors
        assert ex.call(*PLACES) == world.call(*PLACES)
        unknown = ("weather_current_conditions", {"location": "Atlantis"})
        assert ex.call(*unknown) == world.call(*unknown)
        assert len(sent) == 2

        # invalid calls: structured errors from the executor's validation, no server round trip
        bad_center = ex.call("map_search_places", {"query": "cafe", "center": "north"})
        assert bad_center["error"]["type"] == "invalid_coordinates"
        assert ex.call("weather_current_conditions", {})["error"]["type"] == "missing_argument"
        assert ex.call("teleport", {})["error"]["type"] == "unknown_tool"
        assert len(sent) == 2

        # the cache: a repeated call is a hit and does not reach the server
        before = ex.stats()["cache_hits"]
        assert ex.call(*PLACES) == world.call(*PLACES)
        assert ex.stats()["cache_hits"] == before + 1 and len(sent) == 2

        # concurrent calls through the executor's async path
        calls = [("weather_forecast_days", {"location": city, "date": "2026-06-02", "days": d})
                 for city in ("Moling", "Yunhai", "Tianlu", "Xiaqiao") for d in (1, 2)]
        assert asyncio.run(ex.acall_many(calls)) == [world.call(*c) for c in calls]

        # the server dies: a backend_error observation, never an exception into the caller
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        time.sleep(0.1)
        result = ex.call(*WEATHER)
        assert result["error"]["type"] == "backend_error" and "'world'" in result["error"]["message"]
        assert ex.call(*WEATHER)["error"]["type"] == "backend_error"  # still down, too soon to retry
        # after reconnect_after_s the next call starts the server again
        time.sleep(0.6)
        assert ex.call(*WEATHER) == world.call(*WEATHER)
    finally:
        backend.close()
    assert backend.call(*WEATHER)["error"]["type"] == "backend_error"  # closed: still no exception


# ---------------------------------------------------------------- the world over streamable HTTP

def test_http_world_server(http_server, world):
    _, url = http_server
    backend = McpBackend({"name": "world", "transport": "http", "url": url})
    try:
        ex = ToolExecutor(backend)
        assert ex.schemas() == SCHEMAS
        assert ex.call(*PLACES) == world.call(*PLACES)
        assert ex.call("weather_forecast_days", {"location": "Moling", "date": "2026-06-02", "days": 0}
                       )["error"]["type"] == "invalid_value"
        # an executor built from plain config pickles as that config and reconnects on the other side
        ex1 = make_executor("mcp", mcp_servers=[{"name": "w", "transport": "http", "url": url}])
        ex2 = pickle.loads(pickle.dumps(ex1))
        assert ex2.backend is not ex1.backend and ex2.call(*WEATHER) == world.call(*WEATHER)
        ex1.backend.close()
        ex2.backend.close()
    finally:
        backend.close()


def test_combining_servers_name_clash_and_prefix(http_server, world):
    _, url = http_server
    with pytest.raises(ValueError, match="'a' and 'b'"):
        McpBackend([{"name": "a", "transport": "http", "url": url}, {"name": "b", "transport": "http", "url": url}])
    with McpBackend([{"name": "a", "transport": "http", "url": url},
                     {"name": "b", "transport": "http", "url": url, "prefix": True}]) as backend:
        names = [s["function"]["name"] for s in backend.schemas()]
        assert names == list(TOOL_NAMES) + [f"b__{n}" for n in TOOL_NAMES]
        ex = ToolExecutor(backend)
        args = {"query": "train refund"}
        assert ex.call("b__web_search", args) == world.call("web_search", args)


def test_http_server_killed(world):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stagent_ray.world.mcp_server", "--transport", "http",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline, "MCP HTTP server did not start"
                time.sleep(0.05)
        with McpBackend({"name": "remote", "transport": "http", "url": f"http://127.0.0.1:{port}/mcp"},
                        reconnect_after_s=0.0, timeout_s=5) as backend:
            ex = ToolExecutor(backend)
            assert ex.call(*WEATHER) == world.call(*WEATHER)
            proc.kill()
            proc.wait(timeout=10)
            for _ in range(3):  # the broken session, then failed reconnects: all observations
                result = ex.call("web_search", {"query": "museum tickets"})
                assert result["error"]["type"] == "backend_error" and "'remote'" in result["error"]["message"]
            assert ex.stats()["errors"] == 3 and ex.stats()["cache_entries"] == 1
    finally:
        proc.kill()
        proc.wait(timeout=10)


# ---------------------------------------------------------------- start-up errors

def test_bad_specs_and_unreachable_servers():
    with pytest.raises(ValueError, match="needs a 'command'"):
        McpBackend({"name": "x", "transport": "stdio"})
    with pytest.raises(ValueError, match="unknown keys"):
        McpBackend({"name": "x", "transport": "http", "url": "http://127.0.0.1:1/mcp", "hedaers": {}})
    with pytest.raises(ValueError, match="distinct names"):
        McpBackend([{"name": "x", "command": "a"}, {"name": "x", "command": "b"}])
    with pytest.raises(ValueError, match="needs mcp_servers"):
        make_executor("mcp")
    t0 = time.time()
    with pytest.raises(RuntimeError, match="MCP server 'gone'"):
        McpBackend({"name": "gone", "transport": "http", "url": f"http://127.0.0.1:{_free_port()}/mcp"})
    with pytest.raises(RuntimeError, match="MCP server 'nope'"):
        McpBackend({"name": "nope", "transport": "stdio", "command": "/nonexistent/mcp-server"})
    assert time.time() - t0 < 10


# ---------------------------------------------------------------- a foreign server

FOREIGN_SERVER = textwrap.dedent('''
    import json
    import anyio
    import mcp_types as types
    from mcp.server import Server
    from mcp.server.stdio import stdio_server

    SCHEMA = {"type": "object", "required": ["code"], "additionalProperties": False, "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "opts": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}},
        "level": {"type": ["integer", "null"], "enum": [1, 2, 3, None]}}}
    calls = 0

    async def list_tools(ctx, params):
        return types.ListToolsResult(tools=[types.Tool(name="lookup", description="look a code up",
                                                       input_schema=SCHEMA)])

    async def call_tool(ctx, params):
        global calls
        calls += 1
        code = params.arguments["code"]
        def text(t):
            return [types.TextContent(type="text", text=t)]
        if code == "TXT":
            return types.CallToolResult(content=text("plain words"))
        if code == "LST":
            return types.CallToolResult(content=text(json.dumps([1, 2])))
        if code == "ERR":
            return types.CallToolResult(content=text("quota exceeded"), is_error=True)
        return types.CallToolResult(content=text("{}"), structured_content={"code": code, "calls": calls})

    async def main():
        server = Server("foreign", version="0", on_list_tools=list_tools, on_call_tool=call_tool)
        async with stdio_server() as (r, w):
            await server.run(r, w, server.create_initialization_options())

    anyio.run(main)
''')


def test_foreign_server_content_and_schema_checks(tmp_path):
    script = tmp_path / "foreign_server.py"
    script.write_text(FOREIGN_SERVER)
    with McpBackend({"name": "foreign", "command": sys.executable, "args": [str(script)]}) as backend:
        ex = ToolExecutor(backend)
        (schema,) = ex.schemas()
        assert schema["function"]["name"] == "lookup" and schema["function"]["parameters"]["required"] == ["code"]
        assert ex.call("lookup", {"code": "OBJ"}) == {"code": "OBJ", "calls": 1}
        assert ex.call("lookup", {"code": "TXT"}) == {"text": "plain words"}
        assert ex.call("lookup", {"code": "LST"}) == {"result": [1, 2]}
        assert ex.call("lookup", {"code": "ERR"}) == {"error": {"type": "backend_error", "message": "quota exceeded"}}
        # what only the full JSON-schema check catches (regex, nested objects, type unions, enums):
        # stopped before the server, which counts its calls
        bad = [({"code": "abc"}, "invalid_value", "'code'"),
               ({"code": "OBJ", "opts": {"n": "x"}}, "invalid_type", "'opts.n'"),
               ({"code": "OBJ", "opts": {}}, "missing_argument", "'opts'"),
               ({"code": "OBJ", "level": 7}, "invalid_value", "'level'")]
        for args, kind, where in bad:
            error = ex.call("lookup", args)["error"]
            assert error["type"] == kind and where in error["message"], error
        assert ex.call("lookup", {"code": "OBJ", "opts": {"n": 2}, "level": None}) == {"code": "OBJ", "calls": 5}



def test_foreign_schemas_without_items_do_not_crash_validation():
    """MCP servers send schemas our ten tools never use: an array without `items`, a
    property schema that is just `true`. Validation must judge them, not raise."""
    from stagent_ray.world.schemas import validate_call

    schemas = {"f": {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array"}, "anything": True}}}}}
    args, err = validate_call("f", {"xs": [1, "a"], "anything": {"deep": [1]}}, schemas)
    assert err is None and args["xs"] == [1, "a"]
    args, err = validate_call("f", {"xs": "not a list"}, schemas)
    assert args is None and err["error"]["type"] == "invalid_type"
