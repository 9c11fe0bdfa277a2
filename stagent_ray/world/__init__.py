"""The seeded synthetic world, its ten tools, tool backends and an MCP server (see API.md)."""

from stagent_ray.world.backends import ToolExecutor, make_executor
from stagent_ray.world.generate import generate_world, load_world
from stagent_ray.world.model import World
from stagent_ray.world.schemas import SCHEMAS, TOOL_NAMES
from stagent_ray.world.tools import call_tool

__all__ = ["SCHEMAS", "TOOL_NAMES", "ToolExecutor", "World", "call_tool", "generate_world", "load_world",
           "make_executor"]
