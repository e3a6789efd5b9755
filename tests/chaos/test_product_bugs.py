"""Regression tests for product bugs the chaos tests found.

Scheduler: a shard re-acquired while its previous consumer's step was still running was never
stepped again: ``_run_step`` re-pushed the *old* consumer, overwriting the shard's due time, and
the dispatcher then dropped both heap entries; the lease kept being renewed while the shard
stalled.  Seen when Redis restarted without persistence (every lease lost, then re-acquired by the
same worker while a slow batch was in flight).  The scheduler now keeps due times per consumer and
runs one step at a time per shard, so the new consumer starts once the old one's last step ends.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.chaos.harness import Chaos, chaos_seed
from worker.consumer import StopReason
from worker.scheduler import Scheduler


class FakeConsumer:
    """The parts of ShardConsumer the scheduler uses; the first step blocks until released."""

    def __init__(self, shard_id: str, block: threading.Event | None = None) -> None:
        self.shard_id = shard_id
        self.block = block
        self.steps = 0
        self.stepping = threading.Event()
        self.finished = False
        self.stop_reason: str | None = None

    def request_stop(self, reason: str, handoff_to: str = "", detail: str = "") -> None:
        self.stop_reason = reason

    def step(self) -> float | None:
        self.steps += 1
        self.stepping.set()
        if self.stop_reason is not None and self.steps > 1:
            self.finished = True
            return None
        if self.block is not None:
            self.block.wait(5)
        return 0.05


def test_scheduler_steps_a_consumer_added_while_the_previous_one_is_mid_step() -> None:
    scheduler = Scheduler(threads=4)
    try:
        release = threading.Event()
        old = FakeConsumer("shard-1", block=release)
        scheduler.add(old)  # type: ignore[arg-type]
        assert old.stepping.wait(2)
        # The lease is lost (the worker stops the shard) and re-acquired at the same heartbeat.
        assert scheduler.stop("shard-1", StopReason.LOST)
        new = FakeConsumer("shard-1")
        scheduler.add(new)  # type: ignore[arg-type]
        release.set()  # the old consumer's batch in flight ends
        deadline = time.monotonic() + 2
        while new.steps == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert new.steps > 0, "the re-acquired shard's consumer was never stepped"
    finally:
        scheduler.close()


@pytest.mark.e2e
def test_worker_keeps_consuming_after_redis_restarts_empty_mid_batch(tmp_path: Path) -> None:
    """One worker whose every batch takes 2 s; Redis restarts empty: the worker loses every lease and
    takes them all back while the old batches are in flight.  Every record must still be handled."""
    seed = chaos_seed()
    c = Chaos(tmp_path, seed, "bug-readd", persistent=False, workers=1,
              handler_env={"CHAOS_SLOW_P": "1", "CHAOS_SLOW_S": "3"}, writes_per_s=20)
    with c:
        c.sleep_until(6.0)
        if os.environ.get("CHAOS_BUG_BASELINE") != "1":  # =1: the same run without the fault passes
            c.restart_redis(down_s=0.05)
        c.sleep_until(9.0)
        c.drain_timeout_s = 10.0
        c.finish(group_reset=True)
