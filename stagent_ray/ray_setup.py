"""Start or join Ray.

With `RAY_ADDRESS` set (as under `ray job submit`) or `ray.address` in the config, join that
cluster; otherwise start a local Ray sized for this machine, bound to loopback.
"""

from __future__ import annotations

import os

from stagent_ray.config import RayConfig


def init_ray(cfg: RayConfig | None = None, **kwargs):
    import ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return ray.get_runtime_context()
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        return ray.init(address=address, **kwargs)
    # Keep a local Ray on 127.0.0.1 instead of the machine's public interface.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    include_dashboard = kwargs.pop("include_dashboard", None)
    if include_dashboard is False:
        # Without a dashboard, Ray Train's placement-group cleaner asks the default state-API
        # address, which may be another Ray on this host: it does not know our controller and
        # removes our placement group mid-run. A dead address makes it answer "unavailable".
        # Workers inherit this from the raylet, so it must be set before Ray starts.
        os.environ.setdefault("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:9")
    return ray.init(num_cpus=cfg.num_cpus or os.cpu_count(), num_gpus=cfg.num_gpus,
                    include_dashboard=include_dashboard, **kwargs)
