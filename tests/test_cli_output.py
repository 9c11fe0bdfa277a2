"""The CLI prints any string a tool or model can hand it: lone UTF-16 surrogates included."""

from __future__ import annotations

import json
import subprocess
import sys

from stagent_ray.console import json_text


def test_json_text_escapes_lone_surrogates_and_round_trips():
    obj = {"query": "\ud800 museum \udfff", "city": "Yunhai 云海"}
    text = json_text(obj, indent=2)
    text.encode("utf-8")  # strict: would raise on a lone surrogate
    assert "云海" in text  # readable text stays as it is
    assert json.loads(text) == obj


def run_cli(*args: str) -> subprocess.CompletedProcess:
    # a real process, so stdout is a real UTF-8 stream with strict errors
    return subprocess.run([sys.executable, "-m", "stagent_ray.cli", *args], capture_output=True,
                          timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONIOENCODING": "utf-8"})


def test_tools_call_prints_an_echoed_surrogate_without_a_traceback():
    done = run_cli("tools", "call", "web_search", '{"query": "\\ud800 museum"}')
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    assert done.returncode == 0
    result = json.loads(done.stdout)
    assert result["query"] == "\ud800 museum" and result["results"]


def test_tools_call_error_result_with_a_surrogate_argument():
    done = run_cli("tools", "call", "map_search_places", '{"query": "\\udc80", "bogus": 1}')
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    assert done.returncode == 2 and "error" in json.loads(done.stdout)
