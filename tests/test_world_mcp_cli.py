"""The MCP server through the mcp package's own client (stdio and streamable HTTP), and the CLI."""

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time

import pytest
from mcp import Client, StdioServerParameters

from stagent_ray.world.backends import make_executor
from stagent_ray.world.cli import register
from stagent_ray.world.mcp_server import build_server
from stagent_ray.world.schemas import SCHEMAS, TOOL_NAMES

PLACES = ("map_search_places", {"query": "quiet cafe", "region": "Moling", "limit": 3})


async def _list_and_call(server) -> tuple:
    async with Client(server) as client:
        tools = (await client.list_tools()).tools
        good = await client.call_tool(*PLACES)
        bad = await client.call_tool("map_search_places", {"query": "cafe", "center": "north"})
    return tools, good, bad


def _check(tools, good, bad):
    assert [t.name for t in tools] == list(TOOL_NAMES)
    by_name = {s["function"]["name"]: s["function"]["parameters"] for s in SCHEMAS}
    assert all(t.input_schema == by_name[t.name] for t in tools)
    expected = make_executor("world", seed=0).call(*PLACES)
    assert not good.is_error
    assert good.structured_content == expected
    assert json.loads(good.content[0].text) == expected
    assert bad.is_error and bad.structured_content["error"]["type"] == "invalid_coordinates"


def test_mcp_in_process():
    _check(*asyncio.run(_list_and_call(build_server(make_executor("world", seed=0)))))


def test_mcp_stdio_subprocess():
    params = StdioServerParameters(command=sys.executable, args=["-m", "stagent_ray.world.mcp_server", "--seed", "0"])
    _check(*asyncio.run(_list_and_call(params)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mcp_streamable_http_on_loopback():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stagent_ray.world.mcp_server", "--transport", "http",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.time() < deadline, "MCP HTTP server did not start"
                time.sleep(0.1)
        _check(*asyncio.run(_list_and_call(f"http://127.0.0.1:{port}/mcp")))
        # bound to loopback only: the listening socket's address is 127.0.0.1
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if _has_ss() else ""
        if out:
            lines = [ln for ln in out.splitlines() if f":{port} " in ln]
            assert lines and all("127.0.0.1" in ln for ln in lines)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _has_ss() -> bool:
    try:
        subprocess.run(["ss", "-V"], capture_output=True)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- CLI

def _run_cli(argv, capsys):
    parser = argparse.ArgumentParser(prog="stagent-ray")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_cli_list(capsys):
    code, out = _run_cli(["tools", "list"], capsys)
    assert code == 0 and json.loads(out) == SCHEMAS


def test_cli_call_ok_and_errors(capsys):
    code, out = _run_cli(["tools", "call", PLACES[0], json.dumps(PLACES[1]), "--seed", "0"], capsys)
    assert code == 0 and json.loads(out) == make_executor("world", seed=0).call(*PLACES)
    code, out = _run_cli(["tools", "call", "weather_current_conditions", '{"location": "Atlantis"}'], capsys)
    assert code == 2 and json.loads(out)["error"]["type"] == "unknown_location"
    code, out = _run_cli(["tools", "call", "weather_current_conditions", "{location:"], capsys)
    assert code == 2 and json.loads(out)["error"]["type"] == "invalid_arguments"
    code, out = _run_cli(["tools", "call", "teleport", "{}"], capsys)
    assert code == 2 and json.loads(out)["error"]["type"] == "unknown_tool"
    code, out = _run_cli(["tools", "call", "weather_forecast_days", '{"location": "Moling", "date": "2026-07-09"}',
                          "--today", "2026-07-01"], capsys)
    assert code == 0 and json.loads(out)["days"][0]["date"] == "2026-07-09"


def test_cli_serve_parses_defaults():
    parser = argparse.ArgumentParser(prog="stagent-ray")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["tools", "serve"])
    assert (args.transport, args.host, args.port) == ("stdio", "127.0.0.1", 8765) and callable(args.func)
    with pytest.raises(SystemExit):
        parser.parse_args(["tools", "serve", "--transport", "carrier-pigeon"])
