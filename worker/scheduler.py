"""Scheduler: runs the steps of many shard consumers on a bounded thread pool.

Each consumer has at most one step running at a time, and so has each shard: a
consumer added for a shard whose previous consumer is still finishing (a lease
lost and re-acquired at once) waits for that one's last step.  Between steps a
consumer waits in a heap keyed by when it is due.  Hundreds of shards share
``threads`` threads: an idle shard costs a heap entry, not a thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from worker.consumer import ShardConsumer

log = logging.getLogger("shardlease.scheduler")

DEFAULT_THREADS = 32
"""Threads that run consumer steps (GetRecords, the handler, the checkpoint) in one process."""
ASYNC_HANDLER_THREADS = 128
"""Step threads with an async handler: a step then mostly waits for its coroutine on the event loop, not
for the CPU, so up to this many shards' batches can wait on I/O at once (a sync handler keeps 32)."""

STEP_DRAIN_S = 10.0
"""Seconds ``close(wait=True)`` waits for the steps running outside a handler call (a Redis or AWS call, each
bounded by its timeout) to end."""

_RUNNING = float("inf")
"""The due time of a consumer whose step is running: it is pushed again when the step returns."""


class Scheduler:
    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard")
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, ShardConsumer]] = []
        self._due: dict[ShardConsumer, float] = {}
        """Every consumer not finished yet (current or retiring) -> when its next step is due."""
        self._current: dict[str, ShardConsumer] = {}
        """The consumer of each shard that stop() and get() address."""
        self._running: set[str] = set()
        """Shards with a step in flight."""
        self._counter = itertools.count()
        self._closed = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="scheduler", daemon=True)
        self._dispatcher.start()

    # -- what runs ---------------------------------------------------------------------------

    def add(self, consumer: ShardConsumer) -> None:
        """Run a consumer; a previous consumer of the same shard finishes its last step first."""
        with self._cv:
            self._current[consumer.shard_id] = consumer
            self._push(consumer, time.monotonic())

    def get(self, shard_id: str) -> ShardConsumer | None:
        with self._cv:
            return self._current.get(shard_id)

    def shard_ids(self) -> list[str]:
        """Shards with a consumer not finished yet (current or retiring)."""
        with self._cv:
            return sorted({c.shard_id for c in self._due})

    def consumers(self) -> list[ShardConsumer]:
        """Every consumer not finished yet (current or retiring)."""
        with self._cv:
            return list(self._due)

    def in_flight(self) -> set[str]:
        """Shards with a step running now (a GetRecords, handler call or checkpoint in flight)."""
        with self._cv:
            return set(self._running)

    def in_handler_calls(self) -> set[str]:
        """Shards with a step running inside a handler call or hook (user code, which may never return)."""
        with self._cv:
            return self._in_handler_calls()

    def _in_handler_calls(self) -> set[str]:
        return {c.shard_id for c, due in self._due.items() if due == _RUNNING and c.calls.busy()}

    def stop(self, shard_id: str, reason: str, handoff_to: str = "", detail: str = "") -> bool:
        """Ask a shard's consumer to stop after its step in flight; False if it is not running here."""
        with self._cv:
            consumer = self._current.get(shard_id)
            if consumer is None:
                return False
            consumer.request_stop(reason, handoff_to, detail)
            if self._due.get(consumer) != _RUNNING:  # a running step sees the stop when it returns
                self._push(consumer, time.monotonic())
            return True

    def pull_forward(self, due: float, select: Callable[[ShardConsumer], bool]) -> int:
        """Move the next step of each waiting consumer that ``select`` picks to ``due`` (monotonic s) if it
        was due later.  Never delays a step and never touches a running one; returns how many moved."""
        moved = 0
        with self._cv:
            for consumer, at in list(self._due.items()):
                if at != _RUNNING and at > due and self._current.get(consumer.shard_id) is consumer \
                        and select(consumer):
                    self._push(consumer, due)
                    moved += 1
        return moved

    def stop_consumer(self, consumer: ShardConsumer, reason: str, detail: str = "") -> None:
        """Ask this consumer (current or retiring: not whichever is now current for its shard) to stop after its
        step in flight; a waiting one runs its stopping step at once instead of at its next poll (up to
        ``--idle-poll-interval`` away)."""
        with self._cv:
            consumer.request_stop(reason, "", detail)
            if consumer in self._due and self._due[consumer] != _RUNNING:
                self._push(consumer, time.monotonic())

    def stop_all(self, reason: str) -> None:
        with self._cv:
            consumers = list(self._due)
        for consumer in consumers:
            consumer.request_stop(reason)
        with self._cv:
            for consumer in consumers:
                if consumer in self._due and self._due[consumer] != _RUNNING:
                    self._push(consumer, time.monotonic())

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every consumer has finished; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._due:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
        return True

    def close(self, *, wait: bool = False) -> set[str]:
        """Stop dispatching (steps not started yet are dropped); returns the shards whose step is still
        running.  ``wait``: join the dispatcher, and the pool's threads unless a step is still running (a
        hung handler call would block for ever)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if wait:
            self._dispatcher.join()
            # A step outside a handler call (retrying a release while Redis is down) ends on its own: wait for it,
            # so only the steps in a handler call, which may never return, are left running.
            deadline = time.monotonic() + STEP_DRAIN_S
            with self._cv:
                while self._running - self._in_handler_calls() and time.monotonic() < deadline:
                    self._cv.wait(0.05)
        running = self.in_flight()
        self._pool.shutdown(wait=wait and not running, cancel_futures=True)
        return running

    # -- the dispatcher ----------------------------------------------------------------------

    def _push(self, consumer: ShardConsumer, due: float) -> None:
        self._due[consumer] = due
        heapq.heappush(self._heap, (due, next(self._counter), consumer))
        self._cv.notify_all()

    def _dispatch(self) -> None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                if not self._heap or len(self._running) >= self._threads:
                    self._cv.wait(0.1 if not self._heap else 0.01)
                    continue
                due, _, consumer = self._heap[0]
                if self._due.get(consumer) != due:  # superseded by a later push, or finished
                    heapq.heappop(self._heap)
                    continue
                if due > now:
                    self._cv.wait(due - now)
                    continue
                heapq.heappop(self._heap)
                if consumer.shard_id in self._running:
                    # Another consumer of this shard is mid-step: try again once it is done.
                    self._due[consumer] = now + 0.01
                    heapq.heappush(self._heap, (now + 0.01, next(self._counter), consumer))
                    continue
                self._running.add(consumer.shard_id)
                self._due[consumer] = _RUNNING
                self._pool.submit(self._run_step, consumer)

    def _run_step(self, consumer: ShardConsumer) -> None:
        delay: float | None
        stopping = consumer.stop_reason is not None
        try:
            delay = consumer.step()
        except BaseException:
            # The boundary of a step: nothing that escapes it may leave the shard marked running.
            log.exception("unexpected error in a consumer step; retrying in 1 s", extra={"shard_id": consumer.shard_id})
            delay = 1.0
        with self._cv:
            shard_id = consumer.shard_id
            self._running.discard(shard_id)
            if delay is None or consumer.finished:
                self._due.pop(consumer, None)
                if self._current.get(shard_id) is consumer:
                    del self._current[shard_id]
                self._cv.notify_all()
                return
            if consumer.stop_reason is not None and not stopping:
                delay = 0.0  # a stop asked for during the step takes effect at once (a stopping step's own
                # delay, e.g. a release retried after a Redis error, is kept: no busy loop)
            self._push(consumer, time.monotonic() + delay)
