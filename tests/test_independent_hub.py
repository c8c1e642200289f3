"""hubtree against a Hub emulator it did not write (tests/independent_hub.py), as a user points it there with HF_ENDPOINT."""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter

import pytest
import torch
from click.testing import CliRunner

from huggingface_hub import hf_hub_url
from safetensors.torch import save_file

from hubtree.cli import main
from hubtree.ops.hub.http_file import HttpFile
from hubtree.ops.hub.http_hub import HttpHub
from hubtree.ops.hub.retry import RetryPolicy
from hubtree.ops.hub.source import RepoQuery, RepoRef
from hubtree.ops.weights.safetensors_reader import read_header
from hubtree.lake import Lake
from hubtree.pipelines.crawl import crawl_flow
from hubtree.pipelines.stats import stats_flow
from tests.hubs import add_repo, tiny_weights
from tests.hubserver_fixture import GATED_REPO, make_tiny_hub
from tests.independent_hub import HubEmulator, Limits

# What a crawl of the folder and of the emulator must agree on. Not tags (the Hub adds its own: region:us,
# license:..., safetensors), nor n_files (every Hub repo has a .gitattributes), nor revisions (each hub names its own).
SAME = {
    "repos": "repo_id, author, weights_bytes, n_tensors, n_params, card_metadata, config",
    "declared_edges": "repo_id, parent_repo_id, relation",
    "tensors": "repo_id, file, name, dtype, shape, numel, data_begin, data_end",
    "files": "repo_id, path, kind, CASE WHEN kind = 'weights' THEN size END AS weights_size",
}
NOT_GATED = f"WHERE repo_id != '{GATED_REPO}' AND coalesce(path, '') != '.gitattributes'"
STAT_COLUMNS = ("frobenius_norm", "spectral_norm", "stable_rank", "kurtosis", "alpha")


def table(lake_dir, name: str) -> list[str]:
    where = NOT_GATED if name == "files" else f"WHERE repo_id != '{GATED_REPO}'"
    return sorted(map(str, Lake(str(lake_dir)).query(f"SELECT DISTINCT {SAME[name]} FROM {name} {where}").to_pylist()))


def last_run(lake_dir, flow: str) -> dict:
    return Lake(str(lake_dir)).query(
        "SELECT api_calls, resolves, cdn_requests, bytes_fetched, status FROM crawl_runs WHERE flow = ? ORDER BY started_at DESC LIMIT 1", [flow]
    ).to_pylist()[0]


def seen(hub: HubEmulator) -> dict:
    """What the emulator logged, in crawl_runs' terms (429s and every retry included)."""
    return {"api_calls": hub.count("api"), "resolves": hub.count("resolvers"), "cdn_requests": hub.count("cdn"), "bytes_fetched": hub.file_bytes()}


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    """The tiny hub (gated repo, adapter, sub-folder, mixed dtypes) plus a chain of 64-wide models whose rows stats samples."""
    root = make_tiny_hub(tmp_path_factory.mktemp("independent") / "hub")
    for i in range(3):
        add_repo(root, f"wide/m{i}", card=f"base_model: wide/m{i - 1}\n" if i else "license: mit\n", weights=tiny_weights(i, d=64))
    sharded = add_repo(root, "shard/two", weights={"lm_head.weight": torch.ones(4, 4)})  # replaced by two shards and an index
    (sharded / "model.safetensors").unlink()
    shards = {"model-00001-of-00002.safetensors": tiny_weights(5, d=16), "model-00002-of-00002.safetensors": {"lm_head.weight": torch.ones(4, 16)}}
    for name, tensors in shards.items():
        save_file(tensors, str(sharded / name))
    weight_map = {tensor: name for name, tensors in shards.items() for tensor in tensors}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    pipeline = root / "sd" / "pipe"  # diffusers' layout: weights in sub-folders, no config.json at the top
    for part, seed in (("unet", 6), ("text_encoder", 7)):
        (pipeline / part).mkdir(parents=True)
        save_file(tiny_weights(seed), str(pipeline / part / ("diffusion_pytorch_model.safetensors" if part == "unet" else "model.safetensors")))
    (pipeline / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (pipeline / "README.md").write_text("---\nlicense: openrail\nlibrary_name: diffusers\n---\n")
    return root


@pytest.fixture(scope="module")
def folder_lake(hub_dir, tmp_path_factory, flows):
    lake = str(tmp_path_factory.mktemp("folder") / "lake")
    crawl_flow(hub=str(hub_dir), lake=lake, progress=False)
    return lake


@pytest.fixture(scope="module")
def emulator(hub_dir):
    with HubEmulator(hub_dir, page_size=2, gated={GATED_REPO}) as hub:
        yield hub


@pytest.fixture(scope="module")
def http_lake(emulator, tmp_path_factory, flows):
    """``hubtree crawl --lake L`` with HF_ENDPOINT set to the emulator, as a user runs it."""
    lake = str(tmp_path_factory.mktemp("http") / "lake")
    emulator.clear()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_ENDPOINT", emulator.url)
        for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
            env.delenv(name, raising=False)
        result = CliRunner().invoke(main, ["--quiet", "crawl", "--lake", lake], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return lake, seen(emulator)


def test_a_crawl_through_hf_endpoint_gives_the_folders_rows(http_lake, folder_lake, hub_dir):
    lake, _ = http_lake
    for name in SAME:
        assert table(lake, name) == table(folder_lake, name), name
    sha256 = Lake(lake).query(f"SELECT repo_id, path, sha256 FROM files WHERE kind = 'weights' AND repo_id != '{GATED_REPO}'").to_pylist()
    assert len(sha256) == 12 and all(f["sha256"] == hashlib.sha256((hub_dir / f["repo_id"] / f["path"]).read_bytes()).hexdigest() for f in sha256)
    errors = Lake(lake).query("SELECT DISTINCT repo_id, error_class FROM crawl_errors").to_pylist()
    assert errors == [{"repo_id": GATED_REPO, "error_class": "GatedRepoError"}]  # the Hub's 401 GatedRepo
    revisions = Lake(lake).query("SELECT repo_id, revision FROM repos").to_pylist()
    assert len(revisions) == 11 and all(len(r["revision"]) == 40 for r in revisions)  # the commit sha the listing gave


def test_crawl_runs_counts_what_the_hub_saw_and_a_recrawl_costs_the_listing(http_lake, emulator):
    lake, logged = http_lake
    run = last_run(lake, "crawl")
    assert {k: run[k] for k in logged} == logged
    # 11 repos in pages of 2: 6 listing pages and nothing else of the API; one resolve per weights file (13) and
    # the adapter's config; the header of each readable weights file (all but the gated one) in one ranged CDN request.
    assert (logged["api_calls"], logged["resolves"], logged["cdn_requests"]) == (6, 14, 12)
    emulator.clear()
    again = crawl_flow(hub=emulator.url, lake=lake, progress=False)
    assert again["repos_crawled"] == 0 and seen(emulator) == {"api_calls": 6, "resolves": 0, "cdn_requests": 0, "bytes_fetched": 0}


def test_stats_reads_ranges_from_the_cdn_and_matches_the_folder(http_lake, folder_lake, emulator, tmp_path):
    lake, _ = http_lake
    budget = 2048  # bytes of rows per model: a 64-wide f32 matrix is 16 KB, so its rows are sampled
    emulator.clear()
    stats_flow(lake=lake, progress=False, budget_bytes=budget)
    log = list(emulator.log)
    stats_flow(lake=folder_lake, progress=False, budget_bytes=budget)
    cdn = [r for r in log if r.server == "cdn"]
    assert cdn and all(r.range and r.status == 206 for r in cdn), [(r.range, r.status) for r in cdn]
    resolves = Counter(r.path for r in log if r.bucket == "resolvers")
    assert resolves and set(resolves.values()) == {1}, resolves  # one resolve per file, as the README says
    assert {r.bucket for r in log} <= {"resolvers", None}  # stats asks the API nothing
    run = last_run(lake, "stats")
    assert {k: run[k] for k in ("resolves", "cdn_requests", "bytes_fetched")} == {
        "resolves": len(resolves), "cdn_requests": len(cdn), "bytes_fetched": sum(r.file_bytes for r in log)}
    query = f"SELECT repo_id, tensor, row_begin, row_end, {', '.join(STAT_COLUMNS)} FROM layer_stats WHERE repo_id LIKE 'wide/%' ORDER BY ALL"
    over_http, from_folder = Lake(lake).query(query).to_pylist(), Lake(folder_lake).query(query).to_pylist()
    assert len(over_http) == 6 and all(r["row_end"] - r["row_begin"] < 64 for r in over_http)  # sampled, not whole
    assert over_http == from_folder


def test_a_429_window_is_waited_out_and_nothing_is_lost(hub_dir, folder_lake, tmp_path, flows):
    # Another client spends two requests of the same quota before each of ours: the hub's last answer said
    # some were left, yet the next request meets a 429, whose Retry-After hubtree waits out.
    limits = Limits(api=4, resolvers=4, window_s=2, others_per_request=2)
    with HubEmulator(hub_dir, page_size=2, gated={GATED_REPO}, limits=limits) as hub:
        summary = crawl_flow(hub=hub.url, lake=str(tmp_path / "lake"), progress=False)
        logged = seen(hub)
        refused = hub.count("api", 429) + hub.count("resolvers", 429)
    assert summary["status"] == "completed" and refused > 0
    for name in SAME:
        assert table(tmp_path / "lake", name) == table(folder_lake, name), name
    run = last_run(tmp_path / "lake", "crawl")
    assert {k: run[k] for k in logged} == logged  # the refused requests count too


def test_listing_sorts_limits_and_families_as_the_hub_pages_them(emulator):
    hub = HttpHub(emulator.url, policy=RetryPolicy())
    by_downloads = sorted(emulator.repos(), key=lambda r: (emulator.entry(r, ["downloads"])["downloads"], r.sha), reverse=True)
    assert [ref.repo_id for ref in hub.list_repos(RepoQuery(sort="downloads", limit=3))] == [r.repo_id for r in by_downloads[:3]]
    family = {ref.repo_id for ref in hub.list_repos(RepoQuery(family="org/base"))}
    assert family == {"org/base", "org/finetune", "org/finetune-2", "other/adapter", "other/merge"}  # base_model: tags, level by level
    assert {ref.repo_id for ref in hub.list_repos(RepoQuery(author="wide", search="M1"))} == {"wide/m1"}


@pytest.mark.parametrize("style", ["s3", "cloudfront"])
def test_a_revoked_or_expired_cdn_url_is_resolved_again(hub_dir, style):
    with HubEmulator(hub_dir, url_style=style) as hub:
        url = hf_hub_url("wide/m0", "model.safetensors", endpoint=hub.url)
        handle = HttpFile(url, RetryPolicy())
        assert len(handle.read(0, 8) + handle.read(8, 16)) == 16
        assert (hub.count("resolvers"), hub.count("cdn")) == (1, 2)  # later ranges go to the kept URL
        hub.revoke_urls()
        assert len(handle.read(16, 24)) == 8
        assert (hub.count("resolvers"), hub.count("cdn", 403), hub.count("cdn", 206)) == (2, 1, 3)  # one new resolve
        hub.clear()
        # An hour on, the URL's own expiry (X-Amz-Date + X-Amz-Expires, or Expires) says it is spent: resolve before reading.
        later = HttpFile(url, RetryPolicy(), clock=lambda: time.time() + 3600)
        later.read(0, 8), later.read(8, 16)
        assert (hub.count("resolvers"), hub.count("cdn", 403), hub.count("cdn", 206)) == (2, 0, 2)


def test_the_token_goes_to_the_hub_and_never_to_the_cdn(hub_dir, monkeypatch):
    with HubEmulator(hub_dir, gated={GATED_REPO}, token="hf_emulated") as emulator:
        monkeypatch.setenv("HF_ENDPOINT", emulator.url)
        monkeypatch.setenv("HF_TOKEN", "hf_emulated")
        hub = HttpHub(policy=RetryPolicy())
        (ref,) = [ref for ref in hub.list_repos() if ref.repo_id == GATED_REPO]
        header = read_header(hub.open_file(ref, "model.safetensors"), "model.safetensors")
        log = list(emulator.log)
    assert [t.name for t in header.tensors] == ["w"]  # a gated file, read with the token
    assert log and all(r.authorized for r in log if r.server == "hub")
    assert [(r.status, r.authorized) for r in log if r.server == "cdn"] == [(206, False)]


def test_stats_reads_a_repo_renamed_since_the_crawl(tmp_path, flows):
    # The Hub answers a renamed (or transferred) repo's old URLs with a 307 to the new name on the hub itself;
    # the commits stay. A lake crawled before the rename still names the old id.
    root = tmp_path / "hub"
    add_repo(root, "old/name", weights=tiny_weights(3, d=64))
    lake = str(tmp_path / "lake")
    with HubEmulator(root) as hub:
        crawl_flow(hub=hub.url, lake=lake, progress=False)
        (root / "new").mkdir()
        (root / "old" / "name").rename(root / "new" / "name")
        hub.renamed["old/name"] = "new/name"
        hub.clear()
        summary = stats_flow(lake=lake, progress=False, budget_bytes=2048)
        log = list(hub.log)
        hub.clear()
        client = HttpHub(hub.url, policy=RetryPolicy())
        record = client.repo_record(RepoRef("old/name", None))  # the API follows the 307 too, and counts it
        assert (record.repo_id, client.traffic.api) == ("new/name", hub.count("api")) == ("new/name", 2)
    assert summary["status"] == "completed" and summary["failed"] == 0
    assert [r.status for r in log if r.bucket == "resolvers"] == [307, 302]  # followed on the hub, then to the CDN
    assert [r.status for r in log if r.server == "cdn"] and all(r.status == 206 for r in log if r.server == "cdn")
    assert Lake(lake).query("SELECT count(*) FROM layer_stats WHERE repo_id = 'old/name'").column(0)[0].as_py() == 2
    run = last_run(lake, "stats")
    assert (run["resolves"], run["cdn_requests"]) == (2, sum(r.server == "cdn" for r in log))
