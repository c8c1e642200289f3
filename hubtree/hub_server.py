"""A Hub-compatible HTTP server: a local hub folder (and recorded Hub metadata) served as huggingface_hub expects.

It answers the requests huggingface_hub and ``HttpHub`` send, in the Hub's shapes:

* ``GET /api/models`` with ``author``, ``search``, ``filter`` (repeatable, every tag must
  match), ``sort`` + ``direction``, ``limit``, ``expand`` / ``full`` / ``cardData`` /
  ``config``; pages of ``page_size`` entries linked by ``Link: <absolute url>; rel="next"``;
* ``GET /api/models/{repo_id}[/revision/{rev}]`` (``blobs=true`` adds sizes and LFS hashes);
* ``GET /api/models/{repo_id}/tree/{rev}[/{path}]`` (``recursive=true``), paginated alike;
* ``GET`` and ``HEAD /{repo_id}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag``,
  ``Content-Length``, ``Accept-Ranges: bytes``; ``Range: bytes=a-b`` answers 206 with
  ``Content-Range``, a range starting past the end 416.

``rev`` is ``main`` or the repo's 40-hex revision (LocalHub's content hash). Errors carry
the Hub's ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``,
``GatedRepo``) and ``X-Error-Message``, so huggingface_hub raises its precise classes.

Gated repos: a repo folder holding a ``.gated`` file is gated (the file may say ``auto``
or ``manual``; empty means ``manual``). As on the Hub, its metadata stays public (listing,
model info, tree report ``gated``), and file contents (``resolve``) answer 401 with
``X-Error-Code: GatedRepo`` unless the request has an ``Authorization: Bearer`` header;
any token is accepted. LocalHub ignores dot-files, so the marker changes neither the
repo's files nor its revision.

Records: ``records=[jsonl paths]`` serves recorded Hub metadata (one JSON line per model
with ``model_info``: id, sha, dates, tags, card_data YAML, siblings...) as metadata-only
repos: listing, model info, tags and family crawls work; ``README.md`` is synthesized from
the card data; every other file answers 404 ``EntryNotFound``. Recorded gated repos are
gated as above. A folder repo wins over a record with the same id.

Faults: ``FaultSpec`` makes every Nth request fail (429 with ``RateLimit`` headers, 500,
a stall longer than a client's timeout, a body cut short); the ``FaultInjector`` at
``app.state.faults`` counts what it injected and logs the requests it saw.

Run ``serve(root)`` for a blocking server, or ``with running(root) as server:`` in tests.
"""
from __future__ import annotations

import ast
import asyncio
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hubtree.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HubtreeError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from hubtree.ops.hub.declared import parse_card
from hubtree.ops.hub.source import RepoFile, RepoQuery, RepoRecord, RepoRef, config_summary
from hubtree.ops.hub.local import LocalHub, _matches, _sha256

GATED_MARKER = ".gated"
DEFAULT_PAGE_SIZE = 1000  # the Hub's largest page
# Files the Hub stores with Git LFS: its default .gitattributes patterns, and anything over 10 MiB.
LFS_SUFFIXES = frozenset({".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".onnx", ".gguf", ".msgpack", ".model", ".pkl", ".zip"})
LFS_MIN_SIZE = 10 << 20


# --- what is served ------------------------------------------------------------
@dataclass(frozen=True)
class ServedFile:
    """One file of a served repo: bytes on disk, bytes in memory, or (a record's) none at all."""

    path: str
    size: int | None  # None: a metadata-only record that does not say
    local: Path | None = None
    content: bytes | None = None

    def hashes(self) -> tuple[str | None, str | None]:
        """(git oid, LFS sha256): the Hub's ``oid``/``blobId`` and ``lfs.sha256``. None where there are no bytes."""
        if self.content is not None:
            return _git_oid(self.content), None
        if self.local is None or self.size is None:
            return None, None
        stat = self.local.stat()
        if Path(self.path).suffix in LFS_SUFFIXES or self.size >= LFS_MIN_SIZE:
            sha256 = _sha256(self.local, stat.st_size, stat.st_mtime_ns)
            return _git_oid(_lfs_pointer(sha256, self.size)), sha256
        return _file_oid(self.local, stat.st_size, stat.st_mtime_ns), None


@dataclass
class ServedRepo:
    """A repo as the server describes it: the record it lists, its card and config, its files."""

    record: RepoRecord
    gated: str | None  # "auto" | "manual" | None (open)
    card: dict
    config: dict | None
    files: dict[str, ServedFile]


class ServedHub:
    """The served repos: folders of a LocalHub and loaded records.

    A folder is described again whenever its revision (a content hash, cheap once its
    files are hashed) or its gating changes, so edits to the folder show at once; the
    description itself (card YAML parsed, files listed) is cached per revision, as
    parsing cards on every listing page would make listings slow.
    """

    def __init__(self, root: Path | None, records: Sequence[Path] = ()):
        self.hub = LocalHub(root) if root is not None else None
        self.records = load_records(records)
        self._folders: dict[tuple[str, str, str | None], ServedRepo] = {}

    def ids(self) -> list[str]:
        return sorted(set(self.hub.repo_ids() if self.hub else []) | set(self.records))

    def get(self, repo_id: str) -> ServedRepo:
        if self.hub is not None and self.hub.local_path(repo_id, "").is_dir():
            return self._folder(repo_id)
        if repo_id in self.records:
            return self.records[repo_id]
        raise RepoNotFoundError(f"repo {repo_id} not found")

    def _folder(self, repo_id: str) -> ServedRepo:
        hub = self.hub
        ref = RepoRef(repo_id, hub.revision(repo_id))
        marker = hub.local_path(repo_id, GATED_MARKER)
        gated = (marker.read_text().strip() or "manual") if marker.is_file() else None
        key = (repo_id, ref.revision, gated)
        if key not in self._folders:
            record = hub.repo_record(ref)
            files = {f.path: ServedFile(f.path, f.size, local=hub.local_path(repo_id, f.path)) for f in record.files}
            self._folders[key] = ServedRepo(
                replace(record, gated=gated is not None), gated, _json_or_empty(hub, ref, "README.md", parse_card),
                config_summary(_json_or_empty(hub, ref, "config.json", json.loads)), files,
            )
        return self._folders[key]


def _json_or_empty(hub: LocalHub, ref: RepoRef, path: str, parse: Callable[[str], Any]) -> dict:
    """A parsed card or config, {} where the file is missing or broken (the Hub serves the repo anyway)."""
    try:
        data = parse(hub.read_text(ref, path))
    except (HubtreeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --- recorded Hub metadata -----------------------------------------------------------
_REPR_RFILENAME = re.compile(r"""rfilename=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def load_records(paths: Sequence[Path]) -> dict[str, ServedRepo]:
    """Recorded ``model_info`` lines as metadata-only repos, by id (a later line wins)."""
    repos: dict[str, ServedRepo] = {}
    for path in paths:
        for text in Path(path).read_text(encoding="utf-8").splitlines():
            if text.strip():
                repo = _record_repo(json.loads(text)["model_info"])
                repos[repo.record.repo_id] = repo
    return repos


def sibling_name(sibling: dict | str) -> str:
    """A sibling's file name, from the Hub's JSON ``{"rfilename": ...}`` or a ``RepoSibling(...)`` repr string."""
    if isinstance(sibling, dict):
        return sibling["rfilename"]
    match = _REPR_RFILENAME.search(sibling)
    if match is None:
        raise ValueError(f"not a sibling: {sibling[:80]!r}")
    return ast.literal_eval(match.group(1))


def _record_repo(info: dict) -> ServedRepo:
    card_text = info.get("card_data") or info.get("cardData") or ""
    if isinstance(card_text, dict):
        card_text = yaml.safe_dump(card_text, sort_keys=False)
    try:
        card = yaml.safe_load(card_text) or {}
    except yaml.YAMLError:
        card = {}
    readme = f"---\n{card_text.strip()}\n---\n".encode() if card_text.strip() else b""
    files = {}
    for name in map(sibling_name, info.get("siblings") or []):
        synthesized = name == "README.md"
        files[name] = ServedFile(name, len(readme) if synthesized else None, content=readme if synthesized else None)
    record = RepoRecord(
        repo_id=info["id"],
        revision=info["sha"],
        author=info.get("author"),
        created_at=_parse_date(info.get("created_at") or info.get("createdAt")),
        last_modified=_parse_date(info.get("last_modified") or info.get("lastModified")),
        tags=list(info.get("tags") or []),
        pipeline_tag=info.get("pipeline_tag"),
        library_name=info.get("library_name"),
        gated=bool(info.get("gated")),
        downloads=info.get("downloads"),
        likes=info.get("likes"),
        files=[RepoFile(f.path, f.size or 0) for f in files.values()],
    )
    return ServedRepo(record, info.get("gated") or None, card if isinstance(card, dict) else {}, info.get("config"), files)


def _parse_date(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


# --- the Hub's JSON shapes -------------------------------------------------------------
_LISTING_DEFAULT = {"_id", "id", "modelId", "likes", "downloads", "private", "tags", "pipeline_tag", "library_name", "createdAt"}
_LISTING_FULL = _LISTING_DEFAULT | {"author", "sha", "lastModified", "gated", "disabled", "siblings"}
_SORT_FIELDS = {"createdAt": "created_at", "lastModified": "last_modified", "downloads": "downloads", "likes": "likes"}


def model_json(repo: ServedRepo, blobs: bool) -> dict:
    """``/api/models/{repo_id}``: what ``huggingface_hub.ModelInfo`` reads."""
    r = repo.record
    return {
        "_id": hashlib.sha1(r.repo_id.encode()).hexdigest()[:24],
        "id": r.repo_id,
        "modelId": r.repo_id,
        "author": r.author,
        "sha": r.revision,
        "lastModified": _iso(r.last_modified),
        "createdAt": _iso(r.created_at),
        "private": False,
        "gated": repo.gated or False,
        "disabled": False,
        "downloads": r.downloads or 0,
        "likes": r.likes or 0,
        "tags": r.tags,
        "pipeline_tag": r.pipeline_tag,
        "library_name": r.library_name,
        "cardData": repo.card,
        "config": repo.config,
        "siblings": [_sibling(f, blobs) for f in repo.files.values()],
    }


def listing_json(repo: ServedRepo, params: Any) -> dict:
    """A listing entry with the fields the query asked for, as the Hub selects them."""
    expand = params.getlist("expand")
    if expand:
        keys = {"_id", "id"} | set(expand)
    else:
        keys = set(_LISTING_FULL if _flag(params, "full") else _LISTING_DEFAULT)
        keys |= {k for k in ("cardData", "config") if _flag(params, k)}
    return {k: v for k, v in model_json(repo, blobs=False).items() if k in keys}


def tree_json(repo: ServedRepo, path: str, recursive: bool) -> list[dict]:
    """``/tree``: the files and folders under ``path`` (all of them with ``recursive``), folders first."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    folders: dict[str, dict] = {}
    files: list[dict] = []
    for f in repo.files.values():
        if not f.path.startswith(prefix):
            continue
        parts = f.path[len(prefix):].split("/")
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            folder = prefix + "/".join(parts[:depth])
            folders.setdefault(folder, {"type": "directory", "oid": _git_oid(folder.encode()), "size": 0, "path": folder})
        if recursive or len(parts) == 1:
            files.append(_tree_file(f))
    if prefix and not folders and not files:
        raise EntryNotFoundError(f"{repo.record.repo_id} has no folder {path}")
    return list(folders.values()) + files


def _sibling(f: ServedFile, blobs: bool) -> dict:
    entry: dict[str, Any] = {"rfilename": f.path}
    if blobs and f.size is not None:
        oid, sha256 = f.hashes()
        entry.update(size=f.size, blobId=oid)
        if sha256:
            entry["lfs"] = {"size": f.size, "sha256": sha256, "pointerSize": len(_lfs_pointer(sha256, f.size))}
    return entry


def _tree_file(f: ServedFile) -> dict:
    oid, sha256 = f.hashes()
    entry: dict[str, Any] = {"type": "file", "oid": oid, "size": f.size or 0, "path": f.path}
    if sha256:
        entry["lfs"] = {"oid": sha256, "size": f.size, "pointerSize": len(_lfs_pointer(sha256, f.size))}
    return entry


def _sorted(repos: list[ServedRepo], sort: str | None, direction: str | None) -> list[ServedRepo]:
    """Hub sorts (descending unless ``direction=1``), repos lacking the field last; unknown sorts keep id order."""
    attr = _SORT_FIELDS.get(sort or "")
    if attr is None:
        return repos
    present = [r for r in repos if getattr(r.record, attr) is not None]
    present.sort(key=lambda r: getattr(r.record, attr), reverse=direction != "1")
    return present + [r for r in repos if getattr(r.record, attr) is None]


def _flag(params: Any, name: str) -> bool:
    return params.get(name, "").lower() in ("1", "true")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value else None


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@lru_cache(maxsize=65536)
def _file_oid(path: Path, size: int, mtime_ns: int) -> str:
    """Git blob id of a small (non-LFS) file, cached on (path, size, mtime)."""
    return _git_oid(path.read_bytes())


# --- faults ------------------------------------------------------------------------------
FAULT_KINDS = ("rate_limit", "server_error", "stall", "truncate")


@dataclass(frozen=True)
class FaultSpec:
    """Which requests fail, and how. ``X_every=N`` makes every Nth request fail that way (0: never).

    Counting is over all requests the server receives, shifted per kind by an offset
    drawn from ``seed``, so a run is reproducible and kinds rarely coincide; where they
    do, the earlier kind in ``FAULT_KINDS`` wins. A truncation drawn for a request
    without a body (HEAD) is skipped.

    * ``rate_limit``: 429 with ``RateLimit: "<api|resolvers>";r=0;t=<rate_limit_reset_s>``
      and ``RateLimit-Policy: "fixed window";"<kind>";q=<rate_limit_quota>;w=300`` (the IETF
      draft huggingface_hub parses), plus ``Retry-After`` unless ``retry_after`` is False;
    * ``server_error``: 500 with a JSON error body;
    * ``stall``: sleep ``stall_s`` before answering normally (longer than a client's timeout);
    * ``truncate``: declare the full ``Content-Length``, send half the body, close the connection.
    """

    rate_limit_every: int = 0
    server_error_every: int = 0
    stall_every: int = 0
    truncate_every: int = 0
    seed: int = 0
    rate_limit_reset_s: int = 1
    rate_limit_quota: int = 1000
    retry_after: bool = True
    stall_s: float = 2.0


class FaultInjector:
    """Decides each request's fault from a counter, counts the faults injected, logs the requests seen.

    ``requests`` logs ``(method, path, Range header)`` of the last 10,000 requests, so
    tests can check exactly what a client asked for.
    """

    def __init__(self, spec: FaultSpec):
        self.spec = spec
        self.injected: Counter[str] = Counter()
        self.requests: deque[tuple[str, str, str | None]] = deque(maxlen=10_000)
        self._count = 0
        rng = random.Random(spec.seed)
        self._offsets = {kind: rng.randrange(max(1, getattr(spec, f"{kind}_every"))) for kind in FAULT_KINDS}
        self._lock = threading.Lock()

    def next_fault(self, method: str, path: str, range_header: str | None) -> str | None:
        """Log one request and return the fault to inject into it, if any."""
        with self._lock:
            n = self._count
            self._count += 1
            self.requests.append((method, path, range_header))
        for kind in FAULT_KINDS:
            every = getattr(self.spec, f"{kind}_every")
            if every and (n + self._offsets[kind]) % every == 0 and not (kind == "truncate" and method == "HEAD"):
                return kind
        return None

    def count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1


class _FaultMiddleware:
    """Pure ASGI, so it can cut a response body mid-stream, which Starlette responses cannot."""

    def __init__(self, app: ASGIApp, injector: FaultInjector):
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        range_header = headers.get(b"range", b"").decode() or None
        kind = self.injector.next_fault(scope["method"], scope["path"], range_header)
        spec = self.injector.spec
        if kind == "rate_limit":
            self.injector.count(kind)
            resource = "api" if scope["path"].startswith("/api/") else "resolvers"
            limit_headers = {
                "RateLimit": f'"{resource}";r=0;t={spec.rate_limit_reset_s}',
                "RateLimit-Policy": f'"fixed window";"{resource}";q={spec.rate_limit_quota};w=300',
            }
            if spec.retry_after:
                limit_headers["Retry-After"] = str(spec.rate_limit_reset_s)
            return await JSONResponse({"error": "Too many requests"}, 429, limit_headers)(scope, receive, send)
        if kind == "server_error":
            self.injector.count(kind)
            return await JSONResponse({"error": "Internal error (injected)"}, 500)(scope, receive, send)
        if kind == "stall":
            self.injector.count(kind)
            await asyncio.sleep(spec.stall_s)
        if kind == "truncate":
            return await self.app(scope, receive, self._truncating(send))
        await self.app(scope, receive, send)

    def _truncating(self, send: Send) -> Send:
        """Send half of the first non-empty body chunk, then nothing: the server closes a response it never completed."""
        cut = False

        async def truncated(message: Message) -> None:
            nonlocal cut
            if cut:
                return
            body = message.get("body", b"")
            if message["type"] == "http.response.body" and body:
                cut = True
                self.injector.count("truncate")
                message = {"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True}
            await send(message)

        return truncated


# --- routes ---------------------------------------------------------------------------
_ERRORS: dict[type[HubtreeError], tuple[int, str]] = {
    RepoNotFoundError: (404, "RepoNotFound"),
    RevisionNotFoundError: (404, "RevisionNotFound"),
    EntryNotFoundError: (404, "EntryNotFound"),
    GatedRepoError: (401, "GatedRepo"),
}


def make_app(
    root: Path | None,
    records: Sequence[Path] = (),
    faults: FaultSpec | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Starlette:
    """The ASGI app serving ``root`` (a LocalHub folder, or None) and ``records``; see the module docstring.

    ``app.state.faults`` is the FaultInjector (present without faults too, to log requests).
    Endpoints are plain functions, so Starlette runs them in its thread pool: hashing a
    large file on first sight must not block the event loop that times stalls and streams bodies.
    """
    served = ServedHub(Path(root) if root is not None else None, [Path(p) for p in records])

    def repo_at(request: Request) -> ServedRepo:
        repo = served.get(f"{request.path_params['org']}/{request.path_params['name']}")
        rev = request.path_params.get("rev")
        if rev not in (None, "main", repo.record.revision):
            raise RevisionNotFoundError(f"Invalid rev id: {rev}")
        return repo

    def list_models(request: Request) -> Response:
        params = request.query_params
        query = RepoQuery(author=params.get("author"), search=params.get("search"), filter=tuple(params.getlist("filter")))
        repos = [repo for repo in map(served.get, served.ids()) if _matches(repo.record, query)]
        repos = _sorted(repos, params.get("sort"), params.get("direction"))
        if params.get("limit", "").isdigit():
            repos = repos[: int(params["limit"])]
        return _page(request, repos, lambda repo: listing_json(repo, params), page_size)

    def model_info(request: Request) -> Response:
        return JSONResponse(model_json(repo_at(request), blobs=_flag(request.query_params, "blobs")))

    def tree(request: Request) -> Response:
        entries = tree_json(repo_at(request), request.path_params.get("path", ""), _flag(request.query_params, "recursive"))
        return _page(request, entries, lambda entry: entry, page_size)

    def resolve(request: Request) -> Response:
        repo = repo_at(request)
        path = request.path_params["path"]
        if path not in repo.files or (repo.files[path].local is None and repo.files[path].content is None):
            raise EntryNotFoundError(f"Entry not found: {path}")
        if repo.gated and not request.headers.get("authorization", "").startswith("Bearer "):
            raise GatedRepoError(
                f"Access to model {repo.record.repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in."
            )
        file = repo.files[path]
        oid, sha256 = file.hashes()
        headers = {"X-Repo-Commit": repo.record.revision, "ETag": f'"{sha256 or oid}"'}
        if file.local is not None:
            return FileResponse(file.local, headers=headers)  # Range, 206, 416, HEAD, Accept-Ranges
        # Synthesized text is small: served whole, and said so (servers may ignore Range).
        return Response(file.content, headers={**headers, "Accept-Ranges": "none"}, media_type="text/plain")

    async def hub_error(request: Request, err: Exception) -> Response:
        status, code = _ERRORS[type(err)]
        message = str(err)
        return JSONResponse({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

    repo = "/{org}/{name}"
    routes = [
        Route("/api/models", list_models),
        Route(f"/api/models{repo}", model_info),
        Route(f"/api/models{repo}/revision/{{rev}}", model_info),
        Route(f"/api/models{repo}/tree/{{rev}}", tree),
        Route(f"/api/models{repo}/tree/{{rev}}/{{path:path}}", tree),
        Route(f"{repo}/resolve/{{rev}}/{{path:path}}", resolve, methods=["GET", "HEAD"]),
    ]
    injector = FaultInjector(faults or FaultSpec())
    app = Starlette(
        routes=routes,
        middleware=[Middleware(_FaultMiddleware, injector=injector)],
        exception_handlers={cls: hub_error for cls in _ERRORS},
    )
    app.state.faults = injector
    return app


def _page(request: Request, items: list, render: Callable[[Any], dict], page_size: int) -> Response:
    """One page of ``items`` from ``cursor`` on, with an absolute ``Link: <...>; rel="next"`` while more remain."""
    cursor = request.query_params.get("cursor", "0")
    start = int(cursor) if cursor.isdigit() else 0
    end = start + page_size
    headers = {}
    if end < len(items):
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"] + [("cursor", str(end))]
        headers["Link"] = f'<{request.url.replace(query=urlencode(query))}>; rel="next"'
    return JSONResponse([render(item) for item in items[start:end]], headers=headers)


# --- running it ---------------------------------------------------------------------------
@dataclass
class RunningServer:
    """A server running in a background thread: its base URL, and its fault injector's counts and request log."""

    url: str
    faults: FaultInjector
    app: Starlette = field(repr=False)


def serve(
    root: Path | None,
    host: str = "127.0.0.1",
    port: int = 0,
    records: Sequence[Path] = (),
    faults: FaultSpec | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> None:
    """Serve until interrupted (``hubtree hub serve``); ``port=0`` picks a free port, which uvicorn logs."""
    uvicorn.run(make_app(root, records, faults, page_size), host=host, port=port, log_level="info")


@contextmanager
def running(
    root: Path | None,
    records: Sequence[Path] = (),
    faults: FaultSpec | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Iterator[RunningServer]:
    """Run the server in a daemon thread on a free port for the ``with`` block, then stop it.

    Example::

        with running(hub_dir, page_size=3) as server:
            hub = HttpHub(server.url)
    """
    app = make_app(root, records, faults, page_size)
    # A short graceful shutdown: a stalled request must not hold the test run.
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="hub-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the hub server did not start on {host}:{port}")
        time.sleep(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield RunningServer(f"http://{host}:{bound_port}", app.state.faults, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
