"""ShardDiscovery: keeps the group's shard graph in Redis in step with the stream.

Only the worker holding the leader lease syncs periodically, so DescribeStream
calls do not grow with the number of workers.  A sync continues the listing
from the last shard it knew (new shards are listed after older ones) and makes a
full listing every ``FULL_SYNC_EVERY`` syncs and whenever it becomes leader.

When a worker ends a shard it looks up that shard's children at once
(DescribeStream with the CHILD_SHARDS filter, falling back to a full listing),
so children start without waiting for the next sync.  Registration is
idempotent, so a stale leader or two workers registering the same child is
harmless.
"""

from __future__ import annotations

import logging
import re
import threading
import time

import tenacity

from leaser import LeaseState, LeaseStore, ShardSpec
from worker.errors import StreamServerError, StreamThrottled
from worker.observability import Metrics
from worker.reading.streams import Shard, StreamPage, StreamsClient

log = logging.getLogger("shardlease.discovery")

FULL_SYNC_EVERY = 10
"""Every N-th periodic sync lists the whole stream instead of continuing from the last shard."""
CHILD_LOOKUP_DELAYS_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0)
"""Waits between child lookups after a shard ends (its children may not be listed yet)."""
DESCRIBE_STREAM_PER_S = 5.0
"""Most DescribeStream calls one process makes per second: half the account-wide limit of 10/s,
so a full listing of thousands of shards never throttles the account's other readers."""

LISTING_FIRST_RETRY_S = 0.4
"""Wait before the leader retries a throttled or failing page of its listing; it doubles on each retry of
the same page, up to LISTING_MAX_RETRY_S, and the listing is retried until it gets through."""
LISTING_MAX_RETRY_S = 10.0


def _listing_retry() -> tenacity.Retrying:
    """Retry policy of one page of a sync: throttling and server errors pass, so it never gives up (the
    leader has nothing else to do; the next page starts again from the first wait)."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((StreamThrottled, StreamServerError)),
        wait=tenacity.wait_exponential(multiplier=LISTING_FIRST_RETRY_S, max=LISTING_MAX_RETRY_S),
        before_sleep=lambda state: log.debug("DescribeStream failed (%s); retrying in %.1f s",
                                             state.outcome.exception() if state.outcome else None,
                                             state.next_action.sleep if state.next_action else 0.0),
        reraise=True,
    )


_SHARD_TIME = re.compile(r"^shardId-(\d{1,20})-")


def shard_order(shard_id: str, fallback: float) -> float:
    """Sort key of a shard: the creation time embedded in DynamoDB shard ids, else ``fallback``."""
    match = _SHARD_TIME.match(shard_id)
    return float(match.group(1)) if match else fallback


def shard_specs(shards: list[Shard], *, read_from_start: bool | None = None) -> list[ShardSpec]:
    """Specs to register; ``read_from_start`` as in :class:`leaser.ShardSpec` (None: decided by whether
    the group's first listing is complete)."""
    now_ms = time.time() * 1000
    return [
        ShardSpec(s.shard_id, (s.parent_shard_id,) if s.parent_shard_id else (), shard_order(s.shard_id, now_ms + i),
                  read_from_start=read_from_start)
        for i, s in enumerate(shards)
    ]


class ShardDiscovery:
    def __init__(self, streams: StreamsClient, store: LeaseStore, stream_arn: str, metrics: Metrics) -> None:
        self._streams = streams
        self._store = store
        self._stream_arn = stream_arn
        self._metrics = metrics
        self._last_shard_id: str | None = None
        self._syncs = 0
        self._lock = threading.Lock()
        self._pace_lock = threading.Lock()
        self._next_call_at = 0.0
        self.last_status = ""

    def _pace(self) -> None:
        """Wait for this process's next DescribeStream slot (at most DESCRIBE_STREAM_PER_S a second)."""
        with self._pace_lock:
            now = time.monotonic()
            wait = self._next_call_at - now
            self._next_call_at = max(now, self._next_call_at) + 1.0 / DESCRIBE_STREAM_PER_S
        if wait > 0:
            time.sleep(wait)

    def sync(self, *, full: bool = False) -> int:
        """List shards (continuing from the last known one unless ``full``) and register them.

        Returns how many shards were new to the group.  Throttling backs off and retries.
        """
        with self._lock:
            full = full or self._last_shard_id is None or self._syncs % FULL_SYNC_EVERY == 0
            self._syncs += 1
            start = None if full else self._last_shard_id
            shards: list[Shard] = []
            cursor = start
            while True:
                page = _listing_retry()(self._list_page, cursor)
                self._note_status(page.status)
                shards.extend(page.shards)
                if page.last_evaluated_shard_id is None:
                    break
                cursor = page.last_evaluated_shard_id
            if shards:
                self._last_shard_id = shards[-1].shard_id
            self._note_open_parents(shards)
            result = self._store.register_shards(shard_specs(shards))
            if full and self._store.mark_listed():
                log.info("the group's first listing is registered (%d shards): those without a checkpoint start at "
                         "the initial position; every shard created from now on starts at TRIM_HORIZON", len(shards))
            new = sum(1 for state in result.values() if state in ("ready", "blocked"))
            if new:
                log.info("registered %d new shards (%s listing, %d listed)", new, "full" if full else "incremental",
                         len(shards))
            self._count_blocked()
            return new

    def _count_blocked(self) -> None:
        """Set the blocked-shards gauge: one read of every lease (O(shards), by the leader once per sync)."""
        try:
            blocked = sum(1 for lease in self._store.leases() if lease.state is LeaseState.BLOCKED)
        except Exception as exc:  # only a metric: never fails the sync (Redis trouble shows in other ways)
            log.debug("could not count the blocked shards: %s", exc)
            return
        self._metrics.shards_blocked(blocked)

    def _list_page(self, cursor: str | None) -> StreamPage:
        self._pace()
        self._metrics.describe_stream_call()
        try:
            return self._streams.describe_stream_page(self._stream_arn, cursor)
        except StreamThrottled:
            self._metrics.throttle("DescribeStream")
            raise

    def children_of(self, shard_id: str) -> list[str]:
        """Find and register the children of a shard that just ended; [] if none are listed yet."""
        for delay in (0.0, *CHILD_LOOKUP_DELAYS_S):
            time.sleep(delay)
            try:
                self._pace()
                self._metrics.describe_stream_call()
                children = self._streams.child_shards(self._stream_arn, shard_id)
            except (StreamThrottled, StreamServerError) as exc:
                log.info("child lookup for %s failed (%s); retrying", shard_id, exc)
                continue
            if children:
                # A child of a shard the group has read: read it whole, whatever the initial position.
                self._store.register_shards(shard_specs(children, read_from_start=True))
                return [c.shard_id for c in children]
        log.info("shard %s ended but no child is listed yet (the stream may be disabled, or the children "
                 "appear later); the periodic sync will pick them up", shard_id)
        return []

    def _note_status(self, status: str) -> None:
        if status != self.last_status:
            if status in ("DISABLED", "DISABLING"):
                log.warning("stream is %s: its shards are closed and readable for 24 h; draining them", status)
            elif status == "ENABLING":
                log.info("stream is ENABLING; shards will appear shortly")
            elif self.last_status:
                log.info("stream is %s", status)
            self.last_status = status

    def _note_open_parents(self, shards: list[Shard]) -> None:
        by_id = {s.shard_id: s for s in shards}
        for s in shards:
            parent = by_id.get(s.parent_shard_id or "")
            if parent is not None and not parent.is_closed:
                log.info("shard %s is listed as open while its child %s exists; reading it to its end first",
                         parent.shard_id, s.shard_id)
