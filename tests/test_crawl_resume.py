"""Nothing lost, nothing twice: recrawls and a crawl killed with SIGKILL end with the same tables."""
import os
import signal
import subprocess
import sys
import time

import pytest

from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from tests.hubs import add_repo

CONTENT = {
    "repos": "repo_id, revision, author, tags, n_files, total_bytes, weights_bytes, n_tensors, n_params, bytes_fetched, card_metadata",
    "declared_edges": "repo_id, revision, parent_repo_id, relation, source",
    "files": "repo_id, revision, path, size, kind",
    "tensors": "repo_id, revision, file, name, dtype, shape, numel, data_begin, data_end",
    "crawl_errors": "repo_id, revision, path, stage, error_class, message",
}


def snapshot(lake_dir) -> dict:
    """Every committed row of every table (all revisions, all runs), minus run bookkeeping."""
    lake = Lake(str(lake_dir))
    return {t: sorted(map(str, lake.query(f"SELECT {cols} FROM {t}_all").to_pylist())) for t, cols in CONTENT.items()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    for i in range(24):
        card = f"base_model: org{i % 3}/m{i - 3}\nlicense: mit\n" if i >= 3 else "license: mit\n"
        add_repo(root, f"org{i % 3}/m{i}", card=card, seed=i)
    (root / "org0" / "m0" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    return root


@pytest.fixture(scope="module")
def reference(hub, tmp_path_factory, flows):
    lake = tmp_path_factory.mktemp("reference") / "lake"
    crawl_flow(hub=str(hub), lake=str(lake), batch_size=4, progress=False)
    return snapshot(lake)


def test_recrawl_adds_no_rows(hub, reference, tmp_path, flows):
    lake = tmp_path / "lake"
    crawl_flow(hub=str(hub), lake=str(lake), batch_size=4, progress=False)
    second = crawl_flow(hub=str(hub), lake=str(lake), batch_size=4, progress=False)
    assert second["repos_skipped"] == 24 and second["repos_crawled"] == 0
    assert snapshot(lake) == reference
    assert len(reference["repos"]) == 24 and len(reference["tensors"]) == 23 * 3


def test_changed_repo_is_recrawled_and_views_show_its_new_revision(hub, tmp_path, flows):
    import shutil

    root = tmp_path / "hub"
    shutil.copytree(hub, root, symlinks=True)
    lake = tmp_path / "lake"
    crawl_flow(hub=str(root), lake=str(lake), progress=False)
    add_repo(root, "org1/m1", seed=999)  # new weights, new revision
    summary = crawl_flow(hub=str(root), lake=str(lake), progress=False)
    assert (summary["repos_crawled"], summary["repos_skipped"]) == (1, 23)
    the_lake = Lake(str(lake))
    assert the_lake.query("SELECT count(*) AS n FROM repos").to_pylist() == [{"n": 24}]
    assert the_lake.query("SELECT count(*) AS n FROM repos_all").to_pylist() == [{"n": 25}]


@pytest.mark.slow
def test_killed_crawl_resumes_without_loss_or_duplicates(hub, reference, tmp_path, flows):
    import ray
    from prefect.settings import PREFECT_API_URL

    lake = tmp_path / "lake"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    command = [sys.executable, "-m", "hubtree.cli", "crawl", "--hub", str(hub), "--lake", str(lake),
               "--batch-size", "1", "--ray-address", ray.get_runtime_context().gcs_address]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (lake / "catalog.sqlite").exists() and _crawl_commits(lake) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the crawl finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = snapshot(lake)
    assert 0 < len(partial["repos"]) < 24

    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    assert snapshot(lake) == reference
    runs = Lake(str(lake)).query("SELECT status FROM crawl_runs ORDER BY started_at").column(0).to_pylist()
    assert runs == ["running", "completed"]  # the killed run never finished, and says so


def _crawl_commits(lake) -> int:
    """Crawl batches committed so far, read from the catalog the way any SQLite client would."""
    import sqlite3

    with sqlite3.connect(f"file:{lake / 'catalog.sqlite'}?mode=ro", uri=True, timeout=5) as db:
        try:
            return db.execute("SELECT count(*) FROM ducklake_snapshot_changes WHERE commit_message = 'crawl'").fetchone()[0]
        except sqlite3.OperationalError:  # the catalog's tables are not there yet
            return 0
