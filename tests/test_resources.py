"""Resources come from the config and the cluster, never from the driver.

On a real cluster the driver of `ray job submit` sits on a CPU head: asking its torch for
CUDA put every SFT and RL stage on CPU workers. Here a local Ray whose node declares GPUs
and an accelerator type (as a GPU node of cluster/aws.yaml does) runs a real TorchTrainer
with the project's ScalingConfig and a real Ray Data actor pool with the project's actor
resources, and each worker reports what Ray gave it. The node's GPUs are declared, not
present, so the trainer uses gloo and the workers never touch CUDA.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from stagent_ray.config import ConfigError, load_config

REPO = os.path.join(os.path.dirname(__file__), "..")
TINY = os.path.join(REPO, "configs", "tiny.yaml")


@pytest.mark.parametrize("override, field", [
    ("train.use_gpu=maybe", "train.use_gpu"),
    ("train.accelerator_type=H100 train.use_gpu=false", "train.accelerator_type"),
    ("rollout.accelerator_type=H100", "rollout.accelerator_type"),
    ("serve.accelerator_type=H100", "serve.accelerator_type"),
    ("rollout.num_actors=4 rollout.max_actors=2", "rollout.max_actors"),
])
def test_bad_resource_settings_name_their_field(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(TINY, override.split())


def test_auto_on_a_cpu_cluster_asks_for_cpus_only(ray_session):
    from stagent_ray.train.common import scaling_config

    sc = scaling_config(load_config(TINY).train, 2)
    assert sc.use_gpu is False and sc.resources_per_worker == {"CPU": 0.5}
    forced = scaling_config(load_config(TINY, ["train.use_gpu=true"]).train, 2)
    assert forced.use_gpu and forced.resources_per_worker == {"CPU": 1.0, "GPU": 1.0}


CLUSTER_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import ray, ray.train
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from stagent_ray.config import load_config
    from stagent_ray.stages.rollouts import actor_resources
    from stagent_ray.train.common import scaling_config

    out = sys.argv[1]
    ray.init(num_cpus=2, num_gpus=2, resources={"accelerator_type:H100": 2},
             include_dashboard=False)
    cfg = load_config(sys.argv[2], ["train.accelerator_type=H100", "train.cpus_per_worker=0.5",
                                    "rollout.gpus_per_actor=0.5",
                                    "rollout.accelerator_type=H100"])

    def loop(_):
        rank = ray.train.get_context().get_world_rank()
        with open(os.path.join(out, f"train{rank}.json"), "w") as f:
            json.dump(ray.get_runtime_context().get_assigned_resources(), f)

    sc = scaling_config(cfg.train, 2)  # use_gpu auto: the cluster has GPUs
    TorchTrainer(loop, scaling_config=sc, torch_config=TorchConfig(backend="gloo"),
                 run_config=RunConfig(storage_path=os.path.join(out, "train"),
                                      failure_config=FailureConfig(max_failures=0,
                                                                   controller_failure_limit=0))
                 ).fit()

    class Probe:
        def __call__(self, batch):
            batch["res"] = [json.dumps(ray.get_runtime_context().get_assigned_resources())]
            return batch

    rows = ray.data.from_items([{"x": i} for i in range(2)]).map_batches(
        Probe, batch_size=1, compute=ray.data.ActorPoolStrategy(size=1),
        **actor_resources(cfg.rollout, cfg.rollout.gpus_per_actor)).take_all()
    with open(os.path.join(out, "actor.json"), "w") as f:
        json.dump(json.loads(rows[0]["res"]), f)
""")


@pytest.mark.timeout(300)
def test_gpu_node_gets_the_requests_the_config_makes(tmp_path):
    script = tmp_path / "cluster.py"
    script.write_text(CLUSTER_SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=os.path.abspath(REPO))
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), TINY], env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):  # each Train worker: one GPU, its CPUs, pinned to the H100 nodes
        got = json.loads((tmp_path / f"train{rank}.json").read_text())
        assert got == {"CPU": 0.5, "GPU": 1.0, "accelerator_type:H100": 0.001}, got
    actor = json.loads((tmp_path / "actor.json").read_text())
    assert actor == {"CPU": 0.5, "GPU": 0.5, "accelerator_type:H100": 0.001}, actor
