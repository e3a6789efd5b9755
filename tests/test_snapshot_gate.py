"""A stream consumer and the snapshot gate (docs/snapshot.md): records read while a snapshot page announced
before them is in flight wait for it; a Redis error while tagging re-reads the page."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from leaser import CoordinationUnavailable
from leaser.snapshot import SnapshotStore
from tests.test_consumer import Harness, run_steps
from tests.test_consumer import creds as creds
from tests.test_consumer import h as h
from worker.snapshot.gate import StreamGate


@pytest.fixture
def snapshot(redis_client: redis.Redis, group: str) -> Iterator[SnapshotStore]:
    yield SnapshotStore(redis_client, group, notice_s=0)


def gated(h: Harness, gate: StreamGate) -> object:
    consumer = h.consumer(h.shard())
    consumer._gate = gate
    return consumer


def test_records_wait_for_a_page_announced_before_they_were_read(h: Harness, snapshot: SnapshotStore) -> None:
    consumer = gated(h, StreamGate(snapshot))
    early = h.write(5)
    run_steps(consumer, 3)  # type: ignore[arg-type]
    assert h.recorder.seen == early  # no snapshot: at once
    snapshot.start(1)
    claimed = snapshot.claim("s1", 30_000)
    assert claimed is not None
    ticket = snapshot.announce(claimed.segment, "s1", claimed.token)
    assert ticket is not None
    late = h.write(5, start=5)
    run_steps(consumer, 5)  # type: ignore[arg-type]
    assert h.recorder.seen == early, "records read after the announce reached the handler before the page"
    assert snapshot.page_done(claimed.segment, "s1", claimed.token, ticket, "", 0, 0) == "snapshot_done"
    run_steps(consumer, 3)  # type: ignore[arg-type]
    assert h.recorder.seen == early + late


class FailingOnce(StreamGate):
    def __init__(self, store: SnapshotStore) -> None:
        super().__init__(store)
        self.failures = 1

    def tag(self, read_at: float | None = None) -> int:
        if self.failures:
            self.failures -= 1
            raise CoordinationUnavailable("Redis unavailable (test)")
        return super().tag(read_at)


def test_a_redis_error_while_tagging_reads_the_page_again(h: Harness, snapshot: SnapshotStore) -> None:
    consumer = gated(h, FailingOnce(snapshot))
    written = h.write(7)
    run_steps(consumer, 6)  # type: ignore[arg-type]
    assert h.recorder.seen == written


def test_held_records_wait_only_for_the_pages_announced_before_they_were_read(
    h: Harness, snapshot: SnapshotStore
) -> None:
    """Records read while page 1 was in flight wait for page 1, not for page 2 announced after them.  (The
    consumer kept reading while it held a batch that was not full, and every read that returned records
    moved the hold to the clock of that read: on a shard written faster than one page is handled, the batch
    waited for every page of the scan in turn until it filled up.)"""
    consumer = gated(h, StreamGate(snapshot))
    snapshot.start(2)
    a, b = snapshot.claim("s1", 30_000), snapshot.claim("s2", 30_000)
    assert a is not None and b is not None
    t1 = snapshot.announce(a.segment, "s1", a.token)
    assert t1 is not None
    first = h.write(3)
    run_steps(consumer, 3)  # type: ignore[arg-type]
    assert h.recorder.seen == []  # held for page 1
    t2 = snapshot.announce(b.segment, "s2", b.token)
    assert t2 is not None
    second = h.write(3, start=3)
    run_steps(consumer, 3)  # type: ignore[arg-type]
    assert snapshot.page_done(a.segment, "s1", a.token, t1, "", 0, 0) == "segment_done"
    run_steps(consumer, 3)  # type: ignore[arg-type]
    assert h.recorder.seen[: len(first)] == first, "records read before page 2's announce waited for it"
    assert second[0] not in h.recorder.seen  # read after page 2's announce: they wait for it
    assert snapshot.page_done(b.segment, "s2", b.token, t2, "", 0, 0) == "snapshot_done"
    run_steps(consumer, 3)  # type: ignore[arg-type]
    assert h.recorder.seen == first + second
