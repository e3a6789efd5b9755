"""The worker's start-up path: what it waits for and what it imports (no timings: see bench/worker_throughput.py)."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from worker import runtime
from worker.runtime import WAKE_MIN_GAP_S, Worker


def _coordinator() -> Any:
    """A Worker with only what ``_wait_until_next_tick`` reads (the rest of it needs AWS and Redis)."""
    worker = Worker.__new__(Worker)
    worker.config = SimpleNamespace(renew_interval_s=60.0)
    worker.manager = SimpleNamespace(waiting_for_handoff=False)
    worker._stopping = threading.Event()
    worker._wake = threading.Event()
    worker._woken = False
    return worker


def test_the_first_wake_up_triggers_its_heartbeat_at_once_later_ones_wait_the_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a new group the leader's first listing wakes the coordinator, and the first leases wait for that
    # heartbeat: it goes at once.  Later wake-ups still wait WAKE_MIN_GAP_S, so a burst shares a heartbeat.
    sleeps: list[float] = []
    monkeypatch.setattr(runtime.time, "sleep", sleeps.append)
    worker = _coordinator()
    for expected in ([], [WAKE_MIN_GAP_S], [WAKE_MIN_GAP_S, WAKE_MIN_GAP_S]):
        worker._wake.set()
        worker._wait_until_next_tick()  # returns at once: the wake-up is set (renew_interval_s is 60 s)
        assert sleeps == expected
        assert not worker._wake.is_set()
