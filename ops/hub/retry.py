"""The one retry policy: every HTTP request hubtree sends to a hub goes through ``RetryPolicy.run``.

A crawl sends tens of thousands of small requests (listing pages, resolves, range
reads), so two things matter more than raw speed:

* it must never provoke the hub's rate limit. ``RequestBudget`` keeps each bucket
  (``api``: listings and model infos; ``resolve``: every ``/resolve/`` URL) under the
  tier's quota per window (``TIERS``: the Hub's documented anonymous, free and PRO
  limits), and under what the hub itself reports: the ``RateLimit`` header of every
  response (``"api";r=<remaining>;t=<reset s>``) and ``RateLimit-Policy``
  (``"fixed window";"api";q=<quota>;w=<window s>``) update the bucket, so a crawl
  sharing a token with other tools, or on a lower tier than set, still waits for the
  reset instead of meeting a 429. Requests to the CDN a resolve redirects to are in no
  bucket (kind ``cdn``), as on the Hub;
* what still fails transiently is retried, and what fails for good is raised at once
  as the precise hubtree error. A 429 waits as long as the hub's ``RateLimit``
  or ``Retry-After`` header says, and pauses every request of that bucket, not just
  the one that got it; 5xx answers, timeouts and bodies cut short back off
  exponentially with jitter, up to a bound. Retries exhausted become
  ``RateLimitedError`` or ``HubUnavailableError``; 404s and gated repos become the
  errors a user can act on.

Workers of one crawl share one budget: ``shared_budget`` puts it in a named Ray actor
per hub (see ``SharedBudget``), so the quotas are the hub's, not a guess per process.
"""
from __future__ import annotations

import hashlib
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol, TypeVar

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
RESOLVE = "resolve"  # /{repo}/resolve/... URLs, HEADs included
CDN = "cdn"  # the signed URLs a resolve redirects to: in no bucket
# The bucket names the Hub writes in its RateLimit headers, to ours.
HUB_BUCKETS = {"api": API, "resolvers": RESOLVE}

# The Hub's documented quotas per 5-minute fixed window (https://huggingface.co/docs/hub/rate-limits, Sept. 2025).
TIERS = {
    "anonymous": {API: 500, RESOLVE: 3000},
    "free": {API: 1000, RESOLVE: 5000},
    "pro": {API: 2500, RESOLVE: 12000},
}
FREE_TIER = TIERS["free"]
FREE_TIER_WINDOW_S = 300.0

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# Nothing listens at the address: retried briefly (a hub restarting), then said as "refused".
REFUSED_RETRIES = 2
# A timeout, a dropped connection, or a body that ends before its Content-Length.
TRANSIENT_ERRORS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)


class Budget(Protocol):
    """What ``RetryPolicy`` needs of a budget: ``RequestBudget`` in one process, ``SharedBudget`` across workers."""

    waited_s: float

    def acquire(self, kind: str) -> None: ...

    def pause(self, kind: str, seconds: float) -> None: ...

    def observe(self, kind: str, remaining: int, reset_s: float, quota: int | None, window_s: float | None) -> None: ...


@dataclass
class _HubState:
    """What the hub last said of one bucket: requests left, and when its window resets (our clock)."""

    remaining: int
    reset_at: float


@dataclass
class RequestBudget:
    """Requests per bucket: at most ``limits[kind]`` in any ``window`` seconds, and no more than the hub says are left.

    Our own count is a sliding window, stricter than the hub's fixed one, so a crawl
    that hears nothing from the hub still never trips its limit. Once a response has
    carried ``RateLimit`` headers (``observe``), the hub's count rules too: no request
    leaves while the hub's window has none left, until its reset. ``pause`` blocks a
    bucket until a time the hub named in a 429, for every thread sharing the budget.
    ``clock`` and ``sleep`` are injectable so tests run on a fake clock.
    """

    limits: dict[str, int] = field(default_factory=lambda: dict(FREE_TIER))
    window: float = FREE_TIER_WINDOW_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    waited_s: float = 0.0  # total time spent waiting for quota or for a hub-named reset
    _sent: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _hub: dict[str, _HubState] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def acquire(self, kind: str) -> None:
        """Wait until a request of ``kind`` fits the budget, then count it as sent."""
        while (wait := self.try_acquire(kind)) > 0:
            self.waited_s += wait
            self.sleep(wait)

    def pause(self, kind: str, seconds: float) -> None:
        """No request of ``kind`` before ``seconds`` from now: the hub said so in a 429, which overrides what it said before."""
        with self._lock:
            self._hub[kind] = _HubState(0, self.clock() + seconds)

    def observe(self, kind: str, remaining: int, reset_s: float, quota: int | None, window_s: float | None) -> None:
        """What a response's ``RateLimit`` headers said: ``remaining`` requests until the window resets in ``reset_s``.

        Answers arrive out of order: within one window the smallest count wins (requests
        counted here but not yet by the hub stay counted); a later reset is a new window.
        ``quota`` and ``window_s`` (the policy) are informative: our own limits stay as set.
        """
        with self._lock:
            now = self.clock()
            reset_at = now + reset_s
            state = self._hub.get(kind)
            if state is None or reset_at > state.reset_at + 1.0 or state.reset_at <= now:
                self._hub[kind] = _HubState(remaining, reset_at)
            else:
                state.remaining = min(state.remaining, remaining)
                state.reset_at = max(state.reset_at, reset_at)

    def try_acquire(self, kind: str) -> float:
        """0 if a request of ``kind`` was counted, else how long to wait before asking again."""
        with self._lock:
            now = self.clock()
            state = self._hub.get(kind)
            if state is not None and state.reset_at <= now:
                state = None  # the hub's window has reset: its next answer tells the new count
            if state is not None and state.remaining <= 0:
                return state.reset_at - now
            limit = self.limits.get(kind)
            if limit is not None:
                sent = self._sent.setdefault(kind, deque())
                while sent and sent[0] <= now - self.window:
                    sent.popleft()
                if len(sent) >= limit:
                    return sent[0] + self.window - now
                sent.append(now)
            if state is not None:
                state.remaining -= 1
            return 0.0


def tier_limits(tier: str) -> dict[str, int]:
    """The quotas of a tier by name (``anonymous``, ``free``, ``pro``); a clear error for another name."""
    if tier not in TIERS:
        raise HubError(f"unknown hub tier {tier!r}; use one of {', '.join(TIERS)}")
    return dict(TIERS[tier])


def observe_response(budget: Budget, headers: Mapping[str, str]) -> None:
    """Feed a response's ``RateLimit`` / ``RateLimit-Policy`` headers (if any) to the budget of their bucket."""
    info = parse_ratelimit_headers(headers)
    if info is not None and info.resource_type in HUB_BUCKETS:
        budget.observe(HUB_BUCKETS[info.resource_type], info.remaining, info.reset_in_seconds, info.limit, info.window_seconds)


class SharedBudget:
    """A ``RequestBudget`` held by one named Ray actor, so every worker of every flow on a hub spends the same quotas.

    ``acquire`` asks the actor for a slot and sleeps here for as long as it says (the
    actor never blocks, so one waiting worker does not hold the others); ``observe``
    and ``pause`` are sent without waiting for an answer.
    """

    def __init__(self, actor, sleep: Callable[[float], None] = time.sleep):
        self._actor = actor
        self._sleep = sleep
        self.waited_s = 0.0

    def acquire(self, kind: str) -> None:
        import ray

        while (wait := ray.get(self._actor.try_acquire.remote(kind))) > 0:
            self.waited_s += wait
            self._sleep(wait)

    def pause(self, kind: str, seconds: float) -> None:
        self._actor.pause.remote(kind, seconds)

    def observe(self, kind: str, remaining: int, reset_s: float, quota: int | None, window_s: float | None) -> None:
        self._actor.observe.remote(kind, remaining, reset_s, quota, window_s)


def shared_budget(endpoint: str, limits: dict[str, int], window: float = FREE_TIER_WINDOW_S) -> SharedBudget:
    """The budget of ``endpoint`` shared by this Ray cluster: one detached actor per hub, created by the first to ask.

    Detached, so it outlives the worker that happened to create it; its limits are the
    first creator's (every worker of a run reads the same settings).
    """
    import ray

    actor_class = ray.remote(num_cpus=0, max_concurrency=1)(RequestBudget)
    name = "hubtree-budget-" + hashlib.sha1(endpoint.encode()).hexdigest()[:16]
    actor = actor_class.options(name=name, namespace="hubtree", get_if_exists=True, lifetime="detached").remote(limits=limits, window=window)
    return SharedBudget(actor)


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
    budget: Budget = field(default_factory=RequestBudget)
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
                if err.response is not None and status != 429:  # a 429's reset becomes a pause below
                    observe_response(self.budget, err.response.headers)
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

    def observe(self, response: httpx2.Response) -> None:
        """Update the budget from a response's rate-limit headers; every request's answer passes here."""
        observe_response(self.budget, response.headers)

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
