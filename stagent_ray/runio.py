"""Run-directory I/O: Parquet tables and JSON files, local or on cloud storage.

Every write goes to a temporary name first and is renamed into place, so a reader never
takes a half-written file for a complete one. Paths are resolved inside the run directory;
a relative path that climbs out of it is refused.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class RunDirError(ValueError):
    pass


def filesystem(run_dir: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://)."""
    if "://" in run_dir:
        return pafs.FileSystem.from_uri(run_dir)
    return pafs.LocalFileSystem(), os.path.abspath(run_dir)


def run_path(run_dir: str, relative: str) -> str:
    """`relative` joined under the run dir; refuses absolute paths and `..` escapes."""
    if relative.startswith("/") or "://" in relative:
        raise RunDirError(f"artifact path {relative!r} must be relative to the run directory")
    norm = posixpath.normpath(relative)
    if norm == ".." or norm.startswith("../"):
        raise RunDirError(f"artifact path {relative!r} escapes the run directory")
    _, base = filesystem(run_dir)
    return posixpath.join(base, norm)


def _atomic_write(fs, path: str, write) -> None:
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    write(tmp)
    fs.move(tmp, path)


def write_table(run_dir: str, relative: str, rows: list[dict] | pa.Table) -> str:
    fs, _ = filesystem(run_dir)
    path = run_path(run_dir, relative)
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    _atomic_write(fs, path, lambda tmp: pq.write_table(table, tmp, filesystem=fs))
    return path


def read_table(run_dir: str, relative: str, columns: list[str] | None = None) -> list[dict]:
    fs, _ = filesystem(run_dir)
    path = run_path(run_dir, relative)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns).to_pylist()
    except FileNotFoundError as exc:
        raise RunDirError(f"{path} does not exist (has the stage that writes it run?)") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise RunDirError(f"{path} is not a readable Parquet file (corrupt or truncated?): "
                          f"{exc}") from exc


def write_json(run_dir: str, relative: str, obj) -> str:
    fs, _ = filesystem(run_dir)
    path = run_path(run_dir, relative)
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()

    def write(tmp):
        with fs.open_output_stream(tmp) as f:
            f.write(data)
    _atomic_write(fs, path, write)
    return path


def read_json(run_dir: str, relative: str):
    fs, _ = filesystem(run_dir)
    path = run_path(run_dir, relative)
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError as exc:
        raise RunDirError(f"{path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{path} is not valid JSON (truncated?): {exc}") from exc


def read_jsonl(location: str, relative: str | None = None, numbered: bool = False) -> list:
    """The JSON objects of a JSON-lines file, blank lines skipped: the file `relative` inside
    the run dir `location`, or with no `relative` the file `location` itself (a local path or
    URI). A line that is not a JSON object fails with file:line named. numbered: (line number,
    object) pairs, for callers whose own checks name the line too."""
    fs, path = filesystem(location)
    where = location
    if relative is not None:
        path = where = run_path(location, relative)
    try:
        with fs.open_input_stream(path) as f:
            lines = f.read().decode("utf-8").splitlines()
    except FileNotFoundError as exc:
        raise RunDirError(f"{where} does not exist") from exc
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{where}:{lineno}: not valid JSON ({exc})") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{where}:{lineno}: expected a JSON object, got "
                              f"{type(record).__name__}")
        records.append((lineno, record) if numbered else record)
    return records


def write_jsonl(run_dir: str, relative: str, rows: list[dict]) -> None:
    """Rewrite a small JSONL file whole (object stores cannot append). The trainers keep the
    history in their checkpoint, so after a resume the file holds no steps that were undone."""
    fs, _ = filesystem(run_dir)
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def write(tmp):
        with fs.open_output_stream(tmp) as f:
            f.write(data)
    _atomic_write(fs, run_path(run_dir, relative), write)


def exists(run_dir: str, relative: str) -> bool:
    fs, _ = filesystem(run_dir)
    return fs.get_file_info(run_path(run_dir, relative)).type != pafs.FileType.NotFound


# Query records travel through Parquet with their free-form parts as JSON text, so the
# schema stays fixed whatever a family puts in params or ground truth.
def query_to_row(query) -> dict:
    return query.to_row()


def row_to_query(row: dict):
    from stagent_ray.tasks.query import Query

    return Query.from_dict(row)
