"""deploy/: manifests say what they claim, and --ray-address joins a separately started Ray head."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hubtree.lake import Lake
from tests.hubs import add_repo

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_raycluster_has_head_cpu_and_gpu_groups_on_the_hubtree_image():
    cluster = yaml.safe_load((DEPLOY / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "hubtree" in head["image"]
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0] for g in cluster["spec"]["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    assert groups["gpu"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "nvidia.com/gpu" not in groups["cpu"]["resources"]["limits"]
    secrets = {e["name"] for e in head["env"]}
    assert "HF_TOKEN" in secrets


def test_prefect_yaml_deploys_the_run_flow_nightly_on_a_work_pool():
    config = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    (deployment,) = config["deployments"]
    assert deployment["entrypoint"] == "pipelines/run.py:run_flow"
    assert deployment["work_pool"]["name"]
    assert deployment["schedules"][0]["cron"] == "0 3 * * *"


def test_dockerfile_installs_pinned_torch_before_hubtree():
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    torch_line = next(i for i, l in enumerate(lines) if "torch==" in l)
    install_line = next(i for i, l in enumerate(lines) if 'pip install --no-cache-dir ".' in l)
    assert torch_line < install_line


@pytest.mark.slow
def test_crawl_joins_a_ray_head_started_with_ray_start(tmp_path, prefect_server):
    from prefect.settings import PREFECT_API_URL

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray_bin = Path(sys.executable).parent / "ray"
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
         "--object-store-memory=100000000", "--disable-usage-stats"],
        # A head started by hand has no token for our driver: this test cluster runs without auth.
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        for i in range(3):
            add_repo(tmp_path / "hub", f"org/m{i}", seed=i)
        # RAY_AUTH_MODE as the head has it (the session's own Ray set "token" in this process).
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "RAY_AUTH_MODE": "disabled"}
        command = [sys.executable, "-m", "hubtree.cli", "crawl", "--hub", str(tmp_path / "hub"),
                   "--lake", str(tmp_path / "lake"), "--ray-address", f"127.0.0.1:{port}"]
        deadline = time.monotonic() + 120
        while subprocess.run([str(ray_bin), "status", f"--address=127.0.0.1:{port}"], capture_output=True,
                             env={**os.environ, "RAY_AUTH_MODE": "disabled"}).returncode != 0:
            assert time.monotonic() < deadline, "the Ray head did not come up"
            time.sleep(2)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert Lake(str(tmp_path / "lake")).query("SELECT count(*) AS n FROM repos").to_pylist() == [{"n": 3}]
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)
