"""The seeded synthetic world, its ten tools, tool backends and an MCP server (see API.md).

Import the modules themselves (`world.backends`, `world.generate`, ...): this package file
imports nothing, so importing one module never drags in the others.
"""
