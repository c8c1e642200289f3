"""Hostile hubs, outages and dead hubs, end to end through the flows.

* a hub holding an overflowing shape, a surrogate name and a truncated file lands every other repo;
* a hub that stops answering mid-crawl and comes back ends, after one rerun, with every tensor;
* runs end ``failed`` or ``partial``, never ``running`` or ``completed``, when they fail.
"""
from __future__ import annotations

import json
import struct
import time

import pytest
from click.testing import CliRunner

import hubtree.pipelines.trees as trees_module
from hubtree.cli import EXIT_FAILED, EXIT_PARTIAL, main
from hubtree.hub_server import FaultSpec, running
from hubtree.lake import Lake
from hubtree.ops.hub.local import LocalHub
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.stats import stats_flow
from hubtree.pipelines.trees import trees_flow
from tests.hubs import add_repo


def poison(path, header: dict, data: bytes = b"") -> None:
    body = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(body)) + body + data)


def runs(lake_dir, flow: str) -> list[str]:
    return [r["status"] for r in Lake(str(lake_dir)).query(f"SELECT status FROM crawl_runs_all WHERE flow = '{flow}' ORDER BY started_at, finished_at NULLS FIRST").to_pylist()]


@pytest.fixture(scope="module")
def poisoned_hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("poisoned")
    for i in range(4):
        add_repo(root, f"good/m{i}", seed=i)
    poison(add_repo(root, "bad/overflow") / "model.safetensors", {"w": {"dtype": "F32", "shape": [0, 2**64], "data_offsets": [0, 0]}})
    poison(add_repo(root, "bad/surrogate") / "model.safetensors", {"\ud800x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4)
    truncated = add_repo(root, "bad/truncated", seed=9) / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:-40])
    return root


def test_a_poisoned_hub_lands_every_other_repo(poisoned_hub, tmp_path, flows):
    summary = crawl_flow(hub=str(poisoned_hub), lake=str(tmp_path / "lake"), progress=False)
    lake = Lake(str(tmp_path / "lake"))
    tensors = {r["repo_id"]: r["n"] for r in lake.query("SELECT repo_id, count(*) AS n FROM tensors GROUP BY 1").to_pylist()}
    assert all(tensors.get(f"good/m{i}") == 3 for i in range(4))
    errors = {r["repo_id"]: r["error_class"] for r in lake.query("SELECT repo_id, error_class FROM crawl_errors").to_pylist()}
    assert errors == {"bad/overflow": "InvalidHeaderError", "bad/surrogate": "InvalidHeaderError", "bad/truncated": "TensorOutOfRangeError"}
    assert summary["status"] == "completed"  # bad files are the repos' findings, not failures of the run
    assert crawl_flow(hub=str(poisoned_hub), lake=str(tmp_path / "lake"), progress=False)["repos_crawled"] == 0


@pytest.mark.slow
def test_an_outage_mid_crawl_costs_nothing_after_one_rerun(tmp_path, flows):
    root = tmp_path / "hub"
    for i in range(6):
        add_repo(root, f"org/m{i}", seed=i)
    expected = sum(3 for _ in range(6))
    lake_dir = str(tmp_path / "lake")
    outage = FaultSpec(outage_after=4, outage_s=8.0)  # down from the 4th request (after the listing) for 8 s
    with running(root, faults=outage) as server:
        first = crawl_flow(hub=server.url, lake=lake_dir, batch_size=2, progress=False)
        assert server.faults.injected["outage"] > 0
        assert first["status"] in ("partial", "failed") and first["repos_failed"] > 0
        messages = [r["message"] for r in Lake(lake_dir).query("SELECT message FROM crawl_errors").to_pylist()]
        assert messages and all("the next run crawls it again" in m for m in messages)
        time.sleep(max(0.0, 8.5 - (time.monotonic() - started_at(server))))
        second = crawl_flow(hub=server.url, lake=lake_dir, progress=False)
    assert second["status"] == "completed" and second["repos_crawled"] == first["repos_failed"]
    lake = Lake(lake_dir)
    assert lake.query("SELECT count(*) AS n FROM tensors").to_pylist()[0]["n"] == expected
    revisions = {r["repo_id"]: r["revision"] for r in lake.query("SELECT repo_id, revision FROM repos").to_pylist()}
    local = LocalHub(root)
    assert revisions == {i: local.revision(i) for i in local.repo_ids()}
    assert runs(lake_dir, "crawl")[-1] == "completed"


def started_at(server) -> float:
    """When the outage began (the injector's clock), so the test waits only what is left of it."""
    return server.faults._outage_until - server.faults.spec.outage_s


def test_stats_against_a_dead_hub_ends_failed_with_a_nonzero_exit(tmp_path, flows):
    root = tmp_path / "hub"
    for i in range(2):
        add_repo(root, f"org/m{i}", seed=i)
    lake_dir = str(tmp_path / "lake")
    with running(root) as server:
        crawl_flow(hub=server.url, lake=lake_dir, progress=False)
    # The server is gone: every read is refused, retried, and fails.
    result = CliRunner().invoke(main, ["stats", "--lake", lake_dir])
    assert result.exit_code in (EXIT_FAILED, EXIT_PARTIAL), result.output
    assert runs(lake_dir, "stats")[-1] in ("failed", "partial")
    errors = Lake(lake_dir).query("SELECT error_class FROM crawl_errors WHERE stage = 'stats'").to_pylist()
    assert errors and {e["error_class"] for e in errors} == {"HubUnavailableError"}


def test_a_flow_that_raises_ends_failed_with_its_error(poisoned_hub, tmp_path, flows, monkeypatch):
    lake_dir = str(tmp_path / "lake")
    crawl_flow(hub=str(poisoned_hub), lake=lake_dir, progress=False)

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the trees stage")

    monkeypatch.setattr(trees_module, "load_models", broken)
    with pytest.raises(RuntimeError):
        trees_flow(lake=lake_dir)
    assert runs(lake_dir, "trees") == ["running", "failed"]
    error = Lake(lake_dir).query("SELECT stage, error_class, message FROM crawl_errors WHERE stage = 'trees'").to_pylist()
    assert error == [{"stage": "trees", "error_class": "RuntimeError", "message": "RuntimeError: a bug in the trees stage"}]
