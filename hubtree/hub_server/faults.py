"""Fault injection: every Nth request fails as the Hub fails (429 with RateLimit headers, 500, a stall, a cut body)."""
from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FAULT_KINDS = ("rate_limit", "server_error", "stall", "truncate")  # the every-Nth kinds; an outage is a window


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
    * ``truncate``: declare the full ``Content-Length``, send half the body, close the connection;
    * ``outage``: from request number ``outage_after`` on (counting from 1), every request
      answers 503 for ``outage_s`` seconds, as a hub that is down for a while.
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
    outage_after: int = 0
    outage_s: float = 60.0


class FaultInjector:
    """Decides each request's fault from a counter, counts the faults injected, logs the requests seen.

    ``requests`` logs ``(method, path, Range header)`` of the last 10,000 requests, so
    tests can check exactly what a client asked for; ``authorization`` logs each one's
    ``Authorization`` header (None when absent), so tests can see where a token went.
    """

    def __init__(self, spec: FaultSpec):
        self.spec = spec
        self.injected: Counter[str] = Counter()
        self.requests: deque[tuple[str, str, str | None]] = deque(maxlen=10_000)
        self.authorization: deque[str | None] = deque(maxlen=10_000)
        self._count = 0
        self._outage_until = 0.0
        rng = random.Random(spec.seed)
        self._offsets = {kind: rng.randrange(max(1, getattr(spec, f"{kind}_every"))) for kind in FAULT_KINDS}
        self._lock = threading.Lock()

    def next_fault(self, method: str, path: str, range_header: str | None, authorization: str | None = None) -> str | None:
        """Log one request and return the fault to inject into it, if any."""
        with self._lock:
            n = self._count
            self._count += 1
            self.requests.append((method, path, range_header))
            self.authorization.append(authorization)
            if self.spec.outage_after and n + 1 == self.spec.outage_after:
                self._outage_until = time.monotonic() + self.spec.outage_s
            if time.monotonic() < self._outage_until:
                return "outage"
        for kind in FAULT_KINDS:
            every = getattr(self.spec, f"{kind}_every")
            if every and (n + self._offsets[kind]) % every == 0 and not (kind == "truncate" and method == "HEAD"):
                return kind
        return None

    def count(self, kind: str) -> None:
        with self._lock:
            self.injected[kind] += 1


class FaultMiddleware:
    """Pure ASGI, so it can cut a response body mid-stream, which Starlette responses cannot."""

    def __init__(self, app: ASGIApp, injector: FaultInjector):
        self.app = app
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        range_header = headers.get(b"range", b"").decode() or None
        authorization = headers.get(b"authorization", b"").decode("latin-1") or None
        kind = self.injector.next_fault(scope["method"], scope["path"], range_header, authorization)
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
        if kind == "outage":
            self.injector.count(kind)
            return await JSONResponse({"error": "Service unavailable (injected outage)"}, 503)(scope, receive, send)
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
