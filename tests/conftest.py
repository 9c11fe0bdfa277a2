"""Shared fixtures: one local Ray for the whole session, a tiny checkpoint built once."""

import os

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
