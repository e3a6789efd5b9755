"""Scheduler: runs the steps of many shard consumers on a bounded thread pool.

Each consumer has at most one step running at a time; between steps it waits in
a heap keyed by when it is due.  Hundreds of shards share ``threads`` threads:
an idle shard costs a heap entry, not a thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from worker.consumer import ShardConsumer

log = logging.getLogger("shardlease.scheduler")

DEFAULT_THREADS = 32
"""Threads that run consumer steps (GetRecords, the handler, the checkpoint) in one process."""


class Scheduler:
    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        self._threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shard")
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, ShardConsumer]] = []
        self._due: dict[str, float] = {}
        self._consumers: dict[str, ShardConsumer] = {}
        self._running: set[str] = set()
        self._counter = itertools.count()
        self._closed = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="scheduler", daemon=True)
        self._dispatcher.start()

    # -- what runs ---------------------------------------------------------------------------

    def add(self, consumer: ShardConsumer) -> None:
        with self._cv:
            self._consumers[consumer.shard_id] = consumer
            self._push(consumer, time.monotonic())

    def get(self, shard_id: str) -> ShardConsumer | None:
        with self._cv:
            return self._consumers.get(shard_id)

    def shard_ids(self) -> list[str]:
        with self._cv:
            return list(self._consumers)

    def stop(self, shard_id: str, reason: str, handoff_to: str = "", detail: str = "") -> bool:
        """Ask one consumer to stop after its step in flight; False if it is not running here."""
        with self._cv:
            consumer = self._consumers.get(shard_id)
            if consumer is None:
                return False
            consumer.request_stop(reason, handoff_to, detail)
            if shard_id not in self._running:
                self._push(consumer, time.monotonic())
            return True

    def stop_all(self, reason: str) -> None:
        for shard_id in self.shard_ids():
            self.stop(shard_id, reason)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no consumer is left (all finished); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._consumers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
        return True

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the dispatcher ----------------------------------------------------------------------

    def _push(self, consumer: ShardConsumer, due: float) -> None:
        self._due[consumer.shard_id] = due
        heapq.heappush(self._heap, (due, next(self._counter), consumer))
        self._cv.notify_all()

    def _dispatch(self) -> None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                if self._heap and len(self._running) < self._threads:
                    due, _, consumer = self._heap[0]
                    sid = consumer.shard_id
                    stale = self._due.get(sid) != due or self._consumers.get(sid) is not consumer
                    if stale:
                        heapq.heappop(self._heap)
                        continue
                    if due <= now and sid not in self._running:
                        heapq.heappop(self._heap)
                        self._running.add(sid)
                        self._pool.submit(self._run_step, consumer)
                        continue
                    self._cv.wait(max(due - now, 0.001) if due > now else 0.01)
                else:
                    self._cv.wait(0.1 if not self._heap else 0.01)

    def _run_step(self, consumer: ShardConsumer) -> None:
        delay: float | None
        try:
            delay = consumer.step()
        except Exception:
            log.exception("unexpected error in a consumer step; retrying in 1 s", extra={"shard_id": consumer.shard_id})
            delay = 1.0
        with self._cv:
            sid = consumer.shard_id
            self._running.discard(sid)
            if delay is not None and consumer.stop_reason is not None:
                delay = 0.0  # a stop asked for during the step takes effect at once
            if delay is None or consumer.finished:
                if self._consumers.get(sid) is consumer:
                    del self._consumers[sid]
                    self._due.pop(sid, None)
                self._cv.notify_all()
            else:
                self._push(consumer, time.monotonic() + delay)
