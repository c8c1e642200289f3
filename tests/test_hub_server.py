"""The Hub-compatible server, checked through huggingface_hub itself and raw HTTP."""
from __future__ import annotations

import hashlib
import json

import httpx2
import pytest
from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_download, hf_hub_url
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import parse_ratelimit_headers
from hubserver_fixture import GATED_REPO, LLAMA2_RECORDS, hub_server, no_hf_token, tiny_hub  # noqa: F401 (fixtures)

from hubtree.errors import EntryNotFoundError, FileUnreadableError
from hubtree.hub_server import COUNTERS_PATH, FaultSpec, RateLimits
from hubtree.ops.hub.source import RepoQuery
from hubtree.ops.hub.local import LocalHub

pytestmark = pytest.mark.usefixtures("no_hf_token")


def get(url: str, **headers: str) -> httpx2.Response:
    return httpx2.get(url, headers=headers, timeout=5)


def test_listing_pages_are_linked_and_huggingface_hub_follows_them(tiny_hub, hub_server):
    server = hub_server(tiny_hub, page_size=4)
    first = get(f"{server.url}/api/models")
    assert len(first.json()) == 4
    assert first.links["next"]["url"].startswith(f"{server.url}/api/models?")
    assert "link" not in get(first.links["next"]["url"]).headers
    listed = [m.id for m in HfApi(endpoint=server.url).list_models()]
    assert listed == LocalHub(tiny_hub).repo_ids()


@pytest.mark.parametrize(
    "query",
    [
        RepoQuery(author="org"),
        RepoQuery(search="FINE"),
        RepoQuery(filter=("base_model:org/base",)),
        RepoQuery(filter=("llama", "license:mit")),
        RepoQuery(sort="createdAt"),
        RepoQuery(sort="createdAt", limit=4),
    ],
)
def test_list_models_filters_like_local_hub(tiny_hub, hub_server, query):
    server = hub_server(tiny_hub, page_size=3)
    listed = HfApi(endpoint=server.url).list_models(
        author=query.author, search=query.search, filter=list(query.filter) or None, sort=query.sort, limit=query.limit
    )
    assert [m.id for m in listed] == [ref.repo_id for ref in LocalHub(tiny_hub).list_repos(query)]


def test_listing_fields_follow_expand_full_and_card_data(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    api = HfApi(endpoint=server.url)
    plain = next(iter(api.list_models(author="org")))
    assert plain.sha is None and plain.tags and plain.created_at
    expanded = next(iter(api.list_models(author="org", expand=["sha"])))
    assert expanded.sha == LocalHub(tiny_hub).revision("org/base") and expanded.tags is None
    full = next(iter(api.list_models(author="org", full=True, cardData=True)))
    assert full.sha and [s.rfilename for s in full.siblings] == ["README.md", "config.json", "model.safetensors"]
    assert full.card_data.license == "mit"


def test_model_info_is_what_huggingface_hub_parses(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    local = LocalHub(tiny_hub)
    info = HfApi(endpoint=server.url).model_info("org/finetune", files_metadata=True)
    assert info.sha == local.revision("org/finetune") and info.author == "org"
    assert "base_model:finetune:org/base" in info.tags and info.card_data.base_model == "org/base"
    assert info.config == {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    siblings = {s.rfilename: s for s in info.siblings}
    weights = tiny_hub / "org/finetune/model.safetensors"
    assert siblings["model.safetensors"].size == weights.stat().st_size
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert siblings["config.json"].lfs is None and siblings["tokenizer/vocab.txt"].size == 4
    at_sha = HfApi(endpoint=server.url).model_info("org/finetune", revision=info.sha)
    assert at_sha.sha == info.sha and at_sha.siblings[0].size is None  # sizes only with blobs


def test_tree_lists_folders_and_files(tiny_hub, hub_server):
    server = hub_server(tiny_hub, page_size=2)
    api = HfApi(endpoint=server.url)
    top = {e.path: type(e).__name__ for e in api.list_repo_tree("org/finetune")}
    assert top == {"tokenizer": "RepoFolder", "README.md": "RepoFile", "config.json": "RepoFile", "model.safetensors": "RepoFile"}
    deep = {e.path for e in api.list_repo_tree("org/finetune", recursive=True)}
    assert deep == set(top) | {"tokenizer/vocab.txt"}
    assert [e.path for e in api.list_repo_tree("org/finetune", path_in_repo="tokenizer")] == ["tokenizer/vocab.txt"]
    blob = hashlib.sha1(b"blob 4\0a\nb\n").hexdigest()  # what git would name it
    assert next(iter(api.list_repo_tree("org/finetune", path_in_repo="tokenizer"))).blob_id == blob


def test_resolve_redirects_lfs_files_to_the_cdn_with_hub_headers_and_exact_ranges(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    path = tiny_hub / "org/base/model.safetensors"
    data, size = path.read_bytes(), path.stat().st_size
    sha = LocalHub(tiny_hub).revision("org/base")
    url = f"{server.url}/org/base/resolve/main/model.safetensors"
    for head in (httpx2.head(url), httpx2.get(url, headers={"Range": "bytes=0-7"})):
        assert head.status_code == 302 and head.headers["x-repo-commit"] == sha
        assert head.headers["x-linked-size"] == str(size)
        assert head.headers["x-linked-etag"] == head.headers["etag"] == f'"{hashlib.sha256(data).hexdigest()}"'
        assert head.headers["location"].startswith(f"{server.cdn_url}/repos/") and server.cdn_url != server.url
    cdn = httpx2.head(url, follow_redirects=True)
    assert cdn.status_code == 200 and cdn.headers["content-length"] == str(size) and cdn.headers["accept-ranges"] == "bytes"
    assert "ratelimit" not in cdn.headers  # the CDN is outside every bucket
    part = httpx2.get(url, headers={"Range": "bytes=8-99"}, follow_redirects=True)
    assert part.status_code == 206 and part.content == data[8:100]
    assert part.headers["content-range"] == f"bytes 8-99/{size}"
    tail = httpx2.get(f"{server.url}/org/base/resolve/{sha}/model.safetensors", headers={"Range": f"bytes={size - 3}-{size + 100}"}, follow_redirects=True)
    assert tail.status_code == 206 and tail.content == data[-3:]  # an end past the file is clamped
    past = httpx2.get(url, headers={"Range": f"bytes={size}-{size + 10}"}, follow_redirects=True)
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
    assert httpx2.get(url, follow_redirects=True).content == data
    config = httpx2.get(f"{server.url}/org/base/resolve/main/config.json")  # not LFS: served by the hub itself
    assert config.status_code == 200 and config.content == (tiny_hub / "org/base/config.json").read_bytes()


def test_huggingface_hub_reads_file_metadata_and_safetensors_headers_through_the_redirect(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    data = (tiny_hub / "org/base/model.safetensors").read_bytes()
    meta = get_hf_file_metadata(hf_hub_url("org/base", "model.safetensors", endpoint=server.url))
    assert (meta.commit_hash, meta.etag, meta.size) == (LocalHub(tiny_hub).revision("org/base"), hashlib.sha256(data).hexdigest(), len(data))
    assert meta.location.startswith(server.cdn_url)
    before = server.counters.snapshot()
    header = HfApi(endpoint=server.url).get_safetensors_metadata("org/base")
    assert set(header.files_metadata["model.safetensors"].tensors) == {"embed.weight", "layers.0.weight", "layers.0.bias", "positions", "empty", "scale"}
    assert server.counters["cdn"] - before.get("cdn", 0) == 1  # one ranged GET of the first 100 KB, redirected to the CDN
    gets = [rng for method, path, rng in server.faults.requests if method == "GET" and "/resolve/" in path]
    assert gets == ["bytes=0-100000"]


def test_signed_urls_expire_and_refuse_bad_signatures(tiny_hub, hub_server):
    now = [1_800_000_000.0]
    server = hub_server(tiny_hub, url_ttl_s=60, clock=lambda: now[0])
    location = httpx2.head(f"{server.url}/org/base/resolve/main/model.safetensors").headers["location"]
    assert httpx2.get(location, headers={"Range": "bytes=0-7"}).status_code == 206
    assert httpx2.get(location.replace("Signature=", "Signature=0"), headers={"Range": "bytes=0-7"}).status_code == 403
    expires = int(dict(p.split("=", 1) for p in location.split("?", 1)[1].split("&"))["Expires"])
    assert expires == now[0] + 60
    now[0] += 61
    assert httpx2.get(location, headers={"Range": "bytes=0-7"}).status_code == 403
    assert server.counters["cdn_refused"] == 2 and server.counters["cdn"] == 3


def test_rate_limit_buckets_have_fixed_windows_headers_and_429(tiny_hub, hub_server):
    now = [3000.0]  # a window boundary: windows of 10 s start at multiples of 10
    server = hub_server(tiny_hub, limits=RateLimits(api=2, resolvers=3, window_s=10), clock=lambda: now[0])
    seen = [parse_ratelimit_headers(get(f"{server.url}/api/models/org/base").headers) for _ in range(3)]
    assert [(i.resource_type, i.remaining, i.reset_in_seconds, i.limit, i.window_seconds) for i in seen] == [
        ("api", 1, 10, 2, 10), ("api", 0, 10, 2, 10), ("api", 0, 10, 2, 10)
    ]
    limited = get(f"{server.url}/api/models")
    assert limited.status_code == 429 and limited.headers["retry-after"] == "10"
    resolve = httpx2.head(f"{server.url}/org/base/resolve/main/model.safetensors")
    assert parse_ratelimit_headers(resolve.headers).resource_type == "resolvers"  # its own bucket
    now[0] += 7
    assert parse_ratelimit_headers(get(f"{server.url}/api/models").headers).reset_in_seconds == 3
    now[0] += 3
    fresh = get(f"{server.url}/api/models")
    assert fresh.status_code == 200 and parse_ratelimit_headers(fresh.headers).remaining == 1
    counts = get(f"{server.url}{COUNTERS_PATH}").json()
    assert counts == server.counters.snapshot()
    assert (counts["api"], counts["rate_limited_api"], counts["resolvers"]) == (6, 3, 1)


def test_listing_limit_is_the_page_size_and_expand_selects_fields(tiny_hub, hub_server):
    server = hub_server(tiny_hub)
    first = get(f"{server.url}/api/models?limit=4&expand=sha&expand=siblings&expand=cardData&expand=config")
    assert len(first.json()) == 4 and "limit=4" in first.links["next"]["url"]
    entry = first.json()[0]
    assert set(entry) == {"_id", "id", "sha", "siblings", "cardData", "config"}
    assert entry["siblings"] == [{"rfilename": name} for name in ("README.md", "config.json", "model.safetensors")]
    assert len(get(f"{server.url}/api/models?limit=5000").json()) == 6  # capped at the server's page size
    listed = HfApi(endpoint=server.url).list_models(limit=5, expand=["sha", "createdAt", "lastModified", "tags"])
    assert [(m.id, m.sha) for m in listed] == [(r.repo_id, r.revision) for r in LocalHub(tiny_hub).list_repos()][:5]


def test_hf_hub_download_works_against_the_server(tiny_hub, hub_server, tmp_path):
    server = hub_server(tiny_hub)
    local = hf_hub_download("org/base", "config.json", endpoint=server.url, cache_dir=tmp_path / "cache")
    assert open(local, "rb").read() == (tiny_hub / "org/base/config.json").read_bytes()


def test_errors_raise_huggingface_hub_precise_classes(tiny_hub, hub_server, tmp_path):
    server = hub_server(tiny_hub)
    api = HfApi(endpoint=server.url)
    with pytest.raises(hf_errors.RepositoryNotFoundError) as missing:
        api.model_info("org/nope")
    assert not isinstance(missing.value, hf_errors.GatedRepoError)
    with pytest.raises(hf_errors.RevisionNotFoundError):
        api.model_info("org/base", revision="0" * 40)
    with pytest.raises(hf_errors.RemoteEntryNotFoundError):
        hf_hub_download("org/base", "nope.bin", endpoint=server.url, cache_dir=tmp_path)
    response = httpx2.head(f"{server.url}/org/nope/resolve/main/model.safetensors")
    assert response.status_code == 404 and response.headers["x-error-code"] == "RepoNotFound"


def test_gated_repo_hides_files_but_not_metadata_without_the_servers_token(tiny_hub, hub_server, tmp_path):
    server = hub_server(tiny_hub, token="hf_any")
    assert HfApi(endpoint=server.url).model_info(GATED_REPO).gated == "manual"
    with pytest.raises(hf_errors.GatedRepoError):
        hf_hub_download(GATED_REPO, "config.json", endpoint=server.url, cache_dir=tmp_path / "anonymous")
    with pytest.raises(hf_errors.GatedRepoError):
        hf_hub_download(GATED_REPO, "config.json", endpoint=server.url, cache_dir=tmp_path / "other", token="hf_other")
    file = hf_hub_download(GATED_REPO, "config.json", endpoint=server.url, cache_dir=tmp_path / "user", token="hf_any")
    assert open(file, "rb").read() == (tiny_hub / GATED_REPO / "config.json").read_bytes()


def test_records_serve_metadata_only_repos(hub_server, tmp_path):
    server = hub_server(records=[LLAMA2_RECORDS], page_size=5)
    api = HfApi(endpoint=server.url)
    lines = {json.loads(line)["model_id"]: json.loads(line)["model_info"] for line in LLAMA2_RECORDS.read_text().splitlines()}
    info = api.model_info("epfl-llm/meditron-7b")
    assert info.sha == lines["epfl-llm/meditron-7b"]["sha"] and info.gated == "auto"
    assert info.card_data.base_model == "meta-llama/Llama-2-7b"
    assert info.created_at.isoformat() == "2023-11-08T16:03:23+00:00"
    children = {m.id for m in api.list_models(filter="base_model:meta-llama/Llama-2-7b")}
    assert children == {i for i, m in lines.items() if "base_model:meta-llama/Llama-2-7b" in m["tags"]}
    readme = get(f"{server.url}/malhajar/meditron-7b-chat/resolve/main/README.md").text
    assert readme.startswith("---\n") and "base_model: epfl-llm/meditron-7b" in readme
    with pytest.raises(hf_errors.RemoteEntryNotFoundError):
        hf_hub_download("malhajar/meditron-7b-chat", "config.json", endpoint=server.url, cache_dir=tmp_path)
    assert len(list(api.list_models())) == len(lines)


def test_faults_are_injected_deterministically_and_counted(tiny_hub, hub_server):
    spec = FaultSpec(rate_limit_every=4, server_error_every=5, stall_every=7, truncate_every=3, seed=1, stall_s=0.3)
    runs = []
    for _ in range(2):
        server = hub_server(tiny_hub, faults=spec)
        outcomes = []
        for _ in range(14):
            try:
                response = get(f"{server.url}/api/models/org/base")
                outcomes.append(response.status_code)
                if response.status_code == 429:
                    info = parse_ratelimit_headers(response.headers)
                    assert (info.resource_type, info.remaining, info.reset_in_seconds) == ("api", 0, 1)
                    assert response.headers["retry-after"] == "1"
            except httpx2.RemoteProtocolError:
                outcomes.append("truncated")
            except httpx2.ReadTimeout:
                pytest.fail("stalls are shorter than the 5 s timeout here")
        runs.append((outcomes, dict(server.faults.injected)))
    assert runs[0] == runs[1]
    outcomes, injected = runs[0]
    assert injected == {
        "rate_limit": outcomes.count(429),
        "server_error": outcomes.count(500),
        "truncate": outcomes.count("truncated"),
        "stall": injected["stall"],
    }
    assert all(injected[kind] > 0 for kind in ("rate_limit", "server_error", "truncate", "stall"))


def test_a_stall_outlasts_a_short_client_timeout(tiny_hub, hub_server):
    server = hub_server(tiny_hub, faults=FaultSpec(stall_every=1, stall_s=1.0))
    with pytest.raises(httpx2.ReadTimeout):
        httpx2.get(f"{server.url}/api/models", timeout=0.2)
    assert server.faults.injected["stall"] == 1


@pytest.mark.timeout(60)
def test_the_mirror_serves_only_its_own_regular_files(tiny_hub, hub_server, tmp_path):
    """Links out of the root, to a directory or to a device, and dot-directories: refused, never read, no hang."""
    secret = tmp_path / "outside.txt"
    secret.write_text("not the hub's")
    repo = tiny_hub / "org" / "base"
    (repo / "escape.txt").symlink_to(secret)
    (repo / "folder-link").symlink_to(tmp_path)
    (repo / "zeros.bin").symlink_to("/dev/zero")
    (repo / ".git").mkdir()
    (repo / ".git" / "config").write_text("[core]")
    local = LocalHub(tiny_hub)
    ref = next(r for r in local.list_repos() if r.repo_id == "org/base")  # would hash /dev/zero forever
    listed = {f.path for f in local.repo_record(ref).files}
    assert {"escape.txt", "folder-link", "zeros.bin"} <= listed and ".git/config" not in listed
    for path in ("escape.txt", "folder-link", "zeros.bin"):
        with pytest.raises(FileUnreadableError):
            local.open_file(ref, path)
    with pytest.raises(EntryNotFoundError):
        local.open_file(ref, ".git/config")

    server = hub_server(tiny_hub)
    for path in ("escape.txt", "folder-link", "zeros.bin", ".git/config", ".gated", "../../gated/secret/model.safetensors"):
        response = get(f"{server.url}/org/base/resolve/main/{path}")
        assert response.status_code in (403, 404), path
        assert b"not the hub's" not in response.content
    assert httpx2.get(f"{server.url}/org/base/resolve/main/model.safetensors", follow_redirects=True, timeout=5).status_code == 200  # via its CDN
