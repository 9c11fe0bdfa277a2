"""Shared fixtures: one local Ray for the whole session, a tiny checkpoint built once, an S3
server on loopback."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from stagent_ray.config import RayConfig
    from stagent_ray.ray_setup import init_ray

    init_ray(RayConfig(num_cpus=2), include_dashboard=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cfg():
    from stagent_ray.config import load_config

    return load_config(os.path.join(os.path.dirname(__file__), "..", "configs", "tiny.yaml"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_cfg):
    """A fresh tiny model + world tokenizer in Hugging Face format."""
    from stagent_ray.stages.base import build_base_checkpoint

    path = str(tmp_path_factory.mktemp("ckpt") / "base")
    return build_base_checkpoint(path, tiny_cfg.model, tiny_cfg.world, seed=0)


# Any keys do for moto; pyarrow (and every Ray node in the multi-node test) reads them from
# the environment, as on a cluster with instance credentials.
S3_KEYS = {"AWS_ACCESS_KEY_ID": "stagent", "AWS_SECRET_ACCESS_KEY": "stagent-secret",
           "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server mode) on loopback with the bucket `stagent`; yields its
    endpoint (127.0.0.1:port), for `s3://stagent/...?endpoint_override=<it>&scheme=http`."""
    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    saved = {k: os.environ.get(k) for k in S3_KEYS}
    os.environ.update(S3_KEYS)
    try:
        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                               allow_bucket_creation=True)
        deadline = time.time() + 60
        while True:
            try:
                fs.create_dir("stagent")
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    raise
                time.sleep(0.3)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
