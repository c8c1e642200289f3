"""A second Hugging Face Hub emulator for tests, written from the Hub's public behaviour, not from ``hubtree hub serve``.

hubtree's own server and its client were written together, so an assumption they share
goes unseen when one tests the other. This one follows what huggingface_hub sends and
expects (``hf_api.list_models`` / ``model_info``, ``utils/_pagination.py``,
``utils/_http.py``'s ``hf_raise_for_status`` and ``parse_ratelimit_headers``) and what the
Hub is documented or known to answer, and it differs from hubtree's server wherever the
Hub may:

* ``/api/models`` pages are cut at ``page_size`` (default 2) whatever ``limit`` asks,
  and followed by a ``Link: <...&cursor=...>; rel="next"`` carrying the whole query and an
  opaque cursor; default order is neither by id nor by date. An entry holds ``_id``,
  ``id`` and only the fields ``expand`` (or ``expand[]``) names, or the default set; an
  unknown ``expand`` is a 400, as on the Hub. Listing siblings carry ``rfilename`` only.
* every repo has a ``.gitattributes`` (the Hub adds one), and tags the Hub derives
  (``license:``, ``base_model:`` and ``base_model:<relation>:``, ``safetensors``,
  ``region:us``, the config's ``model_type``).
* ``/{repo}/resolve/{rev}/{path}`` of an LFS file answers 302 to a second server, the
  CDN, at a content-addressed path (by sha256, not by repo or file name) with an S3-style
  signature (``X-Amz-Date``, ``X-Amz-Expires``, ``X-Amz-Signature``; ``url_style="cloudfront"``
  gives ``Expires``/``Signature``/``Key-Pair-Id``) and a ``response-content-disposition``;
  the CDN answers 403 to a missing, altered or expired signature, 400 to a request that
  also sends ``Authorization`` (S3 allows one auth mechanism), and honours ``Range``.
* errors as the Hub sends them: a missing repo is 401 ``RepoNotFound`` to an anonymous
  client, a gated repo's files 401 ``GatedRepo``; ``X-Error-Code`` and ``X-Error-Message``.
* a renamed (or transferred) repo's old API and resolve URLs answer 307 with a relative
  ``Location`` under the new name, on the hub itself; its commits keep their shas.
* ``RateLimit: "<bucket>";r=<left>;t=<reset>`` and ``RateLimit-Policy`` on every API and
  resolver answer (fixed windows), a 429 with ``Retry-After`` once a bucket is spent;
  ``others_per_request`` requests of another client sharing the quota land before each
  of ours, so a 429 can come while the last answer still said some were left.

Everything is logged in ``HubEmulator.log`` (one ``Logged`` per request, 429s included),
so tests can compare what hubtree counted with what the hub saw.

Example::

    with HubEmulator(root, page_size=2) as hub:
        crawl_flow(hub=hub.url, lake=...)
        hub.count("api"), hub.count("resolvers"), hub.count("cdn"), hub.file_bytes()
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import struct
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".zip", ".tar.gz")
LFS_MIN_SIZE = 10 * 1024 * 1024
GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*tfevents* filter=lfs diff=lfs merge=lfs -text\n"
).encode()
# The ``expand`` values huggingface_hub documents for list_models / model_info (ExpandModelProperty_T).
EXPANDABLE = {
    "author", "baseModels", "cardData", "childrenModelCount", "config", "createdAt", "disabled", "downloads",
    "downloadsAllTime", "evalResults", "gated", "gguf", "inference", "inferenceProviderMapping", "lastModified",
    "library_name", "likes", "mask_token", "model-index", "pipeline_tag", "private", "safetensors", "sha",
    "siblings", "spaces", "tags", "transformersInfo", "trendingScore", "widgetData", "usedStorage", "resourceGroup",
}
LIST_DEFAULT = ["likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag", "library_name", "createdAt"]
INFO_DEFAULT = [
    "author", "sha", "lastModified", "createdAt", "private", "disabled", "gated", "downloads", "likes", "library_name",
    "tags", "pipeline_tag", "cardData", "config", "siblings", "spaces", "safetensors", "usedStorage",
]
_SORTS = {"downloads", "likes", "createdAt", "lastModified", "trendingScore", "id"}


@dataclass(frozen=True)
class Logged:
    """One request as the hub (or CDN) saw it."""

    server: str  # "hub" or "cdn"
    bucket: str | None  # "api", "resolvers" or None (CDN, other paths)
    method: str
    path: str
    range: str | None
    status: int
    file_bytes: int  # body bytes of file content sent (0 for JSON, redirects, errors)
    authorized: bool


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    sha256: str
    blob_id: str  # git blob sha1
    lfs: bool


@dataclass
class Repo:
    repo_id: str
    sha: str
    files: dict[str, RepoFile]
    card: dict | None
    config: dict | None
    created: datetime
    modified: datetime
    safetensors: dict | None
    tags: list[str]
    gated: bool


@dataclass
class _Bucket:
    window_start: float = 0.0
    used: int = 0


@dataclass
class Limits:
    """Requests per fixed window per bucket; ``others_per_request`` of another client land before each of ours."""

    api: int = 10_000
    resolvers: int = 10_000
    window_s: float = 300.0
    others_per_request: int = 0


class HubEmulator:
    """The Hub over a folder of repos (``ROOT/<org>/<name>/...``) on 127.0.0.1, with its CDN on a second port.

    Args:
        root: the folder.
        page_size: the most entries per listing or tree page (the real Hub: 1,000).
        limits: rate-limit quotas and window.
        gated: repo ids whose files need ``token`` (their metadata stays public, as on the Hub).
        token: the one token the hub accepts.
        url_ttl_s: how long a signed CDN URL lives.
        url_style: ``"s3"`` (X-Amz-*) or ``"cloudfront"`` (Expires, Signature, Key-Pair-Id).
        cdn_host: the CDN's address, another loopback host than the hub's.
        renamed: old repo id -> new id; the old name's API and resolve URLs answer 307 to the new one's
            (a relative ``Location``), as the Hub does for a renamed or transferred repo.
    """

    def __init__(self, root: Path, page_size: int = 2, limits: Limits | None = None, gated: set[str] = frozenset(),
                 token: str | None = None, url_ttl_s: int = 3600, url_style: str = "s3", cdn_host: str = "127.0.0.2",
                 renamed: dict[str, str] | None = None):
        self.root = Path(root)
        self.page_size = page_size
        self.limits = limits or Limits()
        self.gated = set(gated)
        self.token = token
        self.url_ttl_s = url_ttl_s
        self.url_style = url_style
        self.renamed = dict(renamed or {})
        self.log: list[Logged] = []
        self._secret = hashlib.sha256(str(time.time_ns()).encode()).digest()
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._blobs: dict[str, Path] = {}  # sha256 -> a file holding it (the CDN is content-addressed)
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, "hub"))
        # Another host as well as another port, as cdn-lfs.hf.co is to huggingface.co.
        self._cdn = ThreadingHTTPServer((cdn_host, 0), _handler(self, "cdn"))
        self.url = f"http://127.0.0.1:{self._hub.server_port}"
        self.cdn_url = f"http://{cdn_host}:{self._cdn.server_port}"

    def __enter__(self) -> "HubEmulator":
        for server in (self._hub, self._cdn):
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for server in (self._hub, self._cdn):
            server.shutdown()
            server.server_close()

    # -- what tests read -------------------------------------------------------
    def count(self, bucket: str, status: int | None = None) -> int:
        """Requests seen of a bucket (``api``, ``resolvers``) or of the CDN (``cdn``), of one status if given."""
        with self._lock:
            return sum(1 for r in self.log if (r.bucket or r.server) == bucket and (status is None or r.status == status))

    def file_bytes(self) -> int:
        """File content bytes sent by the hub and the CDN together."""
        with self._lock:
            return sum(r.file_bytes for r in self.log)

    def clear(self) -> None:
        with self._lock:
            self.log.clear()

    # -- the repos ---------------------------------------------------------------
    def repos(self) -> list[Repo]:
        """Every repo of the folder, read afresh (the folder may change between requests)."""
        out = []
        for org in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for repo in sorted(p for p in org.iterdir() if p.is_dir() and not p.name.startswith(".")):
                out.append(self._repo(f"{org.name}/{repo.name}", repo))
        return out

    def repo(self, repo_id: str) -> Repo | None:
        folder = self.root / repo_id
        if repo_id.count("/") != 1 or ".." in repo_id.split("/") or not folder.is_dir():
            return None
        return self._repo(repo_id, folder)

    def _repo(self, repo_id: str, folder: Path) -> Repo:
        files: dict[str, RepoFile] = {".gitattributes": _repo_file(".gitattributes", GITATTRIBUTES)}
        mtimes = []
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder).as_posix()
            if any(part.startswith(".") for part in rel.split("/")) or not path.is_file() or path.is_symlink():
                continue
            data = path.read_bytes()
            files[rel] = _repo_file(rel, data)
            mtimes.append(path.stat().st_mtime)
            if files[rel].lfs:
                with self._lock:
                    self._blobs[files[rel].sha256] = path
        tree = "".join(f"{f.path}\0{f.blob_id}{f.sha256}\n" for f in files.values())
        # A commit names its tree and time, not the repo: renaming a repo keeps its commits, as on the Hub.
        sha = hashlib.sha1(f"commit {min(mtimes, default=0)}\n{tree}".encode()).hexdigest()
        card = _card(folder / "README.md")
        config = _json(folder / "config.json")
        created = datetime.fromtimestamp(min(mtimes, default=0), timezone.utc)
        modified = datetime.fromtimestamp(max(mtimes, default=0), timezone.utc)
        safetensors = _safetensors_params([folder / f.path for f in files.values() if f.path.endswith(".safetensors")])
        tags = _hub_tags(card, config, files)
        return Repo(repo_id, sha, files, card, config, created, modified, safetensors, tags, repo_id in self.gated)

    # -- API ---------------------------------------------------------------------
    def entry(self, repo: Repo, fields: list[str], blobs: bool = False) -> dict:
        """A repo as JSON, with ``_id``, ``id`` and ``fields``."""
        card = repo.card or {}
        value = {
            "author": repo.repo_id.split("/")[0],
            "sha": repo.sha,
            "createdAt": _iso(repo.created),
            "lastModified": _iso(repo.modified),
            "private": False,
            "disabled": False,
            "gated": "auto" if repo.gated else False,
            "downloads": int(repo.sha[:4], 16) % 1000,
            "downloadsAllTime": int(repo.sha[:5], 16),
            "likes": int(repo.sha[4:6], 16) % 50,
            "trendingScore": int(repo.sha[6:8], 16) % 10,
            "library_name": card.get("library_name") or ("peft" if "adapter_config.json" in repo.files else "transformers" if repo.config else None),
            "pipeline_tag": card.get("pipeline_tag"),
            "tags": repo.tags,
            "cardData": repo.card,
            # The Hub reports a few keys of config.json, not the file.
            "config": {k: repo.config[k] for k in ("architectures", "model_type") if k in repo.config} if repo.config else None,
            "siblings": [_sibling(f, blobs) for f in repo.files.values()],
            "spaces": [],
            "safetensors": repo.safetensors,
            "usedStorage": sum(f.size for f in repo.files.values()),
        }
        out = {"_id": repo.sha[:24], "id": repo.repo_id}
        for name in fields:
            if name in value and value[name] is not None:
                out[name] = value[name]
        return out

    def matches(self, repo: Repo, params: dict[str, list[str]]) -> bool:
        author = _first(params, "author")
        search = _first(params, "search")
        if author and repo.repo_id.split("/")[0] != author:
            return False
        if search and search.lower() not in repo.repo_id.lower():
            return False
        return all(tag in repo.tags for tag in params.get("filter", []))

    def sorted_repos(self, repos: list[Repo], sort: str | None) -> list[Repo]:
        """Descending by ``sort``; without one, the order of an internal id (neither by name nor by date)."""
        if not sort:
            return sorted(repos, key=lambda r: r.sha)
        return sorted(repos, key=lambda r: (self.entry(r, [sort]).get(sort, ""), r.sha), reverse=True)

    def spend(self, bucket: str) -> tuple[bool, int, int]:
        """Count one request of ``bucket`` (after another client's): (allowed, left, seconds to reset)."""
        quota = getattr(self.limits, bucket)
        now = time.monotonic()
        with self._lock:
            state = self._buckets.setdefault(bucket, _Bucket(now, 0))
            if now >= state.window_start + self.limits.window_s:
                elapsed = now - state.window_start
                state.window_start += self.limits.window_s * math.floor(elapsed / self.limits.window_s)
                state.used = 0
            state.used = min(quota, state.used + self.limits.others_per_request)
            allowed = state.used < quota
            if allowed:
                state.used += 1
            reset = max(1, math.ceil(state.window_start + self.limits.window_s - now))
            return allowed, quota - state.used, reset

    def sign(self, sha256: str, filename: str) -> str:
        """A CDN URL for a blob, valid ``url_ttl_s`` seconds, signed over its path and every query parameter."""
        path = f"/repos/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        disposition = f"inline; filename*=UTF-8''{quote(filename)}; filename=\"{filename}\";"
        now = int(time.time())
        if self.url_style == "cloudfront":
            query = {"response-content-disposition": disposition, "Expires": str(now + self.url_ttl_s)}
            query["Signature"], query["Key-Pair-Id"] = self._mac(path, query), "K2EMULATOR"
        else:
            date = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            query = {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256", "X-Amz-Content-Sha256": "UNSIGNED-PAYLOAD",
                "X-Amz-Credential": f"EMULATOR/{date[:8]}/us-east-1/s3/aws4_request", "X-Amz-Date": date,
                "X-Amz-Expires": str(self.url_ttl_s), "X-Amz-SignedHeaders": "host",
                "response-content-disposition": disposition, "x-id": "GetObject",
            }
            query["X-Amz-Signature"] = self._mac(path, query)
        return f"{self.cdn_url}{path}?{urlencode(query, quote_via=quote)}"

    def signed_ok(self, path: str, raw_query: str) -> bool:
        """The URL is one we signed, unaltered (as S3, ``+`` is a plus, not a space), and not expired."""
        query = {unquote(k): unquote(v) for k, _, v in (part.partition("=") for part in raw_query.split("&") if part)}
        if "X-Amz-Signature" in query:
            signature = query.pop("X-Amz-Signature")
            try:
                signed = datetime.strptime(query.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
                expires = signed.timestamp() + int(query.get("X-Amz-Expires", ""))
            except ValueError:
                return False
        else:
            signature = query.pop("Signature", "")
            query.pop("Key-Pair-Id", None)
            expires = int(query["Expires"]) if query.get("Expires", "").isdigit() else 0
        return time.time() < expires and hmac.compare_digest(signature, self._mac(path, query))

    def revoke_urls(self) -> None:
        """A new signing key: every URL signed so far is refused (403), as after a key rotation."""
        self._secret = hashlib.sha256(self._secret).digest()

    def blob(self, sha256: str) -> Path | None:
        with self._lock:
            return self._blobs.get(sha256)

    def _mac(self, path: str, query: dict[str, str]) -> str:
        canonical = path + "?" + "&".join(f"{k}={v}" for k, v in sorted(query.items()))
        return hmac.new(self._secret, canonical.encode(), hashlib.sha256).hexdigest()

    def record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)


# -- HTTP ------------------------------------------------------------------------
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Answer(Exception):
    """An error answer: status, Hub error code and message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _handler(hub: HubEmulator, server: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        _status, _sent, _bucket, _rate = 0, 0, None, None  # until _serve sets them (http.server's own errors)

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def _serve(self, head: bool) -> None:
            self._sent = 0
            self._rate: tuple[str, int, int] | None = None
            self._bucket: str | None = None
            self._status = 500
            try:
                if server == "cdn":
                    self._cdn(head)
                else:
                    self._hub(head)
            except _Answer as answer:
                self._error(answer, head)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def end_headers(self) -> None:
            """Log the answer before the client can see any of it, so a test reads the log as the client's count."""
            hub.record(Logged(server, self._bucket, self.command, self.path, self.headers.get("Range"), self._status, self._sent,
                              "Authorization" in self.headers))
            super().end_headers()

        # -- hub ---------------------------------------------------------------
        def _hub(self, head: bool) -> None:
            url = urlsplit(self.path)
            path, params = unquote(url.path), parse_qs(url.query, keep_blank_values=True)
            if path.startswith("/api/"):
                self._bucket = "api"
            elif _RESOLVE.match(url.path):
                self._bucket = "resolvers"
            else:
                raise _Answer(404, None, "Not Found")
            allowed, left, reset = hub.spend(self._bucket)
            self._rate = (self._bucket, left, reset)
            if not allowed:
                raise _Answer(429, None, "You have exceeded our rate limit. Retry later.")
            if moved := self._moved(url.path):
                return self._redirect(307, moved + (f"?{url.query}" if url.query else ""), {}, head)
            if self._bucket == "resolvers":
                match = _RESOLVE.match(url.path)
                return self._resolve(unquote(match["repo"]), unquote(match["rev"]), unquote(match["path"]), head)
            if path == "/api/models":
                return self._list(params)
            if tree := _TREE.match(url.path):
                return self._tree(unquote(tree["repo"]), unquote(tree["rev"]), unquote(tree["path"] or ""), params)
            if info := _INFO.match(url.path):
                return self._info(unquote(info["repo"]), unquote(info["rev"]) if info["rev"] else None, params)
            raise _Answer(404, None, "Sorry, we can't find the page you are looking for.")

        def _list(self, params: dict[str, list[str]]) -> None:
            fields = self._fields(params, LIST_DEFAULT)
            sort = _first(params, "sort")
            if sort and sort not in _SORTS:
                raise _Answer(400, None, f'"sort" must be one of {sorted(_SORTS)}')
            repos = hub.sorted_repos([r for r in hub.repos() if hub.matches(r, params)], sort)
            limit = _first(params, "limit")
            size = min(hub.page_size, int(limit)) if limit and limit.isdigit() and int(limit) > 0 else hub.page_size
            cursor = _first(params, "cursor")
            start = json.loads(base64.urlsafe_b64decode(cursor.encode()))["$skip"] if cursor else 0
            page = repos[start:start + size]
            headers = {}
            if start + size < len(repos):
                query = [(k, v) for k, values in params.items() if k != "cursor" for v in values]
                token = base64.urlsafe_b64encode(json.dumps({"$skip": start + size}).encode()).decode()
                headers["Link"] = f'<{hub.url}/api/models?{urlencode(query + [("cursor", token)])}>; rel="next"'
            self._json([hub.entry(r, fields) for r in page], headers)

        def _fields(self, params: dict[str, list[str]], default: list[str]) -> list[str]:
            expand = params.get("expand", []) + params.get("expand[]", [])
            unknown = [e for e in expand if e not in EXPANDABLE]
            if unknown:
                raise _Answer(400, None, f'"expand" must be one of {sorted(EXPANDABLE)}; got {unknown[0]!r}')
            if expand:
                return expand
            if _first(params, "full") in ("true", "True", "1"):
                return default + ["author", "sha", "lastModified", "gated", "disabled", "siblings"]
            return default + (["cardData"] if _first(params, "cardData") in ("true", "True", "1") else [])

        def _info(self, repo_id: str, rev: str | None, params: dict[str, list[str]]) -> None:
            repo = self._repo(repo_id, rev)
            fields = self._fields(params, INFO_DEFAULT)
            self._json(hub.entry(repo, fields, blobs=_first(params, "blobs") in ("true", "True", "1")))

        def _tree(self, repo_id: str, rev: str, prefix: str, params: dict[str, list[str]]) -> None:
            repo = self._repo(repo_id, rev)
            recursive = _first(params, "recursive") in ("true", "True", "1")
            under = prefix.strip("/") + "/" if prefix.strip("/") else ""
            entries, dirs = [], set()
            for f in repo.files.values():
                if not f.path.startswith(under):
                    continue
                rest = f.path[len(under):]
                if "/" in rest and not recursive:
                    dirs.add(under + rest.split("/")[0])
                    continue
                for i, _ in enumerate(rest.split("/")[:-1]):
                    dirs.add(under + "/".join(rest.split("/")[: i + 1]))
                entry = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                entries.append(entry)
            entries += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d} for d in sorted(dirs)]
            cursor = _first(params, "cursor")
            start = int(base64.urlsafe_b64decode(cursor.encode())) if cursor else 0
            headers = {}
            if start + hub.page_size < len(entries):
                query = [(k, v) for k, values in params.items() if k != "cursor" for v in values]
                token = base64.urlsafe_b64encode(str(start + hub.page_size).encode()).decode()
                headers["Link"] = f'<{hub.url}{urlsplit(self.path).path}?{urlencode(query + [("cursor", token)])}>; rel="next"'
            self._json(entries[start:start + hub.page_size], headers)

        def _repo(self, repo_id: str, rev: str | None) -> Repo:
            repo = hub.repo(repo_id)
            if repo is None:  # anonymous: the Hub cannot say missing from private
                raise _Answer(401, "RepoNotFound", "Repository not found")
            if rev not in (None, "main", repo.sha):
                raise _Answer(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return repo

        def _resolve(self, repo_id: str, rev: str, path: str, head: bool) -> None:
            repo = self._repo(repo_id, rev)
            if repo.gated and not (hub.token and self.headers.get("Authorization") == f"Bearer {hub.token}"):
                raise _Answer(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.")
            f = repo.files.get(path)
            if f is None:
                raise _Answer(404, "EntryNotFound", f"{path} does not exist on \"{rev}\"")
            common = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.sha256 if f.lfs else f.blob_id}"', "Accept-Ranges": "bytes",
                      "Vary": "Origin, Accept", "Access-Control-Expose-Headers": "X-Repo-Commit,X-Linked-Size,X-Linked-Etag,ETag,Link"}
            if f.lfs:
                location = hub.sign(f.sha256, path.rsplit("/", 1)[-1])
                return self._redirect(302, location, {**common, "X-Linked-Size": str(f.size), "X-Linked-Etag": f'"{f.sha256}"'}, head)
            data = GITATTRIBUTES if path == ".gitattributes" else (hub.root / repo_id / path).read_bytes()
            self._content(data, common, head, rate=True)

        def _moved(self, raw_path: str) -> str | None:
            """The path under a renamed repo's new name (relative, as the Hub redirects), or None."""
            for pattern in (_RESOLVE, _TREE, _INFO):
                if (match := pattern.match(raw_path)) and unquote(match["repo"]) in hub.renamed:
                    start, end = match.span("repo")
                    return raw_path[:start] + hub.renamed[unquote(match["repo"])] + raw_path[end:]
            return None

        def _redirect(self, status: int, location: str, headers: dict[str, str], head: bool = False) -> None:
            body = f"{'Found' if status == 302 else 'Temporary Redirect'}. Redirecting to {location}".encode()
            self._status = status
            self.send_response(status)
            for key, value in {**headers, "Location": location, "Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            self._rate_headers()
            self.end_headers()
            if not head:
                self.wfile.write(body)

        # -- CDN ---------------------------------------------------------------
        def _cdn(self, head: bool) -> None:
            url = urlsplit(self.path)
            if "Authorization" in self.headers:
                raise _Answer(400, None, "InvalidArgument: Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string parameter or the Authorization header should be specified")
            if not hub.signed_ok(url.path, url.query):
                raise _Answer(403, None, "AccessDenied: Request has expired or the signature does not match")
            blob = hub.blob(url.path.rsplit("/", 1)[-1])
            if blob is None:
                raise _Answer(404, None, "NoSuchKey")
            data = blob.read_bytes()
            self._content(data, {"ETag": f'"{hashlib.md5(data).hexdigest()}"', "Accept-Ranges": "bytes",
                                 "Content-Type": "binary/octet-stream", "x-amz-server-side-encryption": "AES256"}, head, rate=False)

        # -- answers -----------------------------------------------------------
        def _content(self, data: bytes, headers: dict[str, str], head: bool, rate: bool) -> None:
            status, body, extra = 200, data, {}
            asked = self.headers.get("Range")
            if asked:
                match = _RANGE.match(asked.strip())
                if not match or match.groups() == ("", ""):
                    raise _Answer(416, None, "InvalidRange")
                first, last = match.groups()
                if first == "":  # the last N bytes
                    start, end = max(0, len(data) - int(last)), len(data) - 1
                else:
                    start, end = int(first), min(len(data) - 1, int(last)) if last else len(data) - 1
                if start >= len(data) or (last and int(last) < start):
                    self._status = 416
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    if rate:
                        self._rate_headers()
                    self.end_headers()
                    return
                status, body = 206, data[start:end + 1]
                extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            self._status = status
            self.send_response(status)
            for key, value in {**headers, **extra, "Content-Length": str(len(body))}.items():
                self.send_header(key, value)
            if rate:
                self._rate_headers()
            self._sent = 0 if head else len(body)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, value, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(value).encode()
            self._status = 200
            self.send_response(200)
            for key, val in {**(headers or {}), "Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(body))}.items():
                self.send_header(key, val)
            self._rate_headers()
            self.end_headers()
            self.wfile.write(body)

        def _rate_headers(self) -> None:
            if self._rate is None:
                return
            bucket, left, reset = self._rate
            self.send_header("RateLimit", f'"{bucket}";r={left};t={reset}')
            self.send_header("RateLimit-Policy", f'"fixed window";"{bucket}";q={getattr(hub.limits, bucket)};w={int(hub.limits.window_s)}')
            if left == 0:
                self.send_header("Retry-After", str(reset))

        def _error(self, answer: _Answer, head: bool) -> None:
            body = json.dumps({"error": answer.message}).encode()
            self._status = answer.status
            self.send_response(answer.status)
            if answer.code:
                self.send_header("X-Error-Code", answer.code)
            self.send_header("X-Error-Message", answer.message)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            if server == "hub":
                self._rate_headers()
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


# -- repo contents -----------------------------------------------------------------
def _repo_file(path: str, data: bytes) -> RepoFile:
    lfs = path.endswith(LFS_SUFFIXES) or len(data) >= LFS_MIN_SIZE
    blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return RepoFile(path, len(data), hashlib.sha256(data).hexdigest(), blob_id, lfs)


def _sibling(f: RepoFile, blobs: bool) -> dict:
    if not blobs:
        return {"rfilename": f.path}
    out = {"rfilename": f.path, "blobId": f.blob_id, "size": f.size}
    if f.lfs:
        out["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
    return out


def _card(path: Path) -> dict | None:
    """The card's YAML front matter as the Hub parses it; None without one (or when it is not a mapping)."""
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    try:
        value = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return None
    return value if isinstance(value, dict) else None


def _json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _hub_tags(card: dict | None, config: dict | None, files: dict[str, RepoFile]) -> list[str]:
    """The tags the Hub shows: library, format, model type, card tags, license, base models with their relation, region."""
    card = card or {}
    tags: list[str] = []
    if card.get("library_name"):
        tags.append(str(card["library_name"]))
    if any(p.endswith(".safetensors") for p in files):
        tags.append("safetensors")
    if config and isinstance(config.get("model_type"), str):
        tags.append(config["model_type"])
    card_tags = card.get("tags") or []
    tags += [str(t) for t in ([card_tags] if isinstance(card_tags, str) else card_tags)]
    if card.get("pipeline_tag"):
        tags.append(str(card["pipeline_tag"]))
    bases = card.get("base_model") or []
    bases = [bases] if isinstance(bases, str) else [b for b in bases if isinstance(b, str)]
    # Without an explicit relation an adapter is an adapter, anything else a finetune: a real record with two
    # bases and no relation (jwengr/stable-diffusion-2-gray-inpaint-to-rgb) is tagged base_model:finetune:.
    relation = card.get("base_model_relation") or ("adapter" if "adapter_config.json" in files else "finetune")
    for base in bases:
        tags += [f"base_model:{base}", f"base_model:{relation}:{base}"]
    if card.get("license"):
        tags.append(f"license:{card['license']}")
    tags.append("region:us")
    return list(dict.fromkeys(tags))


def _safetensors_params(paths: list[Path]) -> dict | None:
    """``{"parameters": {dtype: count}, "total": n}`` over the repo's safetensors headers, as the Hub reports."""
    counts: dict[str, int] = {}
    for path in paths:
        try:
            with path.open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error):
            continue
        for name, info in header.items():
            if name != "__metadata__" and isinstance(info, dict):
                dtype = str(info.get("dtype"))
                counts[dtype] = counts.get(dtype, 0) + math.prod(info.get("shape", []))
    return {"parameters": counts, "total": sum(counts.values())} if counts else None


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _first(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[0] if values else None
