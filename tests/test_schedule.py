"""The nightly deployment exists with its cron, and `hubtree rerun` runs it on demand, idempotently."""
import os
import subprocess
import sys
import time

import pytest

from hubtree.lake import Lake
from tests.hubs import add_repo


@pytest.mark.slow
def test_schedule_registers_a_cron_deployment_that_rerun_runs(tmp_path, flows):
    import ray
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    for i in range(5):
        add_repo(tmp_path / "hub", f"org/m{i}", seed=i)
    lake = tmp_path / "lake"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cli = [sys.executable, "-m", "hubtree.cli"]
    server = subprocess.Popen(
        [*cli, "schedule", "--cron", "0 3 * * *", "--name", "test-nightly", "--hub", str(tmp_path / "hub"),
         "--lake", str(lake), "--ray-address", ray.get_runtime_context().gcs_address],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deployment = None
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while deployment is None and time.monotonic() < deadline:
                try:
                    deployment = client.read_deployment_by_name("hubtree-run/test-nightly")
                except Exception:
                    time.sleep(0.5)
        assert deployment is not None, "hubtree schedule did not register its deployment"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
        assert deployment.parameters["lake"] == str(lake)

        for _ in range(2):  # the second run finds everything in the lake already
            done = subprocess.run([*cli, "rerun", "hubtree-run/test-nightly", "--param", "limit=3"],
                                  env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "Completed" in done.stdout
        rows = Lake(str(lake)).query("SELECT repo_id FROM repos_all ORDER BY repo_id").column(0).to_pylist()
        assert rows == ["org/m0", "org/m1", "org/m2"]
        runs = Lake(str(lake)).query("SELECT flow, status FROM crawl_runs").to_pylist()
        assert sorted((r["flow"], r["status"]) for r in runs) == sorted(
            [(flow, "completed") for flow in ("run", "crawl", "stats", "trees", "lora")] * 2  # the whole pipeline, twice
        )
    finally:
        os.killpg(server.pid, 9)
        server.wait()
