"""The trees and lora flows killed with SIGKILL mid-run and run again give the tables of an uninterrupted run."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from hubtree.lake import Lake
from hubtree.ops.zoo.build import ZooSpec, build_zoo
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.lora import lora_flow
from hubtree.pipelines.stats import stats_flow
from hubtree.pipelines.trees import trees_flow

RESULTS = {
    "trees": "SELECT child_repo_id, parent_repo_id, family_id, source, round(confidence, 9) AS c FROM tree_edges ORDER BY ALL",
    "lora": "SELECT base_repo, layer, n_sources, rank, confidence FROM lora_recoveries ORDER BY ALL",
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, flows):
    out = tmp_path_factory.mktemp("zoo")
    build_zoo(out, seed=11, spec=ZooSpec.tiny(), progress=False)
    lake = out / "lake"
    crawl_flow(hub=str(out / "hub"), lake=str(lake), progress=False)
    stats_flow(lake=str(lake), layers="self_attn", progress=False)
    return lake


@pytest.mark.slow
@pytest.mark.parametrize("verb", ["trees", "lora"])
def test_killed_flow_reruns_to_the_uninterrupted_tables(verb, prepared, tmp_path, flows):
    import ray
    from prefect.settings import PREFECT_API_URL

    reference, killed = tmp_path / "reference", tmp_path / "killed"
    shutil.copytree(prepared, reference)
    shutil.copytree(prepared, killed)
    {"trees": lambda: trees_flow(lake=str(reference)), "lora": lambda: lora_flow(lake=str(reference), progress=False)}[verb]()

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [sys.executable, "-m", "hubtree.cli", verb, "--lake", str(killed)]
    if verb == "lora":
        command += ["--ray-address", ray.get_runtime_context().gcs_address]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:  # kill once the run has started
        if len(Lake(str(killed)).query(f"SELECT * FROM crawl_runs_all WHERE flow = '{verb}'")):
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)

    rows = lambda lake: list(map(str, Lake(str(lake)).query(RESULTS[verb]).to_pylist()))
    assert rows(killed) == rows(reference) and rows(reference)
