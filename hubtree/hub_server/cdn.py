"""The CDN origin the resolvers redirect to: signed, expiring, content-addressed URLs, as the Hub's are.

On the Hub, ``/resolve/`` of an LFS file answers 302 to a signed CDN URL (CloudFront
style: ``...?Expires=<epoch seconds>&Signature=...&Key-Pair-Id=...``) valid about an
hour; the CDN does not count against any rate limit and answers 403 once the URL has
expired or its signature is wrong. Here the URL is ``/repos/<aa>/<bb>/<sha256>`` on a
second port, signed with HMAC-SHA256 over the path and the expiry; the TTL is a setting
(short in tests). Bytes are served by range like any file; requests and body bytes are
counted in the server's ``HubCounters``.
"""
from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hubtree.hub_server.limits import HubCounters
from hubtree.hub_server.served import ServedFile

DEFAULT_TTL_S = 3600  # the Hub's signed URLs live about an hour
KEY_PAIR_ID = "hubtree-local"
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Cdn:
    """Signs blob URLs for the resolvers and serves them; ``base_url`` is set once its server has a port.

    ``clock`` is the server's time (epoch seconds), injectable so tests can expire URLs without waiting.
    """

    ttl_s: float = DEFAULT_TTL_S
    clock: Callable[[], float] = time.time
    base_url: str = ""
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    # (method, path, Range header) of the last 10,000 requests, so tests can check exactly what a client asked for
    requests: deque[tuple[str, str, str | None]] = field(default_factory=lambda: deque(maxlen=10_000), repr=False)
    _blobs: dict[str, ServedFile] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def signed_url(self, sha256: str, file: ServedFile) -> str:
        """A URL for ``file``'s bytes, valid for ``ttl_s`` from now; registers the blob by its sha256."""
        with self._lock:
            self._blobs[sha256] = file
        path = f"/repos/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        expires = math.ceil(self.clock() + self.ttl_s)
        query = urlencode({"Expires": expires, "Signature": self._sign(path, expires), "Key-Pair-Id": KEY_PAIR_ID})
        return f"{self.base_url}{path}?{query}"

    def blob(self, request: Request) -> ServedFile | None:
        """The blob a request names, if its signature is good and not expired; else None."""
        params = request.query_params
        expires = params.get("Expires", "")
        if not expires.isdigit() or int(expires) <= self.clock():
            return None
        if not hmac.compare_digest(params.get("Signature", ""), self._sign(request.url.path, int(expires))):
            return None
        with self._lock:
            return self._blobs.get(request.path_params["sha256"])

    def _sign(self, path: str, expires: int) -> str:
        return hmac.new(self.secret, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def make_cdn_app(cdn: Cdn, counters: HubCounters) -> Starlette:
    """The CDN's ASGI app: ``GET``/``HEAD /repos/<aa>/<bb>/<sha256>?Expires&Signature`` with ranges; 403 otherwise."""

    def blob(request: Request) -> Response:
        file = cdn.blob(request)
        if file is None:
            counters.add("cdn_refused")
            return JSONResponse({"error": "Access denied: the signed URL expired or its signature is wrong"}, 403)
        return serve_bytes(request, file)

    app = Starlette(routes=[Route("/repos/{aa}/{bb}/{sha256}", blob, methods=["GET", "HEAD"])])
    app.add_middleware(_CountingMiddleware, counters=counters, log=cdn.requests)
    return app


def serve_bytes(request: Request, file: ServedFile, headers: dict[str, str] | None = None) -> Response:
    """A served file's bytes with ``Range`` support (206, 416 past the end), as the Hub's CDN answers.

    From disk, from memory, or computed per range (big-model mode: only the asked bytes are
    generated; without a Range the whole file is, which is what a full read costs).
    """
    headers = {**(headers or {}), "Accept-Ranges": "bytes"}
    if file.local is not None:
        return FileResponse(file.local, headers=headers)
    size = file.size if file.generate is not None else len(file.content or b"")
    size = size or 0
    match = _RANGE.match(request.headers.get("range", "").strip())
    start, end = (int(match.group(1)), min(int(match.group(2) or size - 1), size - 1)) if match else (0, size - 1)
    if start >= size:
        return Response(b"", 416, headers={**headers, "Content-Range": f"bytes */{size}"})
    if match:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(b"", 206 if match else 200, headers={**headers, "Content-Length": str(end + 1 - start)})
    data = file.generate(start, end + 1) if file.generate is not None else (file.content or b"")[start : end + 1]
    return Response(data, 206 if match else 200, headers=headers, media_type="application/octet-stream")


class _CountingMiddleware:
    """Counts (and logs) every CDN request, and the body bytes of the answers that served data."""

    def __init__(self, app: ASGIApp, counters: HubCounters, log: deque):
        self.app = app
        self.counters = counters
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.counters.add("cdn")
        self.log.append((scope["method"], scope["path"], dict(scope["headers"]).get(b"range", b"").decode() or None))
        served = True

        async def counted(message: Message) -> None:
            nonlocal served
            if message["type"] == "http.response.start":
                served = message["status"] < 400
            elif message["type"] == "http.response.body" and served:
                self.counters.add("cdn_bytes", len(message.get("body", b"")))
            await send(message)

        await self.app(scope, receive, counted)
