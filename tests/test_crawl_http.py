"""Crawling through the Hub-compatible server: same tables as the folder, faults survived, families found."""
import shutil

import pytest

from hubtree.hub_server import FaultSpec, RateLimits, running
from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.stats import stats_flow
from tests.hubs import add_repo
from tests.hubserver_fixture import GATED_REPO, LLAMA2_RECORDS, make_tiny_hub

SAME = {
    # A listing gives no file sizes: an HTTP crawl learns those of the files it reads (weights), so totals stay unknown.
    "repos": "repo_id, revision, author, tags, n_files, weights_bytes, n_tensors, n_params, card_metadata, config",
    "declared_edges": "repo_id, revision, parent_repo_id, relation, source",
    "tensors": "repo_id, revision, file, name, dtype, shape, numel, data_begin, data_end",
    "files": "repo_id, revision, path, kind, CASE WHEN kind = 'weights' THEN size END AS weights_size",
}


def table(lake_dir, name: str, where: str = "") -> list:
    return sorted(map(str, Lake(str(lake_dir)).query(f"SELECT {SAME[name]} FROM {name} {where}").to_pylist()))


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    root = make_tiny_hub(tmp_path_factory.mktemp("tiny") / "hub")
    for i in range(6):
        add_repo(root, f"more/m{i}", card=f"base_model: more/m{i - 1}\n" if i else "license: mit\n", seed=i)
    return root


def test_http_crawl_gives_the_same_tables_as_the_folder(hub_dir, tmp_path, flows):
    crawl_flow(hub=str(hub_dir), lake=str(tmp_path / "local"), progress=False)
    with running(hub_dir, page_size=4) as server:
        summary = crawl_flow(hub=server.url, lake=str(tmp_path / "http"), progress=False)
    assert summary["repos_crawled"] == 12
    # Listing pages of 4 describe every repo: no model_info; one resolve per weights file (and the adapter's config).
    assert (summary["api_calls"], summary["resolves"]) == (3, 12 + 1) == (server.counters["api"], server.counters["resolvers"])
    assert summary["cdn_requests"] == 11 == server.counters["cdn"]  # the gated repo's resolve answered 401
    not_gated = f"WHERE repo_id != '{GATED_REPO}'"  # gated files are unreadable over HTTP without a token
    for name in SAME:
        assert table(tmp_path / "http", name, not_gated) == table(tmp_path / "local", name, not_gated), name
    errors = Lake(str(tmp_path / "http")).query("SELECT repo_id, error_class FROM crawl_errors").to_pylist()
    assert errors and {e["repo_id"] for e in errors} == {GATED_REPO}
    assert {e["error_class"] for e in errors} == {"GatedRepoError"}
    # Card metadata and config come with the listing: such repos cost only their header read, the first
    # 100 KB of each weights file (the whole of these tiny ones).
    header_only = Lake(str(tmp_path / "http")).query(
        "SELECT repo_id, bytes_fetched, weights_bytes FROM repos "
        f"WHERE card_metadata IS NOT NULL AND config IS NOT NULL AND repo_id != '{GATED_REPO}' "
        "AND repo_id NOT IN (SELECT repo_id FROM files WHERE kind = 'adapter_config')"
    ).to_pylist()
    assert len(header_only) >= 6 and [r for r in header_only if r["bytes_fetched"] != min(r["weights_bytes"], 100_000)] == []
    sha256 = Lake(str(tmp_path / "http")).query(f"SELECT sha256 FROM files WHERE kind = 'weights' AND repo_id != '{GATED_REPO}'").column(0).to_pylist()
    assert len(sha256) == 11 and all(len(h) == 64 for h in sha256)  # from each file's resolve (X-Linked-Etag)


def test_recrawling_an_unchanged_hub_costs_only_listing_calls(hub_dir, tmp_path, flows):
    with running(hub_dir) as server:
        first = crawl_flow(hub=server.url, lake=str(tmp_path / "lake"), progress=False)
        before = server.counters.snapshot()
        again = crawl_flow(hub=server.url, lake=str(tmp_path / "lake"), progress=False)
        after = server.counters.snapshot()
    assert first["api_calls"] == 1 and first["api_calls"] / first["repos_listed"] <= 0.05 * 2  # one page for 12 repos
    assert (again["repos_skipped"], again["repos_crawled"]) == (12, 0)
    assert (again["api_calls"], again["resolves"], again["cdn_requests"]) == (1, 0, 0)
    assert {k: after.get(k, 0) - before.get(k, 0) for k in after} == {"api": 1, "resolvers": 0, "cdn": 0, "cdn_bytes": 0}


def test_a_duplicate_recognised_by_etag_is_not_read(tmp_path, flows):
    root = tmp_path / "hub"
    add_repo(root, "orig/model", seed=7)
    with running(root) as server:
        crawl_flow(hub=server.url, lake=str(tmp_path / "lake"), progress=False)
        copy = add_repo(root, "copy/model", card="license: apache-2.0\n", seed=99)
        shutil.copy(root / "orig/model/model.safetensors", copy / "model.safetensors")  # the same bytes, re-uploaded
        before = server.counters.snapshot()
        summary = crawl_flow(hub=server.url, lake=str(tmp_path / "lake"), progress=False)
        after = server.counters.snapshot()
    assert summary["repos_crawled"] == 1 and (summary["resolves"], summary["cdn_requests"], summary["bytes_fetched"]) == (1, 0, 0)
    assert after["cdn"] == before["cdn"] and after["cdn_bytes"] == before["cdn_bytes"]  # not one byte of it read
    lake = Lake(str(tmp_path / "lake"))
    orig_rev = lake.query("SELECT revision FROM repos WHERE repo_id = 'orig/model'").column(0)[0].as_py()
    files = lake.query("SELECT repo_id, sha256, duplicate_of, size FROM files WHERE path = 'model.safetensors' ORDER BY repo_id").to_pylist()
    assert files[0]["duplicate_of"] == f"orig/model@{orig_rev}:model.safetensors" and files[1]["duplicate_of"] is None
    assert files[0]["sha256"] == files[1]["sha256"] and files[0]["size"] == files[1]["size"] > 0
    tensors = "SELECT name, dtype, shape, data_begin, data_end FROM tensors WHERE repo_id = ? ORDER BY name"
    assert lake.query(tensors, ["copy/model"]).to_pylist() == lake.query(tensors, ["orig/model"]).to_pylist()


def test_copies_within_one_run_are_recognised_and_stats_reads_one_of_them(tmp_path, flows):
    root = tmp_path / "hub"
    add_repo(root, "a/orig", seed=7)
    for name in ("b/copy", "c/copy"):
        copy = add_repo(root, name, card="license: apache-2.0\n", seed=99)
        shutil.copy(root / "a/orig/model.safetensors", copy / "model.safetensors")
    lake_dir = str(tmp_path / "lake")
    with running(root) as server:
        crawl_flow(hub=server.url, lake=lake_dir, progress=False, batch_size=2)  # the copies fall in two batches
        server.faults.requests.clear()
        server.cdn.requests.clear()
        stats = stats_flow(lake=lake_dir, full=True, progress=False)
        read = {path.split("/resolve/")[0].strip("/") for _, path, _ in server.faults.requests if "/resolve/" in path}
    lake = Lake(lake_dir)
    files = lake.query("SELECT f.repo_id, f.revision, f.duplicate_of FROM files f WHERE path = 'model.safetensors'").to_pylist()
    originals = [f for f in files if f["duplicate_of"] is None]
    assert len(originals) == 1  # whichever the listing gave first
    first = originals[0]
    assert sorted(f["duplicate_of"] for f in files if f is not first) == [f"{first['repo_id']}@{first['revision']}:model.safetensors"] * 2
    assert read == {first["repo_id"]} and stats["copied_files"] == 2


def test_workers_share_the_hubs_budget_and_meet_no_429(hub_dir, tmp_path, flows):
    limits = RateLimits(api=50, resolvers=5, window_s=2)  # 13 resolves: three windows, two workers
    with running(hub_dir, limits=limits) as server:
        summary = crawl_flow(hub=server.url, lake=str(tmp_path / "lake"), progress=False)
        counts = server.counters.snapshot()
    assert summary["repos_crawled"] == 12 and counts["resolvers"] == 13
    assert "rate_limited_resolvers" not in counts and "rate_limited_api" not in counts


def test_faults_cost_retries_not_repos(hub_dir, tmp_path, flows, monkeypatch):
    crawl_flow(hub=str(hub_dir), lake=str(tmp_path / "local"), progress=False)
    # A listing crawl sends few hub requests (pages, one resolve per weights file; ranges go to the CDN),
    # and only listing pages and small files have bodies to cut: pages of 2 and frequent faults, so every kind fires.
    faults = FaultSpec(rate_limit_every=7, server_error_every=5, stall_every=9, truncate_every=2, stall_s=4.0, seed=3)
    with running(hub_dir, faults=faults, page_size=2) as server:
        summary = crawl_flow(hub=server.url, lake=str(tmp_path / "http"), progress=False)
        injected = dict(server.faults.injected)
    assert summary["status"] == "completed"
    assert all(injected.get(kind, 0) > 0 for kind in ("rate_limit", "server_error", "stall", "truncate")), injected
    repos = Lake(str(tmp_path / "http")).query("SELECT repo_id FROM repos_all").column(0).to_pylist()
    assert sorted(repos) == sorted(set(repos)) and len(repos) == 12  # every repo, none twice
    not_gated = f"WHERE repo_id != '{GATED_REPO}'"
    assert table(tmp_path / "http", "tensors", not_gated) == table(tmp_path / "local", "tensors", not_gated)
    errors = Lake(str(tmp_path / "http")).query("SELECT DISTINCT repo_id FROM crawl_errors").column(0).to_pylist()
    assert errors == [GATED_REPO]  # only the repo that really failed


def test_family_crawl_finds_llama2_descendants_from_real_records(tmp_path, flows):
    import json

    records = [json.loads(line)["model_info"] for line in LLAMA2_RECORDS.open()]
    children: dict[str, set] = {}
    for r in records:
        for tag in r["tags"]:
            if tag.startswith("base_model:") and tag.count(":") == 1:
                children.setdefault(tag.split(":", 1)[1], set()).add(r["id"])
    expected, frontier = {"meta-llama/Llama-2-7b"}, ["meta-llama/Llama-2-7b"]
    while frontier:
        new = children.get(frontier.pop(), set()) - expected
        expected |= new
        frontier += new
    with running(None, records=[LLAMA2_RECORDS], page_size=20) as server:
        crawl_flow(hub=server.url, lake=str(tmp_path / "lake"), family="meta-llama/Llama-2-7b", progress=False)
    lake = Lake(str(tmp_path / "lake"))
    assert set(lake.query("SELECT repo_id FROM repos").column(0).to_pylist()) == expected
    edges = {(r["repo_id"], r["parent_repo_id"]) for r in lake.query("SELECT * FROM declared_edges WHERE source = 'tag'").to_pylist()}
    assert ("epfl-llm/meditron-7b", "meta-llama/Llama-2-7b") in edges
    assert ("malhajar/meditron-7b-chat", "epfl-llm/meditron-7b") in edges
    # Records carry no weights: each safetensors file is a clear 404, pickles are refused unread.
    classes = set(lake.query("SELECT DISTINCT error_class FROM crawl_errors").column(0).to_pylist())
    assert classes <= {"EntryNotFoundError", "UnsupportedFormatError"} and "EntryNotFoundError" in classes
