"""A run directory on object storage: URI joins (no server), then the run-dir I/O and the
checkpoint round trip against a real S3 API on loopback (moto, `s3_server` in conftest.py).
The whole cascade on S3, on a multi-node Ray, is in test_job_submit.py."""

import os
import tempfile

import pyarrow.fs as pafs
import pytest

from stagent_ray.runio import (RunDirError, exists, join, local_model_dir, read_json, read_jsonl,
                               read_table, run_path, write_json, write_jsonl, write_table)
from stagent_ray.train.common import publish_dir, storage_path

Q = "endpoint_override=127.0.0.1:9000&scheme=http"


@pytest.mark.parametrize("base,relative,want", [
    (f"s3://b/run/x?{Q}", "ckpt/sft0", f"s3://b/run/x/ckpt/sft0?{Q}"),
    (f"s3://b/run/x/?{Q}", "ckpt/sft0", f"s3://b/run/x/ckpt/sft0?{Q}"),
    ("s3://b?region=eu-west-1", "train", "s3://b/train?region=eu-west-1"),
    ("gs://bucket/runs/a", "data/pool.parquet", "gs://bucket/runs/a/data/pool.parquet"),
    ("hdfs://nn:8020/user/r", "ckpt", "hdfs://nn:8020/user/r/ckpt"),
    ("file:///tmp/r", "ckpt", "file:///tmp/r/ckpt"),
    ("/abs/run", "ckpt/rl", "/abs/run/ckpt/rl"),
])
def test_join_keeps_the_scheme_and_the_query(base, relative, want):
    assert join(base, relative) == want


def test_run_path_is_what_a_worker_can_open():
    assert run_path(f"s3://b/run?{Q}", "ckpt/./sft0") == f"s3://b/run/ckpt/sft0?{Q}"
    assert run_path("rel/run", "ckpt") == os.path.join(os.getcwd(), "rel/run/ckpt")
    assert storage_path(f"s3://b/run?{Q}") == f"s3://b/run/train?{Q}"
    for bad in ("../x", "/etc/passwd", "s3://other/x", "a/../../x"):
        with pytest.raises(RunDirError):
            run_path(f"s3://b/run?{Q}", bad)


def s3_dir(endpoint: str, name: str) -> str:
    return f"s3://stagent/{name}?endpoint_override={endpoint}&scheme=http"


def keys(endpoint: str, prefix: str) -> set[str]:
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")
    infos = fs.get_file_info(pafs.FileSelector(f"stagent/{prefix}", recursive=True))
    return {i.path.removeprefix(f"stagent/{prefix}/") for i in infos if i.is_file}


def test_run_dir_io_on_s3(s3_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a path that lost its scheme would land here, relative
    run_dir = s3_dir(s3_server, "io")
    write_table(run_dir, "data/t.parquet", [{"query_id": "q1", "x": 1}])
    write_json(run_dir, "manifest.json", {"stages": {}})
    write_jsonl(run_dir, "train/m.jsonl", [{"step": 1}, {"step": 2}])
    assert read_table(run_dir, "data/t.parquet") == [{"query_id": "q1", "x": 1}]
    assert read_json(run_dir, "manifest.json") == {"stages": {}}
    assert read_jsonl(run_dir, "train/m.jsonl") == [{"step": 1}, {"step": 2}]
    assert read_jsonl(run_path(run_dir, "train/m.jsonl")) == [{"step": 1}, {"step": 2}]
    assert exists(run_dir, "data/t.parquet") and not exists(run_dir, "data/none.parquet")
    assert keys(s3_server, "io") == {"data/t.parquet", "manifest.json", "train/m.jsonl"}
    assert os.listdir(tmp_path) == []


def test_a_checkpoint_in_the_bucket_loads_on_a_node_without_it(s3_server, tiny_checkpoint,
                                                               tmp_path, monkeypatch):
    from stagent_ray.models.build import load_model, load_tokenizer, save_checkpoint
    from stagent_ray.rollout.engines import make_token_engine

    run_dir = s3_dir(s3_server, "ckpt")
    uri = publish_dir(pafs.LocalFileSystem(), tiny_checkpoint, run_dir, "ckpt/sft0")
    assert uri == run_path(run_dir, "ckpt/sft0")
    assert "config.json" in keys(s3_server, "ckpt/ckpt/sft0")
    node = tmp_path / "node-tmp"   # this "node's" own temp dir, which nothing else shares
    node.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(node))
    local = local_model_dir(uri)
    assert local.startswith(str(node)) and os.path.exists(os.path.join(local, "config.json"))
    assert local_model_dir(uri) == local   # cached per content
    engine = make_token_engine("hf", uri, device="cpu")
    assert engine.tokenizer.pad_token_id is not None and load_tokenizer(uri).vocab_size > 0

    # A checkpoint saved straight to the bucket (as the base stage does) and re-exported at
    # the same URI: a new copy, not the stale one.
    model = load_model(tiny_checkpoint)
    for p in model.parameters():
        p.data.add_(1.0)
        break
    save_checkpoint(model, load_tokenizer(tiny_checkpoint), uri)
    fresh = local_model_dir(uri)
    assert fresh != local and os.path.exists(os.path.join(fresh, "model.safetensors"))
