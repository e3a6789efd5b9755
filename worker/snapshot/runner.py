"""The scan side of the snapshot: this worker's share of the segments (docs/snapshot.md).

``threads`` scanner threads each claim a segment lease, then loop: wait for the fleet's read-unit
bucket, announce the next page (it is in flight from here), Scan it, hand its items to the handler in
batches of ``batch_size`` through the worker's :class:`~worker.handling.delivery.DeliveryFactory`
(failure policies, filters and destinations apply), then checkpoint the page's ``LastEvaluatedKey``
(which also takes it out of flight).  A renewal thread renews the held segment leases (and with them the
expiry of their pages in flight) every ``renew_interval_s``.

Invariants:

* A handler call for a page starts only while the page is in flight in this worker's view: its segment's
  last successful renewal was sent less than ``lease_ttl_s - safety margin`` ago, the worker is not
  stopping, and the page was announced less than ``max_stream_lag_s`` ago.  Otherwise the page is
  abandoned (taken out of flight; read again later from the same checkpoint).
* The checkpoint moves only after every item of the page was settled by the delivery (handled, or given
  up under the failure policy); a crash before repeats the page (at-least-once).
* Whatever a thread meets (Redis down, Scan errors, the handler raising) is caught at the loop's boundary;
  the segment is retried or given back, never wedged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from leaser.errors import CoordinationUnavailable
from leaser.snapshot import Claimed, SnapshotStore
from worker.backoff import backoff_s
from worker.handling.calls import HandlerCalls
from worker.handling.delivery import DeliveryFactory
from worker.handling.handler import ShardContext
from worker.reading.records import Record
from worker.snapshot.progress import SnapshotMetrics
from worker.snapshot.scan import (
    ScanFailed,
    ScanThrottled,
    TableReader,
    decode_key,
    encode_key,
    page_bytes,
    snapshot_records,
)

log = logging.getLogger("shardlease.snapshot")

IDLE_S = 1.0
"""Seconds between claim attempts while every segment left is held by someone else."""
LATE_RENEWAL_WAIT_S = 0.2
"""Seconds between checks while a held segment's renewal is late (not lost): nothing is handed over meanwhile."""
LATE = "lease not renewed"


@dataclass(frozen=True, slots=True)
class SnapshotSettings:
    worker_id: str
    group: str
    stream_arn: str
    region: str
    key_names: tuple[str, ...]
    view_type: str
    batch_size: int
    lease_ttl_s: float
    renew_interval_s: float
    read_units_per_s: float
    """Consumed read units per second across the fleet; 0 = no limit."""
    max_stream_lag_s: float
    """No handler call starts for a page announced longer ago than this (it is abandoned and read again)."""
    threads: int = 2


class _Lost(Exception):
    """The segment lease is gone (expired, taken, restarted): stop the segment without writing."""


class SnapshotRunner:
    """Scans this worker's share of the group's snapshot until it is done or :meth:`stop` is called."""

    def __init__(self, store: SnapshotStore, reader: TableReader, settings: SnapshotSettings, *,
                 segments: int, deliveries: DeliveryFactory | None = None,
                 metrics: SnapshotMetrics | None = None) -> None:
        self.metrics = metrics
        self.store = store
        self.reader = reader
        self.deliveries = deliveries
        """How the handler is called (the worker's, shared with its shard consumers); set before start()."""
        self.settings = settings
        self.segments = segments
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}
        """segment -> token of the leases this worker holds."""
        self._renewed: dict[int, float] = {}
        """segment -> monotonic time the last successful renewal (or the claim) was sent."""
        self._lost: set[int] = set()
        self._threads: list[threading.Thread] = []
        self.finished = threading.Event()
        """Set once the snapshot is done (every segment finished, by any worker)."""
        self.margin_s = min(1.0, 0.2 * settings.lease_ttl_s)
        self.calls = HandlerCalls()
        """Handler calls on snapshot pages in flight, for the worker's hang watchdog (:meth:`hung_for`)."""
        self._left_to_expire = False
        """Set by :meth:`leave_segments_to_expire`: no segment is given back, no page taken out of flight."""
        self._hung_reported = False

    def hung_for(self, timeout_s: float) -> float | None:
        """Seconds the oldest handler call on a snapshot page has run, the first time it passes ``timeout_s``
        (None otherwise).  Its page stays in flight (holding the group's stream) for as long as this process
        lives: the caller stops the worker without giving the segment back, as for a hung shard."""
        started = self.calls.oldest_start()
        if started is None:
            self._hung_reported = False
            return None
        running_s = time.monotonic() - started
        if running_s <= timeout_s or self._hung_reported:
            return None
        self._hung_reported = True
        return running_s

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self.deliveries is None:
            raise RuntimeError("SnapshotRunner.deliveries must be set before start()")
        for i in range(self.settings.threads):
            t = threading.Thread(target=self._scan_loop, name=f"snapshot-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        renew = threading.Thread(target=self._renew_loop, name="snapshot-renew", daemon=True)
        renew.start()
        self._threads.append(renew)

    def stop(self) -> None:
        """Stop claiming; scanners abandon their page (at the next batch boundary) and give their segments back."""
        self._stopping.set()

    def leave_segments_to_expire(self) -> None:
        """The process is about to exit at once (a second signal): from now on the scanners give no segment back
        and take no page out of flight, so every segment held expires ``lease_ttl_s`` after its last renewal, with
        its page still in flight.  Whatever a cancelled handler call started and the process cannot stop (a thread
        of ``asyncio.to_thread``) may run until the exit: no other worker may call the handler on that page, nor
        may the stream's records the page holds back go, before then.  Safe to call from a signal handler (it takes
        no lock); cannot be undone.  A release already under way in another thread still completes."""
        self._left_to_expire = True

    def _release(self, segment: int, token: int, *, keep_lease: bool = False) -> bool:
        """Take the segment's page out of flight and (unless ``keep_lease``) give the segment back; False (nothing
        written) once the segments are left to expire."""
        if self._left_to_expire:  # checked right before the write: the process may be exiting meanwhile
            return False
        self.store.release(segment, self.settings.worker_id, token, keep_lease=keep_lease)
        return True

    def join(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    # -- renewal ------------------------------------------------------------------------------

    def _renew_loop(self) -> None:
        """Renew the held segment leases every renew_interval_s until nothing is held and the runner stops."""
        ttl_ms = int(self.settings.lease_ttl_s * 1000)
        while True:
            with self._lock:
                held = dict(self._held)
            if not held and (self._stopping.is_set() or self.finished.is_set()):
                return
            sent = time.monotonic()
            try:
                lost = self.store.renew(self.settings.worker_id, ttl_ms, held)
            except CoordinationUnavailable as exc:
                log.warning("snapshot: renewing segment leases failed: %s", exc)
            except Exception:
                log.exception("snapshot: renewing segment leases failed")
            else:
                with self._lock:
                    for segment, token in held.items():
                        if self._held.get(segment) != token:
                            continue
                        if segment in lost:
                            self._lost.add(segment)
                        else:
                            self._renewed[segment] = sent
            # While stopping, keep renewing what scanners still hold (they give it back at a batch boundary).
            time.sleep(min(self.settings.renew_interval_s, 0.2)) if self._stopping.is_set() else \
                self._stopping.wait(self.settings.renew_interval_s)

    def _valid(self, segment: int) -> str | None:
        """Why no handler call may start for ``segment`` now (None: it may)."""
        if self._stopping.is_set():
            return "stopping"
        with self._lock:
            if segment in self._lost or segment not in self._held:
                return "lease lost"
            age = time.monotonic() - self._renewed.get(segment, 0.0)
        if age > self.settings.lease_ttl_s - self.margin_s:
            return f"{LATE} for {age:.1f} s"
        return None

    # -- scanning -----------------------------------------------------------------------------

    def _scan_loop(self) -> None:
        failures = 0
        while not self._stopping.is_set() and not self.finished.is_set():
            try:
                sent = time.monotonic()
                claimed = self.store.claim(self.settings.worker_id, int(self.settings.lease_ttl_s * 1000))
                if claimed is None:
                    state = self.store.state()
                    if not state.status:
                        # Redis lost the group's state (restarted empty): the shards start over from
                        # TRIM_HORIZON, and so does the snapshot (what was not scanned yet is nowhere else).
                        log.error("snapshot: REDIS LOST THE SNAPSHOT'S STATE (restarted without persistence?): "
                                  "starting the snapshot again")
                        self.store.start(self.segments)
                        continue
                    if state.status != "running":
                        self.finished.set()
                        return
                    self._sleep(IDLE_S)
                    continue
                failures = 0
                with self._lock:
                    self._held[claimed.segment] = claimed.token
                    self._renewed[claimed.segment] = sent
                    self._lost.discard(claimed.segment)
                try:
                    self._scan_segment(claimed)
                finally:
                    with self._lock:
                        self._held.pop(claimed.segment, None)
                        self._renewed.pop(claimed.segment, None)
                        self._lost.discard(claimed.segment)
            except Exception as exc:  # the loop's boundary: Redis down, a bug: retry after a pause
                failures += 1
                delay = backoff_s(failures)
                if isinstance(exc, CoordinationUnavailable):
                    log.warning("snapshot: %s; retrying in %.1f s", exc, delay)
                else:
                    log.exception("snapshot: scanner failed; retrying in %.1f s", delay)
                self._sleep(delay)

    def _scan_segment(self, claimed: Claimed) -> None:
        s = self.settings
        # The count of the run the segment belongs to, not the one this worker joined: a restart may change it.
        segment, token, total = claimed.segment, claimed.token, claimed.segments
        label = f"{segment}/{total}"
        ctx = ShardContext(shard_id=f"snapshot:{label}", worker_id=s.worker_id, stream_arn=s.stream_arn,
                           group=s.group, lease_token=token)
        start = decode_key(claimed.checkpoint)
        log.info("snapshot: segment %s claimed (token %d), %s", label, token,
                 "resuming" if claimed.checkpoint else "from the start")
        throttles = 0
        # Read units the next page is expected to cost (the last page's): debited before the read, so that
        # readers starting together do not all pass an empty bucket; the difference is settled after it.
        estimate = 1.0
        while True:
            why = self._valid(segment)
            if why is not None and why.startswith(LATE):
                # Late, not lost: the lease (and a page in flight with it) expires in Redis only when a renewal
                # says so; wait for the next one, as a shard consumer does, rather than let the segment lapse.
                self._sleep(LATE_RENEWAL_WAIT_S)
                continue
            if why is not None:
                self._give_back(segment, token, label)
                return
            if s.read_units_per_s > 0:
                wait = self.store.spend(s.read_units_per_s, estimate)
                if wait > 0:
                    self._sleep(wait)  # the units are ours once the bucket refilled them
                    if self._valid(segment) is not None:
                        continue
            ticket = self.store.announce(segment, s.worker_id, token)
            if ticket is None:
                log.warning("snapshot: segment %s lost before a page", label)
                return
            if isinstance(ticket, float):  # the notice after the snapshot's start is not over (SnapshotStore)
                self._sleep(min(ticket, 1.0))
                continue
            announced = time.monotonic()
            try:
                page = self.reader.page(segment, total, start)
            except (ScanThrottled, ScanFailed) as exc:
                # Out of flight while backing off: the stream must not wait for a page that is not being read.
                self._release(segment, token, keep_lease=True)
                throttles += 1
                if self.metrics is not None:
                    self.metrics.throttles.inc()
                delay = backoff_s(throttles)
                log.info("snapshot: segment %s: %s; again in %.1f s", label, exc, delay)
                self._sleep(delay)
                continue
            throttles = 0
            if s.read_units_per_s > 0:
                self.store.spend(s.read_units_per_s, page.consumed_units - estimate)
                estimate = max(1.0, page.consumed_units)
            records = snapshot_records(page, s.key_names, label, s.view_type, s.region, read_id=ticket)
            why = self._deliver(records, ctx, segment, announced)
            if why is not None:
                if why.startswith("lease"):
                    log.warning("snapshot: segment %s: %s; the page will be read again by its next owner", label, why)
                    return
                released = self._release(segment, token, keep_lease=why != "stopping")
                if not released:
                    log.info("snapshot: segment %s left to expire with its page in flight (the process is exiting)",
                             label)
                    return
                if why == "stopping":
                    log.info("snapshot: segment %s given back (shutdown)", label)
                    return
                log.warning("snapshot: segment %s: %s; the page will be read again", label, why)
                continue
            next_key = encode_key(page.next_key)
            answer = self.store.page_done(segment, s.worker_id, token, ticket, next_key, len(records),
                                          page_bytes(records))
            if answer == "lost":
                log.warning("snapshot: segment %s lost before its checkpoint; the page will be read again", label)
                return
            if self.metrics is not None:
                self.metrics.items.inc(len(records))
                self.metrics.bytes.inc(page_bytes(records))
                self.metrics.update(self.store.state(), int(time.time() * 1000))
            if answer == "snapshot_done":
                log.info("snapshot: done (the last segment was %s)", label)
                self.finished.set()
                return
            if answer == "segment_done":
                log.info("snapshot: segment %s done", label)
                return
            start = page.next_key

    def _give_back(self, segment: int, token: int, label: str) -> None:
        if self._stopping.is_set():
            try:
                if self._release(segment, token):
                    log.info("snapshot: segment %s given back (shutdown)", label)
                else:
                    log.info("snapshot: segment %s left to expire (the process is exiting)", label)
            except CoordinationUnavailable as exc:
                log.warning("snapshot: could not give back segment %s (%s); it expires", label, exc)

    def _deliver(self, records: list[Record], ctx: ShardContext, segment: int, announced: float) -> str | None:
        """Hand ``records`` to the handler in batches; None when all are settled, else why it stopped."""
        s = self.settings
        refused: list[str] = []

        def guard() -> str | None:
            why = self._valid(segment)
            if why is None and time.monotonic() - announced > s.max_stream_lag_s:
                why = f"page in flight for more than {s.max_stream_lag_s:g} s (--snapshot-max-stream-lag)"
            if why is not None:
                refused.append(why)
            return why

        assert self.deliveries is not None
        for i in range(0, len(records), s.batch_size):
            delivery = self.deliveries.new(records[i : i + s.batch_size], ctx, self.calls)
            while not delivery.finished:
                delay = delivery.run_round(guard)
                if refused and refused[0].startswith(LATE):
                    refused.clear()  # late, not lost: wait for the next renewal (see _scan_segment)
                    time.sleep(LATE_RENEWAL_WAIT_S)
                    continue
                if refused:
                    return refused[0]
                if not delivery.finished and delay > 0:
                    time.sleep(min(delay, 1.0))
        return None


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
