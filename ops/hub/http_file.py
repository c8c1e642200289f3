"""A ``ByteSource`` over HTTP: exact byte ranges of one file on a hub, counted.

``read(start, end)`` sends exactly ``Range: bytes=start-(end-1)``: never an open-ended
range, never a read-ahead, so reading a weights header costs ``8 + N`` bytes and a
tensor costs its own bytes, whatever the file's size. Requests go through
huggingface_hub's shared session with its headers, so ``HF_TOKEN``, a saved login,
proxies and a custom client factory behave as users of huggingface_hub expect; the
token is in the headers only, never in a message or a log line.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx2
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from hubtree.errors import HubError, TruncatedFileError
from hubtree.ops.hub.retry import RESOLVE, RetryPolicy
from hubtree.ops.hub.token_scope import scoped_token

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")


@dataclass
class Traffic:
    """Requests sent (retries included) and body bytes received; thread-safe, so one can be shared by many files."""

    requests: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def add(self, requests: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes += nbytes


class HttpFile:
    """Random access to one remote file by HTTP range requests.

    Args:
        url: the file's resolve URL (``{endpoint}/{repo_id}/resolve/{revision}/{path}``).
        policy: the retry policy and request budget, shared with the hub that opened the file
            (a file opened on its own gets a policy, and so a budget, of its own).
        size: the file's size when already known (from a listing), saving a HEAD.
        headers: request headers; by default huggingface_hub's, with the user's token only
            where ``token_scope.scoped_token`` allows it for this URL.
        traffic: a counter shared with the hub, on top of this file's own ``requests`` and ``bytes_read``.

    Example::

        source = HttpFile("https://huggingface.co/org/name/resolve/<sha>/model.safetensors")
        header = read_header(source, "model.safetensors")   # two requests, 8 + N bytes
    """

    def __init__(
        self,
        url: str,
        policy: RetryPolicy | None = None,
        size: int | None = None,
        headers: Mapping[str, str] | None = None,
        traffic: Traffic | None = None,
    ):
        self.url = url
        self.policy = policy or RetryPolicy()
        self._size = size
        own = build_hf_headers(token=scoped_token(url)) if headers is None else headers
        self._headers = {**own, "Accept-Encoding": "identity"}
        self._own = Traffic()
        self._sinks = (self._own, traffic) if traffic is not None else (self._own,)

    @property
    def bytes_read(self) -> int:
        """Body bytes received by this file's successful reads."""
        return self._own.bytes

    @property
    def requests(self) -> int:
        """Requests this file sent, retries included."""
        return self._own.requests

    def size(self) -> int:
        """The file's length from one HEAD (redirects followed; ``X-Linked-Size`` wins, as the Hub sets it for LFS files)."""
        if self._size is None:
            self._size = self.policy.run(RESOLVE, self._head, self.url)
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
        """The first ``limit`` bytes, or the whole file if it is shorter, in one request (no HEAD first)."""
        return self._get(0, limit) if limit > 0 else b""

    # -- one request each ------------------------------------------------------
    def _head(self) -> int:
        response = get_session().head(self.url, headers=self._headers, timeout=self.policy.timeout, follow_redirects=True)
        self._count(requests=1 + len(response.history))
        hf_raise_for_status(response)
        for hop in (*response.history, response):
            if "x-linked-size" in hop.headers:
                return int(hop.headers["x-linked-size"])
        if "content-length" not in response.headers:
            raise HubError(f"{self.url}: the hub sent no Content-Length, so the file's size is unknown")
        return int(response.headers["content-length"])

    def _get(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` or fewer at the end of the file, under the retry policy."""
        return self.policy.run(RESOLVE, lambda: self._get_once(start, end), self.url)

    def _get_once(self, start: int, end: int) -> bytes:
        headers = {**self._headers, "Range": f"bytes={start}-{end - 1}"}
        with get_session().stream("GET", self.url, headers=headers, timeout=self.policy.timeout) as response:
            self._count(requests=1 + len(response.history))
            if response.status_code == 416:  # the range starts at or past the end of the file
                self._learn_size(_UNSATISFIED_RANGE, response.headers.get("content-range", ""), group=1)
                return b""
            if response.status_code >= 400:
                response.read()  # error bodies are small; hf_raise_for_status reads the message from them
                hf_raise_for_status(response)
            if response.status_code == 206:
                self._check_range(response.headers.get("content-range", ""), start, end)
            elif not (response.status_code == 200 and start == 0):
                raise HubError(f"{self.url}: answered HTTP {response.status_code} to a range request")
            # A server that ignores Range sends the whole file: keep what was asked, stop reading there.
            data = _read_at_most(response, end - start)
        self._count(nbytes=len(data))
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

    def _count(self, requests: int = 0, nbytes: int = 0) -> None:
        for sink in self._sinks:
            sink.add(requests, nbytes)


def _read_at_most(response: httpx2.Response, limit: int) -> bytes:
    """Up to ``limit`` body bytes; a body cut short by the server raises httpx2.RemoteProtocolError (retried)."""
    chunks, have = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk[: limit - have])
        have += len(chunks[-1])
        if have >= limit:
            break
    return b"".join(chunks)
