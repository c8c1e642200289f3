"""Shared fixtures: one Prefect test server and one local Ray for the whole session."""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# hubtree's own home (Prefect state, local hubs' file-hash cache) for this session, never the user's ~/.hubtree.
os.environ["HUBTREE_HOME"] = tempfile.mkdtemp(prefix="hubtree-home-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# Test hubs live on 127.0.0.1: a stalled request is one that takes over 3 s. Set before
# Ray starts, so its workers see it too.
os.environ.setdefault("HUBTREE_HTTP_TIMEOUT_S", "3")
# Retries back off from 50 ms (not 1 s): a hub that is down fails a request in seconds.
os.environ.setdefault("HUBTREE_HTTP_BACKOFF_S", "0.05")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

import pytest


@pytest.fixture(scope="session")
def prefect_server():
    """A temporary Prefect API for flow tests (it takes 12-18 s to start here, so once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def ray_local():
    """Ray on this machine with 2 CPUs and a small object store, shut down at the end."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024 * 1024, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def flows(prefect_server, ray_local):
    """Everything a flow needs: Prefect API and Ray."""
    yield
