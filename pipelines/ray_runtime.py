"""Ray for hubtree: start or join a cluster, the one actor pool, and each actor's device and hub connections.

Actors ask for a GPU only when the cluster has one: an actor asking for a GPU
on a CPU-only cluster would wait forever.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import ray
import torch
from ray.util import ActorPool

from hubtree.ops.hub.connect import open_hub
from hubtree.ops.hub.source import HubSource, RepoRef
from hubtree.ops.weights.safetensors_reader import ByteSource

# Small enough for a laptop or CI runner; catalogs and statistics are tiny objects.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024


class _TokenAuthNotice(logging.Filter):
    """Drops Ray's notice that a new local cluster uses token authentication, printed on every start.

    Token authentication is Ray's default for a local cluster (Ray 2.60), and hubtree keeps it:
    the notice tells the user nothing they must act on, and it buried each run's summary.
    (Setting RAY_AUTH_MODE=token instead is not enough: Ray reads it when ``ray`` is imported.)
    Ray's other authentication warnings, such as a cluster without authentication, still print.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_TokenAuthNotice())


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


class WorkerPool(ActorPool):
    """Ray's ActorPool, keeping the list of its actors (to ask each of them something at the end)."""

    def __init__(self, actors: list):
        super().__init__(actors)
        self.actors = list(actors)

    def traffic(self) -> Counter:
        """What the actors' hub connections sent and received, summed (each actor has a ``traffic()`` method)."""
        return sum((Counter(counts) for counts in ray.get([a.traffic.remote() for a in self.actors])), Counter())


@contextmanager
def actor_pool(make: Callable[[int], Any], tasks: int, ray_address: str | None = None) -> Iterator[WorkerPool]:
    """Start or join Ray, create ``min(worker_count(), tasks)`` actors with ``make(n)`` and yield them as a pool.

    The actors are killed when the block ends, also when it raises: a failed stage
    must not leave actors holding CPUs, GPUs or hub connections.
    """
    ensure_ray(ray_address)
    n = max(1, min(worker_count(), tasks))
    actors = [make(n) for _ in range(n)]
    try:
        yield WorkerPool(actors)
    finally:
        for actor in actors:
            ray.kill(actor)


class HubConnections:
    """One connection per hub URL, opened on first use and kept (an actor reads many repos of few hubs).

    ``bytes_read``: file bytes read from the files opened with ``open_file``, a folder hub's too.
    """

    def __init__(self) -> None:
        self._hubs: dict[str, HubSource] = {}
        self.bytes_read = 0

    def get(self, url: str) -> HubSource:
        if url not in self._hubs:
            self._hubs[url] = open_hub(url)  # inside Ray, its request budget is the hub's one shared budget
        return self._hubs[url]

    @contextmanager
    def open_file(self, url: str, ref: RepoRef, path: str) -> Iterator[ByteSource]:
        """A file of the hub at ``url``, whose bytes read join ``bytes_read`` when the block ends, also when it raises."""
        handle = self.get(url).open_file(ref, path)
        try:
            yield handle
        finally:
            self.bytes_read += handle.bytes_read

    def traffic(self) -> Counter:
        """Requests sent by bucket over every connection (``source_traffic``), and ``bytes``: ``bytes_read``."""
        requests = sum((Counter(source_traffic(s)) for s in self._hubs.values()), Counter())
        return Counter({**requests, "bytes": self.bytes_read})


def source_traffic(source: HubSource) -> dict[str, int]:
    """A hub connection's requests by bucket (``api_calls``, ``resolves``, ``cdn_requests``) and ``bytes``; a folder sends none."""
    traffic = getattr(source, "traffic", None)
    return traffic.counts() if traffic is not None else {}


def actor_device() -> torch.device:
    """This actor's device: its GPU when Ray gave it one and torch sees it, else the CPU."""
    return torch.device("cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
