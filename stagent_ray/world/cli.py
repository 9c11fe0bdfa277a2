"""`stagent-ray tools ...`: list the schemas, call one tool, or serve them over MCP.

    stagent-ray tools list
    stagent-ray tools call map_search_places '{"query": "cafe", "region": "Moling"}'   # exit 0, or 2 on error
    stagent-ray tools serve --transport http --port 8765
"""

from __future__ import annotations

import argparse
import json

from stagent_ray.console import print_json
from stagent_ray.world.backends import make_executor
from stagent_ray.world.schemas import tool_error


def _add_world_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    parser.add_argument("--today", default="2026-06-01", help="first day of the tool date window")


def cmd_list(args) -> int:
    print_json(make_executor("world", seed=args.seed, today=args.today).schemas(), indent=2)
    return 0


def cmd_call(args) -> int:
    try:
        arguments = json.loads(args.arguments)
    except json.JSONDecodeError as e:
        print_json(tool_error("invalid_arguments", f"arguments are not valid JSON: {e}"), indent=2)
        return 2
    result = make_executor("world", seed=args.seed, today=args.today).call(args.name, arguments)
    print_json(result, indent=2)
    return 2 if "error" in result else 0


def cmd_serve(args) -> int:
    from stagent_ray.world.mcp_server import serve_mcp  # mcp is an optional extra

    serve_mcp(make_executor("world", seed=args.seed, today=args.today), args.transport, args.host, args.port)
    return 0


def register(subparsers) -> None:
    """Add the `tools` subcommand to an argparse subparsers object; each leaf sets func(args) -> int."""
    tools = subparsers.add_parser("tools", help="the ten world tools: list, call, serve over MCP")
    sub = tools.add_subparsers(dest="tools_command", required=True)

    p = sub.add_parser("list", help="print the ten tool schemas as a JSON array")
    _add_world_options(p)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("call", help="call one tool and print the JSON result (exit 2 on an error result)")
    p.add_argument("name", help="tool name, e.g. map_search_places")
    p.add_argument("arguments", nargs="?", default="{}", help="JSON object of arguments")
    _add_world_options(p)
    p.set_defaults(func=cmd_call)

    p = sub.add_parser("serve", help="serve the tools as an MCP server")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default loopback only)")
    p.add_argument("--port", type=int, default=8765)
    _add_world_options(p)
    p.set_defaults(func=cmd_serve)
