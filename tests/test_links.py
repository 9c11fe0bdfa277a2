"""Every relative link and image in the repository's Markdown files points at a file or
directory that exists, inside the repository."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {"runs", "build", "node_modules", "__pycache__"}

# [text](target) and ![alt](target); the target may be <wrapped> and may carry a "title".
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^\s)]+)(?:\s+[\"'(][^)]*)?\s*\)")
# [label]: target
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.MULTILINE)
FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")  # http:, https:, mailto:, ...


def markdown_files(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if not d.startswith(".") and d not in SKIP_DIRS
                             and not d.endswith(".egg-info"))
        found += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".md")]
    return found


def link_targets(text: str) -> list[str]:
    """The link and image targets of a Markdown text, outside code blocks and code spans."""
    text = FENCE.sub("", text)
    text = CODE_SPAN.sub("", text)
    targets = [m.group(1) for m in INLINE.finditer(text)]
    targets += [m.group(1) for m in REFERENCE.finditer(text)]
    return [t[1:-1] if t.startswith("<") and t.endswith(">") else t for t in targets]


def broken_links(root: Path) -> list[str]:
    """'file: target (why)' for every relative link under `root` that is missing or leaves
    `root`; external (scheme:) and pure #anchor links are not checked."""
    root = Path(root).resolve()
    problems = []
    for md in markdown_files(root):
        for target in link_targets(md.read_text(encoding="utf-8")):
            if not target or target.startswith("#") or EXTERNAL.match(target):
                continue
            path = target.split("#", 1)[0].split("?", 1)[0]
            where = md.relative_to(root)
            resolved = (root / path.lstrip("/")) if path.startswith("/") else (md.parent / path)
            resolved = Path(os.path.normpath(resolved))
            if resolved != root and root not in resolved.parents:
                problems.append(f"{where}: {target} (leaves the repository)")
            elif not resolved.exists():
                problems.append(f"{where}: {target} (no such file)")
    return problems


def test_markdown_links_resolve():
    assert markdown_files(ROOT), "no Markdown files found"
    assert broken_links(ROOT) == []


def test_checker_reports_broken_and_escaping_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "ok.md").write_text("# ok\n")
    (tmp_path / "img.png").write_bytes(b"")
    (tmp_path / "README.md").write_text(
        "Good: [ok](docs/ok.md#top), ![img](img.png), [web](https://example.com), "
        "[mail](mailto:a@b.c), [here](#anchor), `[code](not/checked.md)`.\n"
        "Bad: [missing](docs/missing.md) and [outside](../shared/DESIGN.md).\n"
        "\n[ref]: docs/also_missing.md\n"
        "```\n[in a fence](fenced/missing.md)\n```\n")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.md").write_text("[skipped](nowhere.md)\n")
    assert broken_links(tmp_path) == [
        "README.md: docs/missing.md (no such file)",
        "README.md: ../shared/DESIGN.md (leaves the repository)",
        "README.md: docs/also_missing.md (no such file)",
    ]
