"""The one retry policy (infra/retry.py): full-jitter exponential waits within the cap, at least a
server's Retry-After, bounded by retries or a deadline; transient errors only."""

from __future__ import annotations

import email.utils
import random
import time

import pytest

from infra import retry
from infra.retry import RetryPolicy


def test_waits_are_exponential_with_full_jitter_and_capped():
    policy = RetryPolicy(retries=10, backoff_s=1.0, backoff_max_s=8.0)
    rng = random.Random(0)
    waits = [[policy.delay(k, rng=rng) for _ in range(200)] for k in (1, 2, 3, 4, 5)]
    assert [max(w) <= c for w, c in zip(waits, (1, 2, 4, 8, 8))] == [True] * 5
    assert max(waits[3]) > 4.0 and min(waits[3]) < 1.0  # spread over [0, ceiling]
    assert policy.delay(1, retry_after=3.0) >= 3.0  # the server's wish, within the cap
    assert policy.delay(1, retry_after=30.0) == 8.0


def test_retry_after_reads_seconds_and_http_dates():
    assert retry.retry_after_s("7") == 7.0
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28.0 <= retry.retry_after_s(later) <= 30.0
    assert retry.retry_after_s(None) is None and retry.retry_after_s("soon") is None


class Flaky:
    """Fails `times` times with `error`, then returns "ok"."""

    def __init__(self, times: int, error: Exception) -> None:
        self.times, self.error, self.calls = times, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return "ok"


def test_call_retries_transient_errors_then_returns():
    waits: list[float] = []
    fn = Flaky(3, ConnectionError("reset"))
    policy = RetryPolicy(retries=3, backoff_s=0.5, backoff_max_s=4.0)
    assert retry.call(fn, policy, lambda e: isinstance(e, ConnectionError),
                      sleep=waits.append) == "ok"
    assert fn.calls == 4 and len(waits) == 3
    assert all(0 <= w <= c for w, c in zip(waits, (0.5, 1.0, 2.0)))


def test_call_gives_up_after_its_retries_and_never_retries_a_refusal():
    waits: list[float] = []
    fn = Flaky(5, ConnectionError("reset"))
    with pytest.raises(ConnectionError):
        retry.call(fn, RetryPolicy(retries=2, backoff_s=0.01), lambda e: True, sleep=waits.append)
    assert fn.calls == 3 and len(waits) == 2
    refused = Flaky(5, PermissionError("denied"))
    with pytest.raises(PermissionError):
        retry.call(refused, RetryPolicy(retries=9, backoff_s=0.01),
                   lambda e: isinstance(e, ConnectionError), sleep=waits.append)
    assert refused.calls == 1 and len(waits) == 2


def test_call_honours_retry_after_and_a_deadline():
    waits: list[float] = []
    fn = Flaky(1, ConnectionError("busy"))
    policy = RetryPolicy(retries=None, backoff_s=0.01, backoff_max_s=5.0, deadline_s=10.0)
    assert retry.call(fn, policy, lambda e: True, retry_after=lambda e: 2.0,
                      sleep=waits.append) == "ok"
    assert waits == [pytest.approx(2.0)]
    # A wait that would end past the deadline is not taken: the error is raised instead.
    late = Flaky(1, ConnectionError("busy"))
    short = RetryPolicy(retries=None, backoff_s=0.01, backoff_max_s=5.0, deadline_s=1.0)
    with pytest.raises(ConnectionError):
        retry.call(late, short, lambda e: True, retry_after=lambda e: 3.0, sleep=waits.append)
    assert late.calls == 1


def test_until_polls_until_true_or_gives_up():
    answers = iter([False, False, True])
    waits: list[float] = []
    assert retry.until(lambda: next(answers), retry.health(30.0), sleep=waits.append)
    assert len(waits) == 2 and all(w <= 2.0 for w in waits)
    assert not retry.until(lambda: False, retry.health(30.0), give_up=lambda: True)
    started = time.monotonic()
    assert not retry.until(lambda: False, RetryPolicy(None, 0.01, 0.02, deadline_s=0.2))
    assert time.monotonic() - started < 1.0


def test_a_policy_that_could_never_end_is_refused():
    with pytest.raises(ValueError, match="never ends"):
        RetryPolicy(retries=None)
    with pytest.raises(ValueError, match="backoff_s <= backoff_max_s"):
        RetryPolicy(backoff_s=10.0, backoff_max_s=1.0)
