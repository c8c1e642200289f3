"""The ASGI app: the Hub's routes over a ``ServedHub``, Hub error codes, rate limits, and the fault middleware in front."""
from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from hubtree.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HubtreeError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from hubtree.hub_server.cdn import Cdn, serve_bytes
from hubtree.hub_server.faults import FaultInjector, FaultMiddleware, FaultSpec
from hubtree.hub_server.limits import FixedWindows, HubCounters, RateLimitMiddleware, RateLimits
from hubtree.hub_server.served import ServedHub, ServedRepo
from hubtree.hub_server.shapes import flag, listing_json, model_json, sort_repos, tree_json
from hubtree.ops.hub.source import RepoQuery

DEFAULT_PAGE_SIZE = 1000  # the Hub's largest page (and its largest ``limit``)
COUNTERS_PATH = "/_hubtree/counters"  # not a Hub path: the counters as JSON, outside every bucket

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
    limits: RateLimits | None = None,
    cdn: Cdn | None = None,
    counters: HubCounters | None = None,
    clock: Callable[[], float] | None = None,
    computed: Mapping[str, ServedRepo] | None = None,
    token: str | None = None,
) -> Starlette:
    """The ASGI app serving ``root`` (a LocalHub folder, or None), ``records`` and ``computed`` repos
    (big-model mode: ``hub_server.big``); see the package docstring.

    ``limits`` sets the rate-limit buckets (default: the Hub's free tier); ``clock`` their
    fixed windows (default: the CDN's clock, else ``time.time``). With a ``cdn``, LFS files
    resolve to 302s onto it; without one they are served here. ``app.state.faults`` is the
    FaultInjector (present without faults too, to log requests), ``app.state.counters`` the
    ``HubCounters`` (also at ``GET /_hubtree/counters``).
    ``token`` opens gated repos' files to requests sending ``Authorization: Bearer <token>``;
    without one, gated files are served to nobody.
    """
    served = ServedHub(Path(root) if root is not None else None, [Path(p) for p in records], computed)
    injector = FaultInjector(faults or FaultSpec())
    counters = counters or HubCounters()
    clock = clock or (cdn.clock if cdn else time.time)
    app = Starlette(
        routes=[*routes(Endpoints(served, page_size, cdn, token)), Route(COUNTERS_PATH, lambda request: JSONResponse(counters.snapshot()))],
        middleware=[
            Middleware(FaultMiddleware, injector=injector),
            Middleware(RateLimitMiddleware, windows=FixedWindows(limits or RateLimits(), clock), counters=counters),
        ],
        exception_handlers={cls: hub_error for cls in _ERRORS},
    )
    app.state.faults = injector
    app.state.counters = counters
    return app


def routes(endpoints: Endpoints) -> list[Route]:
    """The Hub's paths for listing, model info, tree and resolve."""
    repo = "/{org}/{name}"
    return [
        Route("/api/models", endpoints.list_models),
        Route(f"/api/models{repo}", endpoints.model_info),
        Route(f"/api/models{repo}/revision/{{rev}}", endpoints.model_info),
        Route(f"/api/models{repo}/tree/{{rev}}", endpoints.tree),
        Route(f"/api/models{repo}/tree/{{rev}}/{{path:path}}", endpoints.tree),
        Route(f"{repo}/resolve/{{rev}}/{{path:path}}", endpoints.resolve, methods=["GET", "HEAD"]),
    ]


@dataclass
class Endpoints:
    """The route handlers over one ``ServedHub``.

    They are plain (not async) methods, so Starlette runs them in its thread pool: hashing
    a large file on first sight must not block the event loop that times stalls and streams bodies.
    """

    served: ServedHub
    page_size: int
    cdn: Cdn | None = None
    token: str | None = None  # the one token that opens gated repos

    def list_models(self, request: Request) -> Response:
        """As the Hub: ``limit`` is the page size (at most ``page_size``), further pages follow the Link header."""
        params = request.query_params
        query = RepoQuery(author=params.get("author"), search=params.get("search"), filter=tuple(params.getlist("filter")))
        repos = [repo for repo in map(self.served.get, self.served.ids()) if query.matches(repo.record.repo_id, repo.record.author, repo.record.tags)]
        repos = sort_repos(repos, params.get("sort"), params.get("direction"))
        size = min(int(params["limit"]), self.page_size) if params.get("limit", "").isdigit() and int(params["limit"]) > 0 else self.page_size
        return page(request, repos, lambda repo: listing_json(repo, params), size)

    def model_info(self, request: Request) -> Response:
        return JSONResponse(model_json(self.repo_at(request), blobs=flag(request.query_params, "blobs")))

    def tree(self, request: Request) -> Response:
        entries = tree_json(self.repo_at(request), request.path_params.get("path", ""), flag(request.query_params, "recursive"))
        return page(request, entries, lambda entry: entry, self.page_size)

    def resolve(self, request: Request) -> Response:
        repo = self.repo_at(request)
        path = request.path_params["path"]
        if path not in repo.files or (repo.files[path].local is None and repo.files[path].content is None and repo.files[path].generate is None):
            raise EntryNotFoundError(f"Entry not found: {path}")
        if repo.gated and not self._authorized(request):
            raise GatedRepoError(
                f"Access to model {repo.record.repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in."
            )
        file = repo.files[path]
        oid, sha256 = file.hashes()
        headers = {"X-Repo-Commit": repo.record.revision, "ETag": f'"{sha256 or oid}"'}
        if sha256 and self.cdn is not None:
            # An LFS file, as on the Hub: its size and sha256 here, its bytes at a signed CDN URL.
            headers.update({"Location": self.cdn.signed_url(sha256, file), "X-Linked-Size": str(file.size), "X-Linked-Etag": f'"{sha256}"'})
            return Response(status_code=302, headers=headers)
        if file.local is not None:
            return FileResponse(file.local, headers=headers)  # Range, 206, 416, HEAD, Accept-Ranges
        if file.generate is not None:
            return serve_bytes(request, file, headers)
        # Synthesized text is small: served whole, and said so (servers may ignore Range).
        return Response(file.content, headers={**headers, "Accept-Ranges": "none"}, media_type="text/plain")

    def _authorized(self, request: Request) -> bool:
        """The request sends the token ``hub serve`` was given (compared in constant time)."""
        sent = request.headers.get("authorization", "").encode("latin-1", "replace")
        return self.token is not None and hmac.compare_digest(sent, f"Bearer {self.token}".encode())

    def repo_at(self, request: Request) -> ServedRepo:
        """The repo a path names, at ``main`` or its own revision."""
        repo = self.served.get(f"{request.path_params['org']}/{request.path_params['name']}")
        rev = request.path_params.get("rev")
        if rev not in (None, "main", repo.record.revision):
            raise RevisionNotFoundError(f"Invalid rev id: {rev}")
        return repo


async def hub_error(request: Request, err: Exception) -> Response:
    """Our errors as the Hub sends them: status, ``X-Error-Code`` and ``X-Error-Message``."""
    status, code = _ERRORS[type(err)]
    message = str(err)
    return JSONResponse({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})


def page(request: Request, items: list, render: Callable[[Any], dict], page_size: int) -> Response:
    """One page of ``items`` from ``cursor`` on, with an absolute ``Link: <...>; rel="next"`` while more remain."""
    cursor = request.query_params.get("cursor", "0")
    start = int(cursor) if cursor.isdigit() else 0
    end = start + page_size
    headers = {}
    if end < len(items):
        query = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"] + [("cursor", str(end))]
        headers["Link"] = f'<{request.url.replace(query=urlencode(query))}>; rel="next"'
    return JSONResponse([render(item) for item in items[start:end]], headers=headers)
