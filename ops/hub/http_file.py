"""A ``ByteSource`` over HTTP: exact byte ranges of one file on a hub, one resolve per file, counted.

On the Hub an LFS file's ``/resolve/`` URL answers 302 to a signed CDN URL valid about
an hour; resolves count against the scarcest rate-limit bucket, the CDN against none.
So a file is resolved once (a HEAD, or the first ranged GET; a redirect within the hub, a
renamed repo's 307, is followed, the one to the CDN is not): its ``X-Linked-Size``,
``X-Linked-Etag`` (the sha256 of an LFS file) and ``X-Repo-Commit`` are kept, and so is
the ``Location`` with its expiry (the URL's ``Expires``); every later range goes to that
kept URL. It is resolved again when it
has expired, or when the CDN answers 403 (a signature the CDN no longer accepts).
Files the hub serves itself (small, non-LFS: cards, configs) answer 200/206 directly.

``read(start, end)`` sends exactly ``Range: bytes=start-(end-1)``: never an open-ended
range, never a read-ahead (``safetensors_reader.read_ranges`` coalesces adjacent ranges
into one read before they get here).
Requests go through huggingface_hub's shared session with its headers, so ``HF_TOKEN``,
a saved login, proxies and a custom client factory behave as users of huggingface_hub
expect; the token goes to the hub only (never to the CDN, as huggingface_hub does), and
never into a message or a log line.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TypeVar
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from hubtree.errors import HubError, TruncatedFileError
from hubtree.ops.hub.retry import CDN, RESOLVE, RetryPolicy
from hubtree.ops.hub.token_scope import origin, scoped_token

logger = logging.getLogger(__name__)
T = TypeVar("T")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# A kept CDN URL is not used in its last seconds: a range sent then could arrive expired.
EXPIRY_MARGIN_S = 5.0
# Redirects within the hub (a renamed repo) followed per resolve, as huggingface_hub follows them.
MAX_HUB_REDIRECTS = 5


class _Moved:
    """A request's answer was a redirect within the hub: send it again, at the new URL."""


_MOVED = _Moved()


@dataclass
class Traffic:
    """Requests sent (retries included) per kind (``api``, ``resolve``, ``cdn``) and file bytes received; thread-safe."""

    api: int = 0
    resolve: int = 0
    cdn: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def requests(self) -> int:
        return self.api + self.resolve + self.cdn

    def add(self, kind: str | None = None, nbytes: int = 0) -> None:
        with self._lock:
            if kind is not None:
                setattr(self, kind, getattr(self, kind) + 1)
            self.bytes += nbytes

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"api_calls": self.api, "resolves": self.resolve, "cdn_requests": self.cdn, "bytes": self.bytes}


@dataclass(frozen=True)
class Resolved:
    """What one resolve said of a file: where its bytes are, until when, and the hub's metadata."""

    location: str | None  # the CDN URL; None when the hub serves the bytes itself
    expires: float | None  # epoch seconds (the URL's ``Expires``); None: until the CDN refuses it
    size: int | None
    etag: str | None  # X-Linked-Etag (an LFS file's sha256) or ETag, unquoted
    commit: str | None  # X-Repo-Commit


class _Refused(Exception):
    """The CDN refused a kept URL (403): resolve again."""


class HttpFile:
    """Random access to one remote file by HTTP range requests, resolved once.

    Args:
        url: the file's resolve URL (``{endpoint}/{repo_id}/resolve/{revision}/{path}``).
        policy: the retry policy and request budget, shared with the hub that opened the file
            (a file opened on its own gets a policy, and so a budget, of its own).
        size: the file's size when already known (from the lake), saving nothing but a check.
        headers: request headers; by default huggingface_hub's, with the user's token only
            where ``token_scope.scoped_token`` allows it for this URL.
        traffic: a counter shared with the hub, on top of this file's own.
        clock: epoch seconds, to judge a kept URL's expiry (injectable for tests).

    Example::

        source = HttpFile("https://huggingface.co/org/name/resolve/<sha>/model.safetensors")
        header = read_header(source, "model.safetensors")   # one resolve, one CDN request
    """

    @property
    def first_read_bytes(self) -> int:
        """How much a header read asks at once: ~100 KB as huggingface_hub does (most headers fit),
        but for a file under 10 MB only 1% of it, and at least 4 KB (a small model's header):
        a 200 KB file then costs ~4 KB, not half its bytes, and still one request."""
        return min(100_000, max(4096, (self._size or 0) // 100))

    def __init__(
        self,
        url: str,
        policy: RetryPolicy | None = None,
        size: int | None = None,
        headers: Mapping[str, str] | None = None,
        traffic: Traffic | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.url = url
        self.policy = policy or RetryPolicy()
        self._size = size
        own = build_hf_headers(token=scoped_token(url)) if headers is None else headers
        self._headers = {**own, "Accept-Encoding": "identity"}
        self._cdn_headers = {"Accept-Encoding": "identity", "user-agent": self._headers.get("user-agent", "hubtree")}
        self._clock = clock
        self._resolved: Resolved | None = None
        self._warned_whole = False
        self._own = Traffic()
        self._sinks = (self._own, traffic) if traffic is not None else (self._own,)

    @property
    def bytes_read(self) -> int:
        """Body bytes received by this file's successful reads."""
        return self._own.bytes

    @property
    def requests(self) -> int:
        """Requests this file sent, retries included (resolves and CDN requests)."""
        return self._own.requests

    @property
    def traffic(self) -> Traffic:
        """This file's own counts per kind."""
        return self._own

    def resolve(self) -> Resolved:
        """The file's resolve (one HEAD; a redirect to the CDN not followed) unless one is already kept."""
        if self._resolved is None:
            self._resolved = self._resolving(self._head)
            self._size = self._size if self._resolved.size is None else self._resolved.size
        return self._resolved

    @property
    def sha256(self) -> str | None:
        """The file's sha256 as the hub names it (``X-Linked-Etag`` of an LFS file), from its one resolve; no data read."""
        etag = self.resolve().etag
        return etag if etag and _SHA256.match(etag) else None

    def size(self) -> int:
        """The file's length: known, else from its resolve (``X-Linked-Size``, or ``Content-Length`` of a direct answer)."""
        if self._size is None:
            self.resolve()
        if self._size is None:
            raise HubError(f"{self.url}: the hub sent no size for the file")
        return self._size

    def read(self, start: int, end: int) -> bytes:
        """Exactly bytes ``[start, end)``; TruncatedFileError if the file is shorter."""
        if end <= start:
            return b""
        if self._size is not None and end > self._size:
            raise TruncatedFileError(f"{self.url}: wanted bytes {start}-{end - 1}, the file has {self._size}")
        data = self._get(start, end)
        if len(data) != end - start:
            raise TruncatedFileError(f"{self.url}: wanted bytes {start}-{end - 1}, the file has {self._size}")
        return data

    def read_prefix(self, limit: int) -> bytes:
        """The first ``limit`` bytes, or the whole file if it is shorter, in one ranged GET (no HEAD first)."""
        return self._get(0, limit) if limit > 0 else b""

    # -- requests ----------------------------------------------------------------
    def _get(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` or fewer at the end of the file: from the kept URL, else by resolving first."""
        resolved = self._resolved
        if resolved is not None and resolved.location is not None and not self._expired(resolved):
            try:
                return self.policy.run(CDN, lambda: self._range_get(resolved.location, start, end, cdn=True), self.url)
            except _Refused:
                self._resolved = None  # a URL the CDN no longer accepts: resolve again, once
        elif resolved is not None and resolved.location is None:
            return self.policy.run(RESOLVE, lambda: self._range_get(self.url, start, end, cdn=False), self.url)
        data = self._resolving(lambda: self._resolve_get(start, end))
        if data is not None:
            return data
        location = self._resolved.location
        try:
            return self.policy.run(CDN, lambda: self._range_get(location, start, end, cdn=True), self.url)
        except _Refused:
            raise HubError(f"{self.url}: the CDN refused a URL the hub has just signed (HTTP 403)") from None

    def _expired(self, resolved: Resolved) -> bool:
        return resolved.expires is not None and self._clock() >= resolved.expires - EXPIRY_MARGIN_S

    def _resolving(self, attempt: Callable[[], T | _Moved]) -> T:
        """``attempt`` (one request to the resolve URL) under the policy; sent again, to the new URL, while the
        hub redirects to itself. The Hub answers a renamed or transferred repo's old URLs with a 307 to the
        new name (a relative ``Location``): that is a move, not the CDN, which is on another host."""
        for _ in range(MAX_HUB_REDIRECTS + 1):
            result = self.policy.run(RESOLVE, attempt, self.url)
            if result is not _MOVED:
                return result
        raise HubError(f"{self.url}: more than {MAX_HUB_REDIRECTS} redirects within the hub")

    def _moved(self, response: httpx2.Response) -> bool:
        """A redirect to the hub's own origin: follow it from now on (``self.url`` becomes the target)."""
        if not response.has_redirect_location:
            return False
        target = urljoin(self.url, response.headers["location"])
        if origin(target)[0] != origin(self.url)[0]:  # another host (or port): the CDN
            return False
        self.url = target
        return True

    def _head(self) -> Resolved | _Moved:
        response = get_session().head(self.url, headers=self._headers, timeout=self.policy.timeout, follow_redirects=False)
        self._count(RESOLVE)
        self.policy.observe(response)
        hf_raise_for_status(response)
        return _MOVED if self._moved(response) else self._resolution(response)

    def _resolve_get(self, start: int, end: int) -> bytes | None | _Moved:
        """One ranged GET of the resolve URL: the bytes if the hub serves them, None (and the resolve kept) if it
        redirects to the CDN, ``_MOVED`` if to itself."""
        headers = {**self._headers, "Range": f"bytes={start}-{end - 1}"}
        with get_session().stream("GET", self.url, headers=headers, timeout=self.policy.timeout, follow_redirects=False) as response:
            self._count(RESOLVE)
            self.policy.observe(response)
            if self._moved(response):
                return _MOVED
            if response.has_redirect_location:
                self._resolved = self._resolution(response)
                self._size = self._size if self._resolved.size is None else self._resolved.size
                return None
            self._resolved = self._resolution(response)
            return self._body(response, start, end)

    def _range_get(self, url: str, start: int, end: int, cdn: bool) -> bytes:
        headers = {**(self._cdn_headers if cdn else self._headers), "Range": f"bytes={start}-{end - 1}"}
        with get_session().stream("GET", url, headers=headers, timeout=self.policy.timeout, follow_redirects=False) as response:
            self._count(CDN if cdn else RESOLVE)
            if not cdn:
                self.policy.observe(response)
            if cdn and response.status_code == 403:
                raise _Refused()
            return self._body(response, start, end)

    def _resolution(self, response: httpx2.Response) -> Resolved:
        """The resolve's metadata, as huggingface_hub's ``get_hf_file_metadata`` reads it."""
        h = response.headers
        location = urljoin(self.url, h["location"]) if response.has_redirect_location else None
        size = h.get("x-linked-size") or (None if location else _total_size(response))
        etag = (h.get("x-linked-etag") or h.get("etag") or "").removeprefix("W/").strip('"') or None
        return Resolved(location, _expires(location) if location else None, int(size) if size else None, etag, h.get("x-repo-commit"))

    def _body(self, response: httpx2.Response, start: int, end: int) -> bytes:
        if response.status_code == 416:  # the range starts at or past the end of the file
            self._learn_size(_UNSATISFIED_RANGE, response.headers.get("content-range", ""), group=1)
            return b""
        if response.status_code >= 400:
            response.read()  # error bodies are small; hf_raise_for_status reads the message from them
            hf_raise_for_status(response)
        if response.status_code == 206:
            self._check_range(response.headers.get("content-range", ""), start, end)
            received = _read_at_most(response, end - start)
            data = received
        elif response.status_code == 200:
            # A server that ignores Range sends the whole file from its start: read up to what was asked, stop there.
            if start > 0 and not self._warned_whole:
                self._warned_whole = True
                logger.warning("%s: the server ignores Range requests; each read costs the file up to the read's end", self.url)
            received = _read_at_most(response, end)
            data = received[start:]
        else:
            raise HubError(f"{self.url}: answered HTTP {response.status_code} to a range request")
        self._count(nbytes=len(received))  # bytes received and thrown away count too
        return data

    def _check_range(self, content_range: str, start: int, end: int) -> None:
        match = _CONTENT_RANGE.match(content_range.strip())
        if not match or int(match.group(1)) != start or int(match.group(2)) > end - 1:
            raise HubError(f"{self.url}: asked for bytes {start}-{end - 1}, got Content-Range {content_range!r}")
        self._learn_size(_CONTENT_RANGE, content_range, group=3)

    def _learn_size(self, pattern: re.Pattern, header: str, group: int) -> None:
        match = pattern.match(header.strip())
        if match and match.group(group) != "*":
            self._size = int(match.group(group))

    def _count(self, kind: str | None = None, nbytes: int = 0) -> None:
        for sink in self._sinks:
            sink.add(kind, nbytes)


def _total_size(response: httpx2.Response) -> str | None:
    """A direct answer's file size: the total of its Content-Range, else its Content-Length (a whole-file answer)."""
    match = _CONTENT_RANGE.match(response.headers.get("content-range", "").strip())
    if match:
        return None if match.group(3) == "*" else match.group(3)
    return response.headers.get("content-length") if response.status_code == 200 else None


def _expires(location: str) -> float | None:
    """A signed URL's expiry in epoch seconds: CloudFront's ``Expires``, or S3's ``X-Amz-Date`` plus
    ``X-Amz-Expires`` (the Hub's Xet bridge signs that way); None if it says neither."""
    query = parse_qs(urlsplit(location).query)
    first = lambda key: (query.get(key) or [""])[0]
    if first("Expires").isdigit():
        return float(first("Expires"))
    if first("X-Amz-Expires").isdigit():
        try:
            signed = datetime.strptime(first("X-Amz-Date"), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            return None
        return signed.timestamp() + int(first("X-Amz-Expires"))
    return None


def _read_at_most(response: httpx2.Response, limit: int) -> bytes:
    """Up to ``limit`` body bytes; a body cut short by the server raises httpx2.RemoteProtocolError (retried)."""
    chunks, have = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk[: limit - have])
        have += len(chunks[-1])
        if have >= limit:
            break
    return b"".join(chunks)
