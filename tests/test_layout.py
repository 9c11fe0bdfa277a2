"""The package's layers, as the design map draws them, read from the imports themselves.

Every import counts, function-level ones too (a lazy import is still a dependency). A
package is the first name under stagent_ray/ (a top-level module is its own layer), and
every `cli.py` is the `cli` layer: the command line sits above everything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import stagent_ray

# layer -> the layers it must not import
FORBIDDEN = {
    "world": {"models", "tasks", "reward", "rollout", "serve", "stages", "train", "config",
              "runio", "pipeline"},
    "models": {"tasks", "reward", "rollout", "serve", "stages", "train", "pipeline"},
    "tasks": {"reward", "rollout", "serve", "stages", "train", "pipeline"},
    "reward": {"rollout", "serve", "stages", "train", "pipeline"},
    "rollout": {"reward", "serve", "stages", "train", "pipeline"},
    "serve": {"stages", "train", "pipeline"},
    "train": {"stages", "pipeline"},
    "stages": {"pipeline"},
}
NOBODY_IMPORTS = {"cli"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[-1] == "cli":
        return "cli"
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path, module: str) -> set[str]:
    """Every stagent_ray module `path` imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import name`: the submodule when `name` is one, else the module
            found.update(f"{target}.{a.name}" for a in node.names)
            found.add(target)
    root = module.split(".")[0]
    return {m for m in found if m == root or m.startswith(root + ".")}


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the package it imports (names that are not modules, e.g.
    `from pkg.a import function`, fold into their module)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for m in imports_of(path, name):
            while m not in modules and "." in m:
                m = m.rsplit(".", 1)[0]
            if m in modules and m != name:
                targets.add(m)
        graph[name] = targets
    return graph


def layer_violations(root: Path) -> list[str]:
    out = []
    for module, targets in sorted(import_graph(root).items()):
        for target in sorted(targets):
            a, b = layer_of(module), layer_of(target)
            if b in FORBIDDEN.get(a, set()) or (b in NOBODY_IMPORTS and a != b):
                out.append(f"{module} imports {target} ({a} -> {b})")
    return out


def layer_cycles(root: Path) -> list[list[str]]:
    """Cycles in the layer graph (a -> b when a module of a imports one of b)."""
    edges: dict[str, set[str]] = {}
    for module, targets in import_graph(root).items():
        for target in targets:
            if layer_of(module) != layer_of(target):
                edges.setdefault(layer_of(module), set()).add(layer_of(target))
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


PACKAGE = Path(stagent_ray.__file__).parent


def test_no_package_imports_a_layer_it_must_not():
    assert layer_violations(PACKAGE) == []


def test_no_import_circle_between_packages():
    assert layer_cycles(PACKAGE) == []


def test_the_checks_catch_planted_violations(tmp_path):
    pkg = tmp_path / "stagent_ray"
    files = {
        "__init__.py": "",
        "world/__init__.py": "",
        "world/tools.py": "import json\n",
        "rollout/__init__.py": "",
        "rollout/agent_loop.py": "from stagent_ray.world import tools\n",
        # a lazy import inside a function is a dependency all the same
        "reward/judge.py": "def f():\n    from stagent_ray.rollout.agent_loop import run\n",
        "stages/score.py": "from ..reward.judge import f\n",          # relative: allowed
        "tasks/oracle.py": "from stagent_ray import cli\n",           # nobody imports cli
        "cli.py": "from stagent_ray.stages import score\n",
        "world/extra.py": "from stagent_ray.stages.score import x\n",  # world -> stages
    }
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    found = layer_violations(pkg)
    assert found == [
        "stagent_ray.reward.judge imports stagent_ray.rollout.agent_loop (reward -> rollout)",
        "stagent_ray.tasks.oracle imports stagent_ray.cli (tasks -> cli)",
        "stagent_ray.world.extra imports stagent_ray.stages.score (world -> stages)"]
    # stages -> reward -> rollout -> world -> stages closes a circle
    assert layer_cycles(pkg) == [["stages", "reward", "rollout", "world", "stages"]]
