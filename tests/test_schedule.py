"""Schedules fire on their own, on hubtree's local Prefect server or on the one PREFECT_API_URL names;
`hubtree rerun` checks before it runs and leaves nothing behind; bad input fails fast in one line."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from hubtree.cli import main
from hubtree.cli_schedule import default_name
from hubtree.lake import Lake
from tests.hubs import add_repo

CLI = [sys.executable, "-m", "hubtree.cli"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API_URL")}
    return {**env, **extra}


def _completed_runs(lake) -> int:
    if not lake.exists():
        return 0
    try:
        return Lake(str(lake)).query("SELECT count(*) FROM crawl_runs WHERE flow = 'run' AND status = 'completed'").column(0)[0].as_py()
    except Exception:
        return 0


@pytest.mark.slow
def test_a_schedule_fires_on_its_own_on_the_local_server_and_stops_on_sigterm(tmp_path, ray_local):
    """No PREFECT_API_URL: `hubtree schedule` starts a Prefect server under HUBTREE_HOME, the
    interval schedule fires without anyone asking, and SIGTERM stops runner and server."""
    import ray

    for i in range(2):
        add_repo(tmp_path / "hub", f"org/m{i}", seed=i)
    lake, home = tmp_path / "lake", tmp_path / "home"
    env = _env(HUBTREE_HOME=str(home))
    served = subprocess.Popen(
        [*CLI, "schedule", "--every", "5", "--hub", str(tmp_path / "hub"), "--lake", str(lake),
         "--ray-address", ray.get_runtime_context().gcs_address],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 420
        while _completed_runs(lake) == 0 and time.monotonic() < deadline and served.poll() is None:
            time.sleep(2)
        assert _completed_runs(lake) >= 1, "no scheduled run completed"
        assert (home / "prefect" / "prefect.db").exists()  # hubtree's own Prefect state
        listed = subprocess.run([*CLI, "schedules"], env=env, capture_output=True, text=True, timeout=60)
        assert f"hubtree-run/{default_name(str(lake))}" in listed.stdout and "every 5 s" in listed.stdout, listed.stdout + listed.stderr

        served.send_signal(signal.SIGTERM)
        out, _ = served.communicate(timeout=60)
        assert served.returncode == 0, out
        assert "stopped serving" in out
        assert not (home / "prefect" / "server.json").exists()  # the server it started is gone too
    finally:
        if served.poll() is None:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait()


@pytest.mark.slow
def test_cron_deployment_on_a_given_server_and_reruns_that_check_first(tmp_path, flows):
    import ray
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    for i in range(5):
        add_repo(tmp_path / "hub", f"org/m{i}", seed=i)
    lake = tmp_path / "lake"
    env = _env(PREFECT_API_URL=PREFECT_API_URL.value())
    run_cli = lambda *args: subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=300)  # noqa: E731

    unserved = run_cli("rerun", "test-nightly")
    assert unserved.returncode == 1 and "no deployment 'hubtree-run/test-nightly'" in unserved.stderr
    assert "Traceback" not in unserved.stderr

    server = subprocess.Popen(
        [*CLI, "schedule", "--cron", "0 3 * * *", "--name", "test-nightly", "--hub", str(tmp_path / "hub"),
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

        typo = run_cli("rerun", "test-nightly", "--param", "limt=3")
        assert typo.returncode == 1 and "no parameter 'limt'" in typo.stderr and "limit" in typo.stderr

        for _ in range(2):  # the second run finds everything in the lake already
            done = run_cli("rerun", "hubtree-run/test-nightly", "--param", "limit=3")
            assert done.returncode == 0, done.stdout + done.stderr
            assert "Completed" in done.stdout
            assert re.search(r"^crawl +completed", done.stdout, re.M)  # the run's summary from crawl_runs
        rows = Lake(str(lake)).query("SELECT repo_id FROM repos_all ORDER BY repo_id").column(0).to_pylist()
        assert rows == ["org/m0", "org/m1", "org/m2"]
        runs = Lake(str(lake)).query("SELECT flow, status, flow_run_id, root_flow_run_id FROM crawl_runs").to_pylist()
        assert sorted((r["flow"], r["status"]) for r in runs) == sorted(
            [(flow, "completed") for flow in ("run", "crawl", "stats", "trees", "lora", "compact")] * 2  # the whole pipeline, twice
        )
        assert len({r["root_flow_run_id"] for r in runs}) == 2 and all(r["flow_run_id"] for r in runs)

        listed = run_cli("schedules")
        assert "hubtree-run/test-nightly" in listed.stdout and "cron 0 3 * * *" in listed.stdout
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    with get_client(sync_client=True) as client:  # stopped: the schedule is paused, nothing left to fire
        assert client.read_deployment_by_name("hubtree-run/test-nightly").paused
    stale = run_cli("rerun", "test-nightly")
    assert stale.returncode == 1 and "nothing serves hubtree-run/test-nightly" in stale.stderr


def test_a_bad_cron_fails_before_anything_starts(tmp_path):
    env = _env(HUBTREE_HOME=str(tmp_path / "home"))
    done = subprocess.run([*CLI, "schedule", "--cron", "61 * * * *", "--hub", str(tmp_path), "--lake", str(tmp_path / "l")],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "bad cron '61 * * * *'" in done.stderr and "Traceback" not in done.stderr
    assert "serving" not in done.stdout and not (tmp_path / "home" / "prefect" / "server.json").exists()


def test_the_default_deployment_name_tells_lakes_apart():
    assert default_name("/data/a/lake") != default_name("/data/b/lake")
    assert default_name("/data/a/lake").startswith("nightly-lake-")
    assert default_name("s3://bucket/lakes/main/").startswith("nightly-main-")


def test_rerun_without_a_server_says_what_to_start(tmp_path):
    done = subprocess.run([*CLI, "rerun", "nightly"], env=_env(HUBTREE_HOME=str(tmp_path)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no Prefect server is running" in done.stderr and "hubtree schedule" in done.stderr


def test_rerun_against_a_refused_api_says_refused_at_once(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([*CLI, "rerun", "nightly"], env=_env(PREFECT_API_URL=f"http://127.0.0.1:{port}/api"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "refused" in done.stderr and "Traceback" not in done.stderr


def test_a_param_that_is_not_key_value_is_refused():
    result = CliRunner().invoke(main, ["rerun", "nightly", "--param", "limit"])
    assert result.exit_code == 2 and "is not KEY=VALUE" in result.output
