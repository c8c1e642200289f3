"""HttpHub and HttpFile against the test server: same answers as LocalHub, exact bytes, faults survived."""
from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import numpy as np
import pytest
from hubserver_fixture import GATED_REPO, LLAMA2_RECORDS, hub_server, no_hf_token, tiny_hub  # noqa: F401 (fixtures)

from hubtree.errors import EntryNotFoundError, GatedRepoError, RepoNotFoundError, RevisionNotFoundError, TruncatedFileError
from hubtree.hub_server import FaultSpec, RateLimits
from hubtree.ops.hub.declared import edges_from_tags
from hubtree.ops.hub.http_file import HttpFile
from hubtree.ops.hub.http_hub import HttpHub
from hubtree.ops.hub.source import RepoQuery, RepoRef
from hubtree.ops.hub.local import LocalHub
from hubtree.ops.hub.retry import RequestBudget, RetryPolicy
from hubtree.ops.weights.safetensors_reader import LocalFile, coalesce, read_header, read_ranges, read_tensor

pytestmark = pytest.mark.usefixtures("no_hf_token")

QUERIES = [
    RepoQuery(),
    RepoQuery(author="other"),
    RepoQuery(search="tune"),
    RepoQuery(filter=("base_model:org/base",)),
    RepoQuery(sort="created_at", limit=4),
    RepoQuery(family="org/base"),
    RepoQuery(family="org/base", author="org"),
    RepoQuery(family="org/finetune", sort="created_at", limit=2),
]


def fast_policy(**kwargs) -> RetryPolicy:
    return RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, timeout=5, seed=0, **kwargs)


@pytest.mark.parametrize("query", QUERIES, ids=repr)
def test_listing_through_the_server_equals_local_hub(tiny_hub, hub_server, query):
    server = hub_server(tiny_hub, page_size=3)
    assert list(HttpHub(server.url, policy=fast_policy()).list_repos(query)) == list(LocalHub(tiny_hub).list_repos(query))


def test_repo_record_over_http_equals_local(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    hub, local = HttpHub(server.url, policy=fast_policy()), LocalHub(tiny_hub)
    for ref in local.list_repos():
        remote, here = hub.repo_record(ref), local.repo_record(ref)
        assert (remote.repo_id, remote.revision, remote.tags) == (here.repo_id, here.revision, here.tags)
        assert (remote.created_at, remote.last_modified, remote.author) == (here.created_at, here.last_modified, here.author)
        assert [(f.path, f.size) for f in remote.files] == [(f.path, f.size) for f in here.files]
        weights = next(f for f in remote.files if f.path == "model.safetensors")
        assert weights.sha256 == hashlib.sha256((tiny_hub / ref.repo_id / "model.safetensors").read_bytes()).hexdigest()
        assert remote.gated == (ref.repo_id == GATED_REPO)


def test_header_and_tensors_over_http_match_local_file_byte_for_byte(tiny_hub, hub_server):
    server = hub_server(tiny_hub, token="hf_test")
    hub = HttpHub(server.url, token="hf_test", policy=fast_policy())
    opened = []
    for ref in LocalHub(tiny_hub).list_repos():
        remote, here = hub.open_file(ref, "model.safetensors"), LocalFile(tiny_hub / ref.repo_id / "model.safetensors")
        opened.append(remote)
        header = read_header(remote, "model.safetensors")
        assert header == read_header(here, "model.safetensors")
        # One resolve (its size and sha256 come with it), then one ranged GET at the CDN of the
        # first min(100 KB, max(4 KB, 1% of the file)): the whole of a tiny file.
        assert remote.bytes_read == min(header.file_size, remote.first_read_bytes)
        assert (remote.traffic.resolve, remote.traffic.cdn) == (1, 1)
        for entry in header.tensors:
            np.testing.assert_array_equal(read_tensor(remote, entry), read_tensor(here, entry))
        assert remote.traffic.resolve == 1  # every later range went to the kept CDN URL
        assert remote.bytes_read == min(header.file_size, remote.first_read_bytes) + sum(e.nbytes for e in header.tensors)
        assert remote.sha256 == hashlib.sha256((tiny_hub / ref.repo_id / "model.safetensors").read_bytes()).hexdigest()
    sent = [(method, rng) for method, path, rng in server.faults.requests if path.startswith("/org/base/resolve/")]
    assert sent == [("HEAD", None)]  # no range ever went to the resolver
    assert server.counters["resolvers"] == len(opened) and server.counters["cdn"] == sum(f.traffic.cdn for f in opened)
    assert hub.bytes_fetched == sum(f.bytes_read for f in opened) == server.counters["cdn_bytes"]
    assert hub.requests == sum(f.requests for f in opened)


def test_a_kept_cdn_url_is_reused_then_renewed_when_it_expires(tiny_hub, hub_server):
    now = [1_800_000_000.0]
    server = hub_server(tiny_hub, url_ttl_s=600, clock=lambda: now[0])
    data = (tiny_hub / "org/base/model.safetensors").read_bytes()
    ref = RepoRef("org/base", LocalHub(tiny_hub).revision("org/base"))
    file = HttpHub(server.url, policy=fast_policy()).open_file(ref, "model.safetensors")
    file._clock = lambda: now[0]  # the client's wall clock, moved by the test
    assert file.read(0, 8) == data[:8] and file.read(8, 16) == data[8:16]
    assert (file.traffic.resolve, file.traffic.cdn) == (1, 2)  # one resolve, the kept URL reused
    now[0] += 601  # both sides agree the URL expired: the client resolves again before sending
    assert file.read(16, 24) == data[16:24]
    assert (file.traffic.resolve, file.traffic.cdn) == (2, 3) and server.counters["cdn_refused"] == 0
    server.cdn.clock = lambda: now[0] + 1200  # the CDN alone thinks it expired: a 403, then a new resolve
    server.app.state.counters  # (the hub keeps signing with its own clock, so the new URL is good)
    assert file.read(24, 32) == data[24:32]
    assert server.counters["cdn_refused"] == 1 and (file.traffic.resolve, file.traffic.cdn) == (3, 5)


def test_adjacent_ranges_are_coalesced_into_one_request(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    data = (tiny_hub / "org/base/model.safetensors").read_bytes()
    file = HttpFile(f"{server.url}/org/base/resolve/main/model.safetensors", fast_policy())
    ranges = [(8, 16), (16, 40), (30, 50), (100, 110)]
    assert [bytes(b) for b in read_ranges(file, ranges)] == [data[a:b] for a, b in ranges]
    assert coalesce(ranges) == [(8, 50), (100, 110)] and file.traffic.cdn == 2 and file.traffic.resolve == 1


def test_range_edge_cases(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    data = (tiny_hub / "org/base/model.safetensors").read_bytes()
    url = f"{server.url}/org/base/resolve/main/model.safetensors"
    file = HttpFile(url, fast_policy())
    assert file.read(0, 1) == data[:1]
    # One ranged GET to the resolver (302, its size with it), one to the CDN: no HEAD.
    assert file.size() == len(data) and (file.traffic.resolve, file.traffic.cdn) == (1, 1)
    assert file.read(len(data) - 5, len(data)) == data[-5:]
    assert file.read(10, 10) == b"" and file.requests == 3  # an empty read sends nothing
    with pytest.raises(TruncatedFileError):
        file.read(len(data) - 2, len(data) + 2)  # past the known size: refused before sending
    assert file.requests == 3
    with pytest.raises(TruncatedFileError, match=f"the file has {len(data)}"):
        HttpFile(url, fast_policy()).read(len(data), len(data) + 4)  # the server answers 416
    with pytest.raises(TruncatedFileError):
        HttpFile(url, fast_policy()).read(len(data) - 2, len(data) + 2)  # the server clamps: fewer bytes than asked
    assert HttpFile(url, fast_policy()).read_prefix(1 << 20) == data
    assert HttpFile(url, fast_policy()).read_prefix(16) == data[:16]


def test_a_server_that_ignores_range_still_gives_exact_bytes(tiny_hub, caplog):
    """A plain file server answers every GET with the whole file (200): each read keeps what it asked, counts what came."""
    data = (tiny_hub / "org/base/model.safetensors").read_bytes()

    class WholeFile(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

        def do_GET(self):
            self.do_HEAD()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), WholeFile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        file = HttpFile(f"http://127.0.0.1:{server.server_port}/org/base/resolve/main/model.safetensors", fast_policy())
        header = read_header(file, "model.safetensors")
        assert header == read_header(LocalFile(tiny_hub / "org/base/model.safetensors"), "model.safetensors")
        entry = header.tensors[-1]
        with caplog.at_level("WARNING"):
            assert file.read(entry.begin, entry.end) == data[entry.begin : entry.end]
        assert "ignores Range" in caplog.text
        assert file.bytes_read == min(len(data), file.first_read_bytes) + entry.end  # the skipped bytes count
    finally:
        server.shutdown()


def test_missing_things_raise_our_errors(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    hub = HttpHub(server.url, policy=fast_policy())
    ref = next(hub.list_repos(RepoQuery(author="org")))
    with pytest.raises(RepoNotFoundError):
        hub.repo_record(RepoRef("org/nope", ref.revision))
    with pytest.raises(RevisionNotFoundError):
        hub.repo_record(RepoRef(ref.repo_id, "0" * 40))
    with pytest.raises(EntryNotFoundError):
        hub.read_text(ref, "nope.json")
    with pytest.raises(EntryNotFoundError):
        hub.open_file(ref, "nope.safetensors").size()
    with pytest.raises(RevisionNotFoundError):
        hub.open_file(RepoRef(ref.repo_id, "0" * 40), "model.safetensors").read(0, 8)
    assert hub.read_text(ref, "README.md").startswith("---\n")


def test_gated_repo_needs_the_servers_token(tiny_hub, hub_server):
    server = hub_server(tiny_hub, token="hf_secret")
    ref = RepoRef(GATED_REPO, LocalHub(tiny_hub).revision(GATED_REPO))
    anonymous = HttpHub(server.url, policy=fast_policy())
    assert anonymous.repo_record(ref).gated
    with pytest.raises(GatedRepoError, match="HF_TOKEN"):
        read_header(anonymous.open_file(ref, "model.safetensors"))
    with pytest.raises(GatedRepoError):
        anonymous.read_text(ref, "README.md")
    with pytest.raises(GatedRepoError):
        read_header(HttpHub(server.url, token="hf_someone_else", policy=fast_policy()).open_file(ref, "model.safetensors"))
    assert read_header(HttpHub(server.url, token="hf_secret", policy=fast_policy()).open_file(ref, "model.safetensors")).tensors


def test_endpoint_and_token_come_from_the_environment(tiny_hub, hub_server, monkeypatch):
    server = hub_server(tiny_hub, token="hf_from_env_0123456789")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_from_env_0123456789")
    hub = HttpHub(policy=fast_policy())
    assert hub.url == server.url
    ref = RepoRef(GATED_REPO, LocalHub(tiny_hub).revision(GATED_REPO))
    assert read_header(hub.open_file(ref, "model.safetensors")).tensors
    assert "hf_from_env" not in repr(hub)


def test_every_read_and_listing_survives_injected_faults(tiny_hub, hub_server):
    faults = FaultSpec(rate_limit_every=5, server_error_every=7, stall_every=13, truncate_every=4, rate_limit_reset_s=0, stall_s=2.0, seed=3)
    server = hub_server(tiny_hub, faults=faults, page_size=2, token="hf_test")
    policy = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, timeout=1.0, seed=0)  # a stall outlasts it, a loaded machine does not
    hub, local = HttpHub(server.url, token="hf_test", policy=policy), LocalHub(tiny_hub)
    for query in QUERIES:
        assert list(hub.list_repos(query)) == list(local.list_repos(query))
    for ref in local.list_repos():
        assert [f.path for f in hub.repo_record(ref).files] == [f.path for f in local.repo_record(ref).files]
        remote, here = hub.open_file(ref, "model.safetensors"), LocalFile(tiny_hub / ref.repo_id / "model.safetensors")
        header = read_header(remote)
        assert header == read_header(here)
        for entry in header.tensors:
            np.testing.assert_array_equal(read_tensor(remote, entry), read_tensor(here, entry))
        assert hub.read_text(ref, "config.json") == local.read_text(ref, "config.json")
    assert {kind: server.faults.injected[kind] > 0 for kind in ("rate_limit", "server_error", "stall", "truncate")} == dict.fromkeys(
        ("rate_limit", "server_error", "stall", "truncate"), True
    )
    assert policy.retries == sum(server.faults.injected.values())


def test_a_rate_limited_crawl_waits_what_the_ratelimit_header_says(tiny_hub, hub_server):
    faults = FaultSpec(rate_limit_every=3, rate_limit_reset_s=30, retry_after=False)
    server = hub_server(tiny_hub, faults=faults, page_size=2)
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    budget = RequestBudget(clock=lambda: now[0], sleep=sleep)
    hub = HttpHub(server.url, policy=RetryPolicy(budget=budget, sleep=sleep, timeout=5, seed=0))
    assert list(hub.list_repos()) == list(LocalHub(tiny_hub).list_repos())
    limited = server.faults.injected["rate_limit"]
    assert limited > 0 and 30 * limited <= budget.waited_s <= 30.5 * limited


def test_budget_throttles_a_crawl_to_the_window(tiny_hub, hub_server):
    server = hub_server(tiny_hub, page_size=2)
    now, sleeps = [0.0], deque()

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    budget = RequestBudget(limits={"api": 2, "resolve": 3}, window=60.0, clock=lambda: now[0], sleep=sleep)
    hub = HttpHub(server.url, policy=RetryPolicy(budget=budget, sleep=sleep, timeout=5))
    refs = list(hub.list_repos())  # 6 repos, pages of 2: 3 API calls
    base = next(ref for ref in refs if ref.repo_id == "org/base")
    read_header(hub.open_file(base, "model.safetensors"))  # 1 resolve; its range goes to the CDN, outside the bucket
    hub.read_text(base, "config.json")  # 2 (served by the hub itself)
    hub.read_text(base, "README.md")  # 3
    hub.read_text(base, "config.json")  # the 4th resolve waits for the window
    assert list(sleeps) == [60.0, 60.0] and budget.waited_s == 120.0
    assert (hub.traffic.api, hub.traffic.resolve, hub.traffic.cdn) == (3, 4, 1)


def paced_hub(server_url: str, now: list[float], **kwargs) -> tuple[HttpHub, RequestBudget]:
    """A client on the same fake clock as the server: its waits move the server's time too."""

    def sleep(seconds: float) -> None:
        now[0] += seconds

    budget = RequestBudget(clock=lambda: now[0], sleep=sleep)
    return HttpHub(server_url, token="hf_test", policy=RetryPolicy(budget=budget, sleep=sleep, timeout=5, seed=0, **kwargs)), budget


def test_pacing_from_the_hubs_headers_meets_no_429(tiny_hub, hub_server):
    now = [1_800_000_000.0]
    server = hub_server(tiny_hub, page_size=2, limits=RateLimits(api=2, resolvers=3, window_s=30), clock=lambda: now[0], token="hf_test")
    hub, budget = paced_hub(server.url, now)  # its own limits are the free tier's: only the headers tell it less
    local = LocalHub(tiny_hub)
    assert list(hub.list_repos()) == list(local.list_repos())  # 3 pages: the third waits for the next window
    for ref in local.list_repos():
        assert read_header(hub.open_file(ref, "model.safetensors")) == read_header(LocalFile(tiny_hub / ref.repo_id / "model.safetensors"))
    counts = server.counters.snapshot()
    assert (counts["api"], counts["resolvers"]) == (3, 6) and "rate_limited_api" not in counts and "rate_limited_resolvers" not in counts
    assert budget.waited_s >= 30 * 2  # at least one window for the third page and one for the 4th resolve


def test_a_429_from_the_served_hub_waits_out_its_reset_and_loses_nothing(tiny_hub, hub_server):
    now = [1_800_000_000.0]
    server = hub_server(tiny_hub, limits=RateLimits(api=100, resolvers=2, window_s=30), clock=lambda: now[0], token="hf_test")
    for _ in range(2):  # another client of the same account spends the window's resolves behind our back
        httpx2.head(f"{server.url}/org/base/resolve/main/config.json")
    hub, budget = paced_hub(server.url, now)
    local = LocalHub(tiny_hub)
    for ref in local.list_repos():
        remote = hub.open_file(ref, "model.safetensors")
        header = read_header(remote)
        assert header == read_header(LocalFile(tiny_hub / ref.repo_id / "model.safetensors"))
        for entry in header.tensors:
            np.testing.assert_array_equal(read_tensor(remote, entry), read_tensor(LocalFile(tiny_hub / ref.repo_id / "model.safetensors"), entry))
    assert server.counters["rate_limited_resolvers"] == 1  # the one the other client caused; the headers paced the rest
    assert hub.policy.retries == 1 and budget.waited_s >= 30


def llama2_descendants() -> set[str]:
    """The closure of ``meta-llama/Llama-2-7b`` over the parents the fixture's tags declare."""
    tags = {line["model_id"]: line["model_info"]["tags"] for line in map(json.loads, LLAMA2_RECORDS.read_text().splitlines())}
    family, frontier = {"meta-llama/Llama-2-7b"}, ["meta-llama/Llama-2-7b"]
    while frontier:
        parent = frontier.pop()
        for child, child_tags in tags.items():
            if child not in family and parent in {e.parent for e in edges_from_tags(child_tags, child)}:
                family.add(child)
                frontier.append(child)
    return family


def test_family_bfs_finds_exactly_the_declared_descendants_of_llama2(hub_server):
    server = hub_server(records=[LLAMA2_RECORDS], page_size=7)
    hub = HttpHub(server.url, policy=fast_policy())
    members = [info.id for info in hub.family("meta-llama/Llama-2-7b")]
    assert len(members) == len(set(members))
    assert set(members) == llama2_descendants()
    assert members[0] == "meta-llama/Llama-2-7b"
    # Breadth first: a parent is always listed before its children.
    assert members.index("epfl-llm/meditron-7b") < members.index("malhajar/meditron-7b-chat")
    assert "base_model:meta-llama/Llama-2-7b" in hub.repo_record(RepoRef("epfl-llm/meditron-7b", "main")).tags
    refs = list(hub.list_repos(RepoQuery(family="meta-llama/Llama-2-7b")))
    assert [r.repo_id for r in refs] == members and all(len(r.revision) == 40 for r in refs)


def test_family_is_safe_on_cycles_and_missing_bases(tmp_path, hub_server):
    for repo_id, parent in (("x/a", "x/b"), ("x/b", "x/a"), ("x/c", "x/gone")):
        (tmp_path / repo_id).mkdir(parents=True)
        (tmp_path / repo_id / "README.md").write_text(f"---\nbase_model: {parent}\n---\n")
    server = hub_server(tmp_path)
    hub = HttpHub(server.url, policy=fast_policy())
    assert [info.id for info in hub.family("x/a")] == ["x/a", "x/b"]
    assert [info.id for info in hub.family("x/gone")] == ["x/c"]


def test_a_signed_urls_expiry_is_read_from_cloudfront_or_s3_parameters():
    from hubtree.ops.hub.http_file import _expires

    assert _expires("https://cdn.example/repos/a/b/c?Expires=1700000000&Signature=x&Key-Pair-Id=k") == 1700000000
    s3 = "https://cas-bridge.example/xet/c?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20261129T040000Z&X-Amz-Expires=3600&X-Amz-Signature=s"
    assert _expires(s3) == datetime(2026, 11, 29, 5, 0, tzinfo=timezone.utc).timestamp()
    assert _expires("https://cdn.example/file?X-Amz-Expires=3600&X-Amz-Date=garbled") is None
    assert _expires("https://cdn.example/file") is None  # kept until the CDN refuses it
