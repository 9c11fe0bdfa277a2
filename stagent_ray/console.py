"""Printing what tools and models wrote, whatever string it holds.

A tool's output can echo its arguments, and JSON arguments can hold a lone UTF-16
surrogate (`"\\ud800"`) that no UTF-8 stream can encode: printed as it is, it ends the
command in a traceback after the tool did its job. `print_json` writes such characters as
JSON escapes (the output stays valid JSON and parses back to the same string); the
`stagent-ray` command also sets stdout to escape anything else it cannot encode.
"""

from __future__ import annotations

import json
import re
import sys

LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(obj, **dumps_kwargs) -> str:
    """json.dumps with non-ASCII text kept readable and lone surrogates escaped."""
    text = json.dumps(obj, ensure_ascii=False, **dumps_kwargs)
    # outside strings JSON is ASCII, so every surrogate here sits inside a string literal
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def print_json(obj, **dumps_kwargs) -> None:
    print(json_text(obj, **dumps_kwargs))


def escape_unencodable_stdout() -> None:
    """Let every print to stdout succeed: characters the stream cannot encode come out as
    backslash escapes (stderr does this by default)."""
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")
