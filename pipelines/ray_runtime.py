"""Ray for hubtree: start or join a cluster, and give each actor a device.

Actors ask for a GPU only when the cluster has one: an actor asking for a GPU
on a CPU-only cluster would wait forever.
"""
from __future__ import annotations

import os

import ray

# Small enough for a laptop or CI runner; catalogs and statistics are tiny objects.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (``auto``, ``ray://...``, ``host:port``) or start Ray on this machine once."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            address="local",  # a new Ray here, even if `ray start` left a cluster address behind
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            log_to_driver=False,
        )


def cluster_gpus() -> int:
    return int(ray.cluster_resources().get("GPU", 0))


def worker_count() -> int:
    """One actor per CPU (or per GPU where there are GPUs) of the cluster."""
    return max(1, cluster_gpus() or int(ray.cluster_resources().get("CPU", 1)))


def actor_options() -> dict:
    """Resources for one compute actor: a whole GPU where the cluster has any, else one CPU."""
    return {"num_gpus": 1, "num_cpus": 1} if cluster_gpus() else {"num_cpus": 1}
