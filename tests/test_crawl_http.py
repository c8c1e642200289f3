"""Crawling through the Hub-compatible server: same tables as the folder, faults survived, families found."""
import pytest

from hubtree.hub_server import FaultSpec, running
from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from tests.hubs import add_repo
from tests.hubserver_fixture import GATED_REPO, LLAMA2_RECORDS, make_tiny_hub

SAME = {
    "repos": "repo_id, revision, author, tags, n_files, total_bytes, weights_bytes, n_tensors, n_params, card_metadata, config",
    "declared_edges": "repo_id, revision, parent_repo_id, relation, source",
    "tensors": "repo_id, revision, file, name, dtype, shape, numel, data_begin, data_end",
    "files": "repo_id, revision, path, size, kind",
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
    assert summary["repos_crawled"] == 12 and summary["requests"] > 0
    not_gated = f"WHERE repo_id != '{GATED_REPO}'"  # gated files are unreadable over HTTP without a token
    for name in SAME:
        assert table(tmp_path / "http", name, not_gated) == table(tmp_path / "local", name, not_gated), name
    errors = Lake(str(tmp_path / "http")).query("SELECT repo_id, error_class FROM crawl_errors").to_pylist()
    assert errors and {e["repo_id"] for e in errors} == {GATED_REPO}
    assert {e["error_class"] for e in errors} == {"GatedRepoError"}
    # Card metadata and config come with model_info: such repos cost only their headers' bytes.
    header_only = Lake(str(tmp_path / "http")).query(
        "SELECT r.repo_id, r.bytes_fetched, sum(t.header) AS header FROM repos r JOIN "
        "(SELECT repo_id, min(data_begin) AS header FROM tensors GROUP BY repo_id, file) t USING (repo_id) "
        f"WHERE r.card_metadata IS NOT NULL AND r.config IS NOT NULL AND r.repo_id != '{GATED_REPO}' "
        "AND r.repo_id NOT IN (SELECT repo_id FROM files WHERE kind = 'adapter_config') "
        "GROUP BY r.repo_id, r.bytes_fetched"
    ).to_pylist()
    assert len(header_only) >= 6 and [r for r in header_only if r["bytes_fetched"] != r["header"]] == []


def test_faults_cost_retries_not_repos(hub_dir, tmp_path, flows, monkeypatch):
    crawl_flow(hub=str(hub_dir), lake=str(tmp_path / "local"), progress=False)
    faults = FaultSpec(rate_limit_every=13, server_error_every=11, stall_every=17, truncate_every=7, stall_s=4.0, seed=3)
    with running(hub_dir, faults=faults, page_size=4) as server:
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
