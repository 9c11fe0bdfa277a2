"""Run-directory I/O: Parquet tables and JSON files, local or on cloud storage.

Every write goes to a temporary name first and is renamed into place, so a reader never
takes a half-written file for a complete one. Paths are resolved inside the run directory;
a relative path that climbs out of it is refused. A path handed out (`run_path`) is absolute
or a URI with its scheme and query string, so it opens the same on every node: workers, Serve
replicas and Ray Train share no disk with the driver on a cluster.
"""

from __future__ import annotations

import json
import os
import posixpath
import tempfile
import uuid
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class RunDirError(ValueError):
    pass


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI (s3://, gs://). The
    URI's query string configures the filesystem (s3: endpoint_override, scheme, region)."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def join(location: str, relative: str) -> str:
    """`relative` under a local path (made absolute) or a URI. A URI keeps its scheme and its
    query string: s3://b/run?endpoint_override=h:9 + ckpt/x -> s3://b/run/ckpt/x?endpoint_override=h:9."""
    if "://" not in location:
        return posixpath.join(os.path.abspath(location), relative)
    parts = urlsplit(location)
    return urlunsplit(parts._replace(path=posixpath.join(parts.path or "/", relative)))


def run_path(run_dir: str, relative: str) -> str:
    """`relative` joined under the run dir, as a path or URI that any process on any node can
    open (workers, replicas and Ray Train get these); refuses absolute paths and `..` escapes.
    Pair it with `filesystem()` to open it here."""
    if relative.startswith("/") or "://" in relative:
        raise RunDirError(f"artifact path {relative!r} must be relative to the run directory")
    norm = posixpath.normpath(relative)
    if norm == ".." or norm.startswith("../"):
        raise RunDirError(f"artifact path {relative!r} escapes the run directory")
    return join(run_dir, norm)


def _atomic_write(fs, path: str, write) -> None:
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    write(tmp)
    fs.move(tmp, path)


def write_table(run_dir: str, relative: str, rows: list[dict] | pa.Table) -> str:
    where = run_path(run_dir, relative)
    fs, path = filesystem(where)
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows)
    _atomic_write(fs, path, lambda tmp: pq.write_table(table, tmp, filesystem=fs))
    return where


def read_table(run_dir: str, relative: str, columns: list[str] | None = None) -> list[dict]:
    where = run_path(run_dir, relative)
    fs, path = filesystem(where)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns).to_pylist()
    except FileNotFoundError as exc:
        raise RunDirError(f"{where} does not exist (has the stage that writes it run?)") from exc
    except (pa.ArrowInvalid, OSError) as exc:
        raise RunDirError(f"{where} is not a readable Parquet file (corrupt or truncated?): "
                          f"{exc}") from exc


def write_json(run_dir: str, relative: str, obj) -> str:
    where = run_path(run_dir, relative)
    fs, path = filesystem(where)
    data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()

    def write(tmp):
        with fs.open_output_stream(tmp) as f:
            f.write(data)
    _atomic_write(fs, path, write)
    return where


def read_json(run_dir: str, relative: str):
    where = run_path(run_dir, relative)
    fs, path = filesystem(where)
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except FileNotFoundError as exc:
        raise RunDirError(f"{where} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise RunDirError(f"{where} is not valid JSON (truncated?): {exc}") from exc


def read_jsonl(location: str, relative: str | None = None, numbered: bool = False) -> list:
    """The JSON objects of a JSON-lines file, blank lines skipped: the file `relative` inside
    the run dir `location`, or with no `relative` the file `location` itself (a local path or
    URI). A line that is not a JSON object fails with file:line named. numbered: (line number,
    object) pairs, for callers whose own checks name the line too."""
    fs, path = filesystem(location)
    where = location
    if relative is not None:
        where = run_path(location, relative)
        fs, path = filesystem(where)
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
    fs, path = filesystem(run_path(run_dir, relative))
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()

    def write(tmp):
        with fs.open_output_stream(tmp) as f:
            f.write(data)
    _atomic_write(fs, path, write)


def exists(run_dir: str, relative: str) -> bool:
    fs, path = filesystem(run_path(run_dir, relative))
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def copy_dir(src_fs: pafs.FileSystem, src_path: str, dst: str) -> None:
    """Copy a directory to `dst` (a path or URI), replacing what is there. Locally via a temp
    name + rename, so a crash never leaves a half-copied directory under the final name; on
    object stores (no directory rename) it is deleted and copied."""
    fs, path = filesystem(dst)
    if isinstance(fs, pafs.LocalFileSystem):
        import shutil

        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        fs.create_dir(tmp, recursive=True)
        pafs.copy_files(src_path, tmp, source_filesystem=src_fs, destination_filesystem=fs)
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
        return
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(src_path, path, source_filesystem=src_fs, destination_filesystem=fs)


def local_model_dir(path: str) -> str:
    """A directory on this node holding the checkpoint at `path`: a local path or hub id as
    it is, a URI copied down into this node's temp dir (nodes share no disk), once per
    content."""
    if "://" not in path:
        return path
    fs, inner = filesystem(path)
    # Keyed by the listing too (names, sizes, mtimes): a re-exported checkpoint at the same
    # URI must not be served from a stale copy.
    files = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    if not files:
        raise RunDirError(f"{path}: no checkpoint there (empty or missing)")
    key = path + repr(sorted((f.path, f.size, str(f.mtime)) for f in files))
    local = os.path.join(tempfile.gettempdir(), "stagent_models",
                         uuid.uuid5(uuid.NAMESPACE_URL, key).hex)
    if not os.path.exists(local):
        # Workers on one node may race: each copies to its own temp dir, the first rename wins.
        tmp = f"{local}.tmp-{uuid.uuid4().hex[:8]}"
        os.makedirs(tmp)
        pafs.copy_files(inner, tmp, source_filesystem=fs,
                        destination_filesystem=pafs.LocalFileSystem())
        try:
            os.rename(tmp, local)
        except OSError:  # another worker got there first
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return local


# Query records travel through Parquet with their free-form parts as JSON text, so the
# schema stays fixed whatever a family puts in params or ground truth (tasks.query.Query:
# to_row / from_dict; runio does not import tasks, which sit above it).
def query_to_row(query) -> dict:
    return query.to_row()
