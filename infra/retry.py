"""The one retry policy: exponential backoff with full jitter, at least what a server's
Retry-After asks for, bounded by a number of retries and/or a deadline.

Downloads (tasks/common/fetch.py), S3 calls (infra/s3.py) and the services' health checks
(infra/processes.py) all wait with it; their parameters are the named policies below (the
download's come from params.yaml's download section instead, so a user can tune them).
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Retry k (1-based) waits uniform(0, min(backoff_max_s, backoff_s * 2^(k-1))): the "full
    jitter" variant of the AWS architecture blog, which spreads clients that failed together.
    A Retry-After from the server raises the wait to it, within the cap."""

    retries: int | None = 8  # extra attempts after the first; None: until the deadline
    backoff_s: float = 1.0  # s; the base of the exponential
    backoff_max_s: float = 60.0  # s; cap of one wait, Retry-After included
    deadline_s: float | None = None  # s from the first attempt; None: retries alone bound it

    def __post_init__(self) -> None:
        if self.retries is None and self.deadline_s is None:
            raise ValueError("a retry policy needs retries or deadline_s, or it never ends")
        if not 0 < self.backoff_s <= self.backoff_max_s:
            raise ValueError(f"need 0 < backoff_s <= backoff_max_s, got {self.backoff_s} "
                             f"and {self.backoff_max_s}")

    def delay(self, attempt: int, retry_after: float | None = None,
              rng: random.Random | None = None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_s * 2 ** (attempt - 1))
        wait = (rng or random).uniform(0.0, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.backoff_max_s))
        return wait

    def allows(self, attempt: int, started: float, wait: float) -> bool:
        """Whether retry `attempt` may happen after sleeping `wait` s (monotonic `started`)."""
        if self.retries is not None and attempt > self.retries:
            return False
        return self.deadline_s is None or time.monotonic() + wait - started <= self.deadline_s


# A store that is down or restarting (a SeaweedFS restart, a network blip, an S3 503) is waited
# out for MB_S3_OUTAGE_S seconds; botocore's own retries cover only a few seconds.
def s3_outage() -> RetryPolicy:
    return RetryPolicy(retries=None, backoff_s=0.5, backoff_max_s=8.0,
                       deadline_s=float(os.environ.get("MB_S3_OUTAGE_S", "120")))


# A service coming up answers within seconds: poll often at first, never more than 2 s apart,
# until the service's own start timeout.
def health(timeout_s: float) -> RetryPolicy:
    return RetryPolicy(retries=None, backoff_s=0.1, backoff_max_s=2.0, deadline_s=timeout_s)


def retry_after_s(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def call(fn: Callable[[], T], policy: RetryPolicy, transient: Callable[[BaseException], bool],
         retry_after: Callable[[BaseException], float | None] = lambda err: None,
         on_retry: Callable[[int, BaseException, float], None] = lambda k, err, wait: None,
         sleep: Callable[[float], None] = time.sleep) -> T:
    """fn() until it returns; a non-transient error, or one past the policy's retries or
    deadline, is raised as it is. `on_retry(attempt, error, wait)` runs before each wait."""
    started, attempt = time.monotonic(), 0
    while True:
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - `transient` decides; the rest is raised
            attempt += 1
            if not transient(err):
                raise
            wait = policy.delay(attempt, retry_after(err))
            if not policy.allows(attempt, started, wait):
                raise
            on_retry(attempt, err, wait)
            sleep(wait)


def until(check: Callable[[], bool], policy: RetryPolicy,
          give_up: Callable[[], bool] = lambda: False,
          sleep: Callable[[float], None] = time.sleep) -> bool:
    """Poll `check` with the policy's waits until it is true (True), or `give_up` is true or
    the policy is spent (False)."""
    started, attempt = time.monotonic(), 0
    while not give_up():
        if check():
            return True
        attempt += 1
        wait = policy.delay(attempt)
        if not policy.allows(attempt, started, wait):
            return False
        sleep(wait)
    return False

