"""The one retry policy: every HTTP request hubtree sends to a hub goes through ``RetryPolicy.run``.

A crawl sends tens of thousands of small requests (listing pages, model infos, two
range reads per weights header), so two things matter more than raw speed:

* it must never provoke the hub's rate limit. ``RequestBudget`` keeps each kind of
  request under its own per-window quota (the Hub's free tier by default: 1,000 API
  calls and 5,000 file resolves per 5 minutes), waiting when the quota is used up;
* what still fails transiently is retried, and what fails for good is raised at once
  as the precise hubtree error. A 429 waits as long as the hub's ``RateLimit``
  (``"api";r=0;t=N``) or ``Retry-After`` header says, and pauses every request of that
  kind, not just the one that got it; 5xx answers, timeouts and bodies cut short
  (the connection closed before ``Content-Length`` bytes) back off exponentially with
  jitter, up to a bound. Retries exhausted become ``RateLimitedError`` or
  ``HubUnavailableError``; 404s and gated repos become the errors a user can act on.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import httpx2
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import parse_ratelimit_headers

from hubtree.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HubError,
    HubUnavailableError,
    RateLimitedError,
    RepoNotFoundError,
    RevisionNotFoundError,
)

T = TypeVar("T")

API = "api"  # /api/... calls: listings, model infos
RESOLVE = "resolve"  # /{repo}/resolve/... file reads, HEADs included

# The Hub's free tier, per 5-minute window: https://huggingface.co/docs/hub/rate-limits
FREE_TIER = {API: 1000, RESOLVE: 5000}
FREE_TIER_WINDOW_S = 300.0

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Nothing listens at the address: retried briefly (a hub restarting), then said as "refused".
REFUSED_RETRIES = 2
# A timeout, a dropped connection, or a body that ends before its Content-Length.
TRANSIENT_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


@dataclass
class RequestBudget:
    """At most ``limits[kind]`` requests of each kind in any ``window`` seconds (a sliding window).

    A sliding window is stricter than the hub's fixed one, so staying inside it can
    never trip the hub's limit, whatever the phase of its window. ``pause`` blocks a
    kind until a time the hub named in a 429, for every thread sharing the budget.
    ``clock`` and ``sleep`` are injectable so tests run on a fake clock.
    """

    limits: dict[str, int] = field(default_factory=lambda: dict(FREE_TIER))
    window: float = FREE_TIER_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    waited_s: float = 0.0  # total time spent waiting for quota or for a hub-named reset
    _sent: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _paused_until: dict[str, float] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def acquire(self, kind: str) -> None:
        """Wait until a request of ``kind`` fits the budget, then count it as sent."""
        while (wait := self._try_acquire(kind)) > 0:
            self.waited_s += wait
            self.sleep(wait)

    def pause(self, kind: str, seconds: float) -> None:
        """No request of ``kind`` before ``seconds`` from now (the hub said so)."""
        with self._lock:
            until = self.clock() + seconds
            self._paused_until[kind] = max(self._paused_until.get(kind, until), until)

    def _try_acquire(self, kind: str) -> float:
        """0 if the request was counted, else how long to wait before asking again."""
        with self._lock:
            now = self.clock()
            if (paused := self._paused_until.get(kind, 0.0) - now) > 0:
                return paused
            limit = self.limits.get(kind)
            if limit is None:
                return 0.0
            sent = self._sent.setdefault(kind, deque())
            while sent and sent[0] <= now - self.window:
                sent.popleft()
            if len(sent) < limit:
                sent.append(now)
                return 0.0
            return sent[0] + self.window - now


@dataclass
class RetryPolicy:
    """How hubtree treats a hub: budget, timeout, retries.

    Share one instance between every client of the same hub (threads included): the
    budget only protects what it counts. ``HttpHub`` hands its policy to the files it opens.

    Example::

        policy = RetryPolicy(timeout=10)
        response = policy.run(RESOLVE, lambda: fetch(url), what=url)
    """

    max_retries: int = 6
    base_delay_s: float = 1.0  # first backoff; doubles per retry, with jitter
    max_delay_s: float = 60.0
    max_rate_limit_wait_s: float = 600.0  # a hub asking for longer than this is treated as a refusal
    timeout: float = 30.0  # seconds per request (connect, and between bytes while reading)
    budget: RequestBudget = field(default_factory=RequestBudget)
    sleep: Callable[[float], None] = time.sleep
    seed: int | None = None  # for reproducible jitter in tests
    attempts: int = field(default=0, init=False)  # requests sent, retries included
    retries: int = field(default=0, init=False)
    _rng: random.Random = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def run(self, kind: str, attempt: Callable[[], T], what: str) -> T:
        """``attempt()`` under the budget, retried on transient failures.

        ``attempt`` sends one request and returns its result, raising
        huggingface_hub's ``HfHubHTTPError`` (via ``hf_raise_for_status``) on an error
        status. ``what`` names the request (a URL, never a token) in error messages.

        Raises:
            RateLimitedError: the hub kept answering 429, or asked to wait too long.
            HubUnavailableError: 5xx, timeouts or broken bodies on every attempt.
            RepoNotFoundError, GatedRepoError, RevisionNotFoundError, EntryNotFoundError, HubError:
                a permanent refusal, raised on the first answer.
        """
        for tries in range(self.max_retries + 1):
            self.budget.acquire(kind)
            self.attempts += 1
            try:
                return attempt()
            except hf_errors.HfHubHTTPError as err:
                status = err.response.status_code if err.response is not None else None
                if status not in RETRY_STATUSES:
                    raise _permanent(err, what) from err
                failure: Exception = err
                wait = self._rate_limit_wait(err.response) if status == 429 else None
            except httpx2.ConnectError as err:
                if tries >= min(self.max_retries, REFUSED_RETRIES):
                    raise HubUnavailableError(
                        f"{what}: connection refused ({err}); is the hub running at that address? Check --hub or HF_ENDPOINT"
                    ) from err
                failure, wait = err, None
            except TRANSIENT_ERRORS as err:
                failure, wait = err, None
            if tries == self.max_retries or (wait is not None and wait > self.max_rate_limit_wait_s):
                break
            self.retries += 1
            if wait is None:
                self.sleep(self._backoff(tries))
            else:
                self.budget.pause(kind, wait)  # the next acquire, here or in another thread, waits it out
        raise _exhausted(failure, what, self.max_retries) from failure

    def _backoff(self, tries: int) -> float:
        """Exponential backoff with "equal jitter": between half and all of ``base * 2**tries``, capped."""
        delay = min(self.max_delay_s, self.base_delay_s * 2**tries)
        return delay / 2 + self._rng.uniform(0, delay / 2)

    def _rate_limit_wait(self, response: httpx2.Response) -> float | None:
        """Seconds the hub asked for: ``RateLimit: "api";r=0;t=N``, else ``Retry-After: N``; None if neither."""
        info = parse_ratelimit_headers(response.headers)
        if info is not None and info.remaining == 0:
            seconds: float = info.reset_in_seconds
        elif (retry_after := response.headers.get("retry-after", "").strip()).isdigit():
            seconds = int(retry_after)
        else:
            return None
        # A little jitter so that threads released together do not hit the hub in one burst.
        return seconds + self._rng.uniform(0, self.base_delay_s / 2)


def _permanent(err: hf_errors.HfHubHTTPError, what: str) -> HubError:
    """huggingface_hub's precise error classes to ours (the order matters: GatedRepoError is a RepositoryNotFoundError)."""
    if isinstance(err, hf_errors.GatedRepoError):
        return GatedRepoError(f"{what}: the repo is gated; accept its terms on the hub and set HF_TOKEN to a token with access")
    if isinstance(err, hf_errors.RepositoryNotFoundError):
        return RepoNotFoundError(f"{what}: repository not found (or private: set HF_TOKEN to a token with access)")
    if isinstance(err, hf_errors.RevisionNotFoundError):
        return RevisionNotFoundError(f"{what}: revision not found; the repo may have been rewritten, list it again")
    if isinstance(err, hf_errors.RemoteEntryNotFoundError):
        return EntryNotFoundError(f"{what}: no such file at this revision")
    status = err.response.status_code if err.response is not None else "no response"
    server_message = (err.server_message or "").strip()
    return HubError(f"{what}: HTTP {status}" + (f" ({server_message})" if server_message else ""))


def _exhausted(failure: Exception, what: str, retries: int) -> HubError:
    response = getattr(failure, "response", None)
    if response is not None and response.status_code == 429:
        return RateLimitedError(
            f"{what}: rate limited (HTTP 429) beyond what the retry policy waits for; lower the request budget and rerun"
        )
    reason = f"HTTP {response.status_code}" if response is not None else type(failure).__name__
    return HubUnavailableError(f"{what}: {reason} on every one of {retries + 1} attempts; the hub is down or overloaded, rerun later")
