"""The one retry policy: rate-limit waits, bounded backoff, error mapping and the request budget."""
from __future__ import annotations

import httpx2
import pytest
from huggingface_hub.utils import hf_raise_for_status

from hubtree.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HubUnavailableError,
    RateLimitedError,
    RepoNotFoundError,
    RevisionNotFoundError,
)
from hubtree.ops.hub.retry import API, RESOLVE, RequestBudget, RetryPolicy

URL = "http://127.0.0.1:1/api/models/org/name"


class FakeClock:
    """Time that passes only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def answer(status: int, headers: dict[str, str] | None = None):
    """An attempt that fails as huggingface_hub would on this answer."""

    def attempt():
        hf_raise_for_status(httpx2.Response(status, headers=headers or {}, request=httpx2.Request("GET", URL)))
        return "ok"

    return attempt


def scripted(*steps):
    """An attempt that plays ``steps`` in order: a callable to raise through, or a value to return."""
    queue = list(steps)

    def attempt():
        step = queue.pop(0)
        return step() if callable(step) else step

    return attempt


def policy_on(clock: FakeClock, **kwargs) -> RetryPolicy:
    budget = RequestBudget(clock=clock, sleep=clock.sleep, **kwargs.pop("budget", {}))
    return RetryPolicy(sleep=clock.sleep, budget=budget, seed=0, **kwargs)


def test_rate_limit_waits_as_the_ratelimit_header_says():
    clock = FakeClock()
    policy = policy_on(clock, base_delay_s=1.0)
    limited = answer(429, {"RateLimit": '"api";r=0;t=42', "RateLimit-Policy": '"fixed window";"api";q=1000;w=300'})
    assert policy.run(API, scripted(limited, "ok"), URL) == "ok"
    assert len(clock.sleeps) == 1 and 42 <= clock.sleeps[0] <= 42.5  # the reset, plus at most base/2 of jitter


def test_rate_limit_falls_back_to_retry_after():
    clock = FakeClock()
    policy = policy_on(clock, base_delay_s=1.0)
    assert policy.run(API, scripted(answer(429, {"Retry-After": "7"}), "ok"), URL) == "ok"
    assert 7 <= clock.sleeps[0] <= 7.5


def test_rate_limit_pauses_every_request_of_that_kind_but_not_others():
    clock = FakeClock()
    policy = policy_on(clock)
    policy.run(API, scripted(answer(429, {"Retry-After": "30"}), "ok"), URL)
    clock.now -= 20  # another thread asking 10 s after the 429
    policy.run(API, scripted("ok"), URL)
    assert 20 <= clock.sleeps[-1] <= 21
    waits_before = len(clock.sleeps)
    policy.run(RESOLVE, scripted("ok"), URL)
    assert len(clock.sleeps) == waits_before


def test_server_errors_back_off_exponentially_with_bounded_jitter():
    clock = FakeClock()
    policy = policy_on(clock, base_delay_s=1.0, max_delay_s=4.0, max_retries=5)
    failing = [answer(503)] * 5
    assert policy.run(API, scripted(*failing, "ok"), URL) == "ok"
    for tries, slept in enumerate(clock.sleeps):
        cap = min(4.0, 2.0**tries)
        assert cap / 2 <= slept <= cap
    assert policy.retries == 5 and policy.attempts == 6


def test_timeouts_and_broken_bodies_are_retried():
    clock = FakeClock()
    policy = policy_on(clock)

    def timeout():
        raise httpx2.ReadTimeout("stalled")

    def broken():
        raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")

    assert policy.run(RESOLVE, scripted(timeout, broken, "ok"), URL) == "ok"
    assert policy.retries == 2


def test_exhausted_retries_raise_rate_limited_or_unavailable():
    clock = FakeClock()
    with pytest.raises(RateLimitedError, match="lower the request budget"):
        policy_on(clock, max_retries=2).run(API, scripted(*[answer(429, {"Retry-After": "1"})] * 3), URL)
    with pytest.raises(HubUnavailableError, match="HTTP 500 on every one of 3 attempts"):
        policy_on(clock, max_retries=2).run(API, scripted(*[answer(500)] * 3), URL)


def test_a_reset_longer_than_the_policy_allows_is_a_refusal():
    clock = FakeClock()
    policy = policy_on(clock, max_rate_limit_wait_s=60)
    with pytest.raises(RateLimitedError):
        policy.run(API, scripted(answer(429, {"Retry-After": "3600"}), "ok"), URL)
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("code", "status", "ours"),
    [
        ("RepoNotFound", 404, RepoNotFoundError),
        ("RevisionNotFound", 404, RevisionNotFoundError),
        ("EntryNotFound", 404, EntryNotFoundError),
        ("GatedRepo", 401, GatedRepoError),
    ],
)
def test_hub_refusals_map_to_our_errors_without_retrying(code, status, ours):
    clock = FakeClock()
    policy = policy_on(clock)
    with pytest.raises(ours):
        policy.run(API, answer(status, {"X-Error-Code": code}), URL)
    assert policy.attempts == 1 and clock.sleeps == []


def test_budget_keeps_every_window_under_the_limit():
    clock = FakeClock()
    budget = RequestBudget(limits={API: 3}, window=10.0, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(7):
        budget.acquire(API)
        sent.append(clock.now)
    assert sent == [1000.0, 1000.0, 1000.0, 1010.0, 1010.0, 1010.0, 1020.0]
    assert budget.waited_s == 20.0
    for i, start in enumerate(sent):  # any 10 s window holds at most 3 requests
        assert sum(start <= t < start + 10 for t in sent[i:]) <= 3


def test_budget_counts_kinds_separately_and_leaves_unlisted_kinds_alone():
    clock = FakeClock()
    budget = RequestBudget(limits={API: 1}, window=60.0, clock=clock, sleep=clock.sleep)
    budget.acquire(API)
    budget.acquire(RESOLVE)
    budget.acquire("cdn")
    assert clock.sleeps == []
    budget.acquire(API)
    assert clock.sleeps == [60.0]


def test_default_budget_is_the_free_tier():
    budget = RequestBudget()
    assert budget.limits == {API: 1000, RESOLVE: 5000} and budget.window == 300.0
