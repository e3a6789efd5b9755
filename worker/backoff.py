"""Exponential backoff with full jitter (tenacity's), for throttled calls and failing batches."""

from __future__ import annotations

import tenacity

MAX_BACKOFF_S = 20.0
"""Longest wait, in seconds, between retries of a throttled call or a failing handler."""
FIRST_BACKOFF_S = 0.1
"""Scale of the first retry's wait, in seconds (the wait is random up to 2^attempt times this)."""

_wait = tenacity.wait_random_exponential(multiplier=FIRST_BACKOFF_S, max=MAX_BACKOFF_S)


def backoff_s(attempt: int) -> float:
    """Seconds to wait before the ``attempt``-th retry (1-based): random in [0, min(max, 0.1 * 2^attempt)]."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(attempt, 1)
    return float(_wait(state))
