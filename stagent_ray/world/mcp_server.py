"""The ten tools as an MCP server (mcp package, low-level Server), over stdio or streamable HTTP.

Every call goes through a ToolExecutor, so MCP clients get the same validation, cache and
structured errors as rollouts. A tool result comes back as one JSON text block plus
`structuredContent`; error observations set `isError`. HTTP binds to 127.0.0.1 unless a host
is given, and serves the MCP endpoint at http://HOST:PORT/mcp.

    python -m stagent_ray.world.mcp_server --transport http --port 8765
"""

from __future__ import annotations

import argparse
import json

import anyio
import mcp_types as types
from mcp.server import Server
from mcp.server.stdio import stdio_server

from stagent_ray.world.backends import ToolExecutor, make_executor

SERVER_NAME = "stagent-ray-world"
MCP_PATH = "/mcp"


def build_server(executor: ToolExecutor) -> Server:
    """A low-level MCP Server listing the executor's schemas verbatim and routing calls to it."""
    tools = [types.Tool(name=s["function"]["name"], description=s["function"]["description"],
                        input_schema=s["function"]["parameters"]) for s in executor.schemas()]

    async def list_tools(ctx, params) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:
        result = await executor.acall(params.name, params.arguments or {})
        text = types.TextContent(type="text", text=json.dumps(result, ensure_ascii=False))
        return types.CallToolResult(content=[text], structured_content=result, is_error="error" in result)

    return Server(SERVER_NAME, version="0.1.0", on_list_tools=list_tools, on_call_tool=call_tool)


async def _serve_stdio(server: Server) -> None:
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def serve_mcp(executor: ToolExecutor, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve until interrupted. transport: "stdio" or "http" (streamable HTTP at /mcp)."""
    server = build_server(executor)
    if transport == "stdio":
        anyio.run(_serve_stdio, server)
    elif transport == "http":
        import uvicorn

        app = server.streamable_http_app(streamable_http_path=MCP_PATH, host=host)
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning")).run()
    else:
        raise ValueError(f"unknown MCP transport {transport!r} (stdio, http)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the stagent-ray world tools over MCP.")
    parser.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--today", default="2026-06-01")
    args = parser.parse_args(argv)
    serve_mcp(make_executor("world", seed=args.seed, today=args.today), args.transport, args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
