"""Model output is data: it never reaches eval/exec, a shell or a filesystem path.

Two checks: the package contains no construct that could run text as code or a command
(a static scan, so a later change that adds one fails here), and hostile tool calls end as
structured errors without touching the filesystem."""

import ast
import json
import pathlib

import pytest

from stagent_ray.models.chat_format import format_tool_call, parse_assistant_turn
from stagent_ray.world.backends import make_executor
from stagent_ray.world.schemas import SCHEMAS

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "stagent_ray"
BUILTINS = {"eval", "exec", "compile", "__import__"}            # text -> code
OS_CALLS = {"system", "popen", "execv", "execve", "execvp", "execl", "spawnl", "spawnv",
            "posix_spawn"}                                      # text -> a command
FORBIDDEN_MODULES = {"subprocess", "pickle", "marshal", "shelve", "pty"}


def forbidden_uses(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names
                      if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in \
                FORBIDDEN_MODULES:
            found.append(f"from {node.module} import")
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id in BUILTINS:
                found.append(f"{f.id}()")
            elif (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)
                  and (f.value.id, f.attr) in {("os", c) for c in OS_CALLS} |
                  {("builtins", c) for c in BUILTINS}):
                found.append(f"{f.value.id}.{f.attr}()")
    return found


def test_package_never_runs_text_as_code_or_commands():
    problems = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        uses = forbidden_uses(ast.parse(path.read_text(), filename=str(path)))
        if uses:
            problems[str(path.relative_to(PACKAGE))] = uses
    assert not problems, f"code/command execution constructs in the package: {problems}"


def test_the_scan_has_teeth():
    bad = "import subprocess\neval(x)\nos.system(cmd)\nfrom pickle import loads\n"
    assert len(forbidden_uses(ast.parse(bad))) == 4


HOSTILE = [
    ("__import__('os').system('touch PWNED')", {}),
    ("../../../../tmp/PWNED", {"query": "x"}),
    ("os.system", {"command": "touch PWNED"}),
    ("web_search", {"query": "$(touch PWNED)", "url": "file:///etc/passwd"}),
    ("map_search_places", {"query": "`touch PWNED`", "region": "../../../../etc/passwd"}),
    ("weather_current_conditions", {"location": "; rm -rf / #"}),
]


@pytest.mark.parametrize("name, args", HOSTILE)
def test_hostile_tool_calls_end_as_errors_and_touch_nothing(tmp_path, monkeypatch, name, args):
    monkeypatch.chdir(tmp_path)
    turn = parse_assistant_turn(format_tool_call(name, args), SCHEMAS)
    result = make_executor().call(name, args)
    text = json.dumps(result)
    if name not in {s["function"]["name"] for s in SCHEMAS}:
        assert turn.error is not None and "error" in result   # unknown tools never run
    assert "root:" not in text                                 # no file content leaks
    assert not any(tmp_path.iterdir()) and not pathlib.Path("/tmp/PWNED").exists()
