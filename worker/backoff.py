"""Backoff for the worker's retries.

- :func:`backoff_s`: exponential backoff with full jitter, for callers that schedule their own retry
  without sleeping (a throttled read, a failing batch: the consumer's step returns the delay).
- :func:`startup_retrying`: a tenacity retry policy for calls that must get through before the worker
  can start (DescribeTable/DescribeStream, the first Redis ping): the same backoff, bounded by
  :data:`STARTUP_RETRY_S` in all, each retry logged.
"""

from __future__ import annotations

import logging
import os
import random

import tenacity

MAX_BACKOFF_S = 20.0
"""Longest wait, in seconds, between retries of a throttled call or a failing handler."""
FIRST_BACKOFF_S = 0.1
"""Longest wait, in seconds, before the first retry; each later retry's longest wait doubles
(the wait before the ``n``-th retry is random up to ``FIRST_BACKOFF_S * 2^(n-1)``, at most MAX_BACKOFF_S)."""

STARTUP_RETRY_S = float(os.environ.get("SHARDLEASE_TEST_STARTUP_RETRY_S") or 60.0)
"""Seconds a starting worker keeps retrying a throttled or failing DescribeTable/DescribeStream, or a Redis
it cannot reach yet, before it gives up.  Read at each call; tests shorten it (in worker processes they
start, through SHARDLEASE_TEST_STARTUP_RETRY_S: a test hook, not a setting)."""
STARTUP_FIRST_BACKOFF_S = 0.8
"""Longest wait before the first retry at start-up (many pods starting at once share the account's
10 DescribeStream calls per second, so start-up retries begin further apart)."""


def backoff_s(attempt: int) -> float:
    """Seconds to wait before the ``attempt``-th retry (1-based): random in
    [0, min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2^(attempt-1))] ("full jitter")."""
    ceiling = FIRST_BACKOFF_S * 2.0 ** (max(attempt, 1) - 1)
    return random.uniform(0.0, min(MAX_BACKOFF_S, ceiling))


def startup_retrying(
    what: str, retry_on: type[BaseException] | tuple[type[BaseException], ...], log: logging.Logger,
    *, retry_if: tenacity.retry_base | None = None, within_s: float | None = None,
) -> tenacity.Retrying:
    """A tenacity policy for a call at start-up: retried while it raises ``retry_on`` (and ``retry_if``
    agrees), waiting ``random(0, min(MAX_BACKOFF_S, STARTUP_FIRST_BACKOFF_S * 2^(n-1)))`` before the
    ``n``-th retry, until the next wait would end past ``within_s`` (default STARTUP_RETRY_S); then the
    last error is raised.
    Each retry is logged at INFO with ``what``, the error and the wait."""

    def note(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info("%s: %s; retrying in %.1f s (attempt %d)", what, str(error) or type(error).__name__, wait,
                 state.attempt_number)

    retry: tenacity.retry_base = tenacity.retry_if_exception_type(retry_on)
    if retry_if is not None:
        retry = retry & retry_if
    return tenacity.Retrying(
        retry=retry,
        wait=tenacity.wait_random_exponential(multiplier=STARTUP_FIRST_BACKOFF_S, max=MAX_BACKOFF_S),
        stop=tenacity.stop_before_delay(STARTUP_RETRY_S if within_s is None else within_s),
        before_sleep=note,
        reraise=True,
    )
