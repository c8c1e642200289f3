"""The Hub's rate limits: fixed-window buckets, their headers on every response, 429 when one is spent; and counters.

As on the Hub (https://huggingface.co/docs/hub/rate-limits), requests fall in buckets:
``api`` (paths under ``/api/``) and ``resolvers`` (every path with a ``/resolve/``
segment); each allows ``q`` requests per fixed window of ``w`` seconds (windows start
at multiples of ``w`` on the server's clock). Every bucketed response carries the
IETF draft's headers as the Hub writes them::

    RateLimit: "api";r=<remaining>;t=<seconds until the window resets>
    RateLimit-Policy: "fixed window";"api";q=<quota>;w=<window seconds>

and a request over the quota answers 429 with the same headers (``r=0``) and
``Retry-After``, which ``huggingface_hub.utils.parse_ratelimit_headers`` reads. The CDN
the resolvers redirect to is not limited, as on the Hub; it is counted.
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_BUCKET = "api"
RESOLVERS_BUCKET = "resolvers"

# The Hub's documented quotas per 5-minute window (September 2025), by tier.
TIERS: dict[str, dict[str, int]] = {
    "anonymous": {API_BUCKET: 500, RESOLVERS_BUCKET: 3000},
    "free": {API_BUCKET: 1000, RESOLVERS_BUCKET: 5000},
    "pro": {API_BUCKET: 2500, RESOLVERS_BUCKET: 12000},
}
WINDOW_S = 300


@dataclass(frozen=True)
class RateLimits:
    """Requests per bucket per fixed window; None leaves a bucket unlimited (its headers still say the window)."""

    api: int | None = TIERS["free"][API_BUCKET]
    resolvers: int | None = TIERS["free"][RESOLVERS_BUCKET]
    window_s: int = WINDOW_S

    @classmethod
    def tier(cls, name: str, window_s: int = WINDOW_S) -> "RateLimits":
        return cls(TIERS[name][API_BUCKET], TIERS[name][RESOLVERS_BUCKET], window_s)


def bucket_of(path: str) -> str | None:
    """The Hub's bucket of a request path: ``api``, ``resolvers``, or None (not limited)."""
    if path.startswith("/api/"):
        return API_BUCKET
    if "/resolve/" in path:
        return RESOLVERS_BUCKET
    return None


class HubCounters:
    """What the server saw, for tests and benchmarks: requests per bucket, 429s, CDN requests and bytes.

    Keys: ``api``, ``resolvers``, ``rate_limited_api``, ``rate_limited_resolvers``,
    ``cdn``, ``cdn_bytes``, ``cdn_refused`` (bad or expired signatures). Thread-safe.
    """

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __getitem__(self, key: str) -> int:
        with self._lock:
            return self._counts[key]


class FixedWindows:
    """Counts requests per bucket in the current fixed window of the server's clock."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.time):
        self.limits = limits
        self.clock = clock
        self._windows: dict[str, tuple[int, int]] = {}  # bucket -> (window index, requests in it)
        self._lock = threading.Lock()

    def take(self, bucket: str) -> tuple[bool, dict[str, str]]:
        """Count one request; (allowed, the RateLimit headers to send with its answer)."""
        quota = getattr(self.limits, bucket)
        window = self.limits.window_s
        with self._lock:
            now = self.clock()
            index = math.floor(now / window)
            seen_index, used = self._windows.get(bucket, (index, 0))
            used = used if seen_index == index else 0
            allowed = quota is None or used < quota
            used += allowed
            self._windows[bucket] = (index, used)
        reset = max(1, math.ceil((index + 1) * window - now))
        remaining = max(0, quota - used) if quota is not None else 1_000_000_000
        headers = {
            "RateLimit": f'"{bucket}";r={remaining};t={reset}',
            "RateLimit-Policy": f'"fixed window";"{bucket}";q={quota if quota is not None else remaining};w={window}',
        }
        if not allowed:
            headers["Retry-After"] = str(reset)
        return allowed, headers


class RateLimitMiddleware:
    """Pure ASGI: buckets each request, answers 429 when its bucket is spent, adds the headers to every answer."""

    def __init__(self, app: ASGIApp, windows: FixedWindows, counters: HubCounters):
        self.app = app
        self.windows = windows
        self.counters = counters

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        bucket = bucket_of(scope["path"]) if scope["type"] == "http" else None
        if bucket is None:
            return await self.app(scope, receive, send)
        allowed, headers = self.windows.take(bucket)
        self.counters.add(bucket)
        if not allowed:
            self.counters.add(f"rate_limited_{bucket}")
            message = f"You have exceeded the '{bucket}' rate limit; retry after {headers['Retry-After']} seconds."
            return await JSONResponse({"error": message}, 429, headers)(scope, receive, send)
        encoded = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *encoded]}
            await send(message)

        await self.app(scope, receive, with_headers)
