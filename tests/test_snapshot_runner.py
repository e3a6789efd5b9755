"""SnapshotRunner against the local endpoint's Scan and a real Redis: what a scanner does when the group's
snapshot changes under it (docs/snapshot.md, "Once per group")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis

from leaser.snapshot import SnapshotStore
from worker.handling.delivery import DeliveryFactory, DeliveryPolicy
from worker.handling.destinations import NoDestination
from worker.handling.handler import ShardContext
from worker.local import LocalStreamsServer
from worker.observability import Metrics
from worker.reading.records import Record
from worker.snapshot.runner import SnapshotRunner, SnapshotSettings
from worker.snapshot.scan import TableReader

ITEMS = 300


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def server() -> Iterator[LocalStreamsServer]:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as s:
        table = s.create_table("items")
        for i in range(ITEMS):
            table.put_item({"pk": f"k{i:04d}", "v": i})
        yield s


class Sink:
    def __init__(self) -> None:
        self.keys: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, records: Sequence[Record], ctx: ShardContext) -> Any:
        with self._lock:
            self.keys.update(str(r.keys["pk"]) for r in records)


def runner(server: LocalStreamsServer, store: SnapshotStore, group: str, segments: int, sink: Sink) -> SnapshotRunner:
    arn = server.model.table("items").streams[-1].arn
    reader = TableReader("items", region="us-east-1", endpoint_url=server.endpoint_url, stream_arn=arn)
    settings = SnapshotSettings(worker_id="w1", group=group, stream_arn=arn, region="us-east-1", key_names=("pk",),
                                view_type="NEW_AND_OLD_IMAGES", batch_size=100, lease_ttl_s=10.0,
                                renew_interval_s=1.0, read_units_per_s=0.0, max_stream_lag_s=300.0)
    r = SnapshotRunner(store, reader, settings, segments=segments)
    r.deliveries = DeliveryFactory(call=sink, policy=DeliveryPolicy(), destination=NoDestination(),
                                   metrics=Metrics("w1", group), tracing=None)
    return r


def test_a_scanner_that_joined_before_a_restart_scans_with_the_new_segment_count(
    server: LocalStreamsServer, redis_client: redis.Redis, group: str,
) -> None:
    """A worker joined the snapshot with 3 segments; `shardlease snapshot --restart --snapshot-segments 2` then
    started a new one.  The worker's scanners claim segments of the new run: each must be read as i/2.  (They
    were read as i/3: segments 0/3 and 1/3 cover two thirds of the table, and the snapshot was marked done
    without the rest.)"""
    store = SnapshotStore(redis_client, group, notice_s=0)
    assert store.start(3) == ("started", 3)
    sink = Sink()
    r = runner(server, store, group, 3, sink)
    assert store.start(2, restart=True) == ("started", 2)
    r.start()
    try:
        assert r.finished.wait(30), "the snapshot did not finish"
    finally:
        r.stop()
        r.join(10)
        r.reader.close()
    assert store.state().status == "done"
    assert sink.keys == {f"k{i:04d}" for i in range(ITEMS)}


def test_a_snapshot_whose_state_redis_lost_is_started_again_not_taken_as_done(
    server: LocalStreamsServer, redis_client: redis.Redis, group: str,
) -> None:
    """Redis restarted empty while the snapshot ran: its segments and checkpoints are gone.  The group's shards
    start over (from TRIM_HORIZON), and so must the snapshot.  (Scanners found no segment to claim and no
    running snapshot, and stopped as if it were done: the segments not scanned yet never reached the sink.)"""
    store = SnapshotStore(redis_client, group, notice_s=0)
    assert store.start(3) == ("started", 3)
    sink = Sink()
    r = runner(server, store, group, 3, sink)
    for key in redis_client.scan_iter(match=f"shardlease:{{{group}}}:*", count=1000):
        redis_client.delete(key)  # what a Redis restarted without persistence holds
    r.start()
    try:
        assert r.finished.wait(30), "the snapshot did not finish"
    finally:
        r.stop()
        r.join(10)
        r.reader.close()
    assert sink.keys == {f"k{i:04d}" for i in range(ITEMS)}
    assert store.state().status == "done"


def test_a_late_renewal_pauses_the_page_and_does_not_abandon_the_segment(
    server: LocalStreamsServer, redis_client: redis.Redis, group: str,
) -> None:
    """A renewal whose reply came late (a slow Redis, a starved process) leaves the local view of the lease
    older than ``lease_ttl - margin`` though the lease never expired in Redis (so neither did the page: they
    expire together).  The scanner waits for the next renewal, as a shard consumer does, and finishes the page.
    (It gave up the segment without giving it back: the page held the stream until the lease lapsed, was read
    and handed over again by the next owner: the unexplained repeats of test_snapshot_cli.)"""
    store = SnapshotStore(redis_client, group, notice_s=0)
    assert store.start(1) == ("started", 1)
    applied: list[str] = []
    r = runner(server, store, group, 1, Sink())
    claimed = store.claim("w1", 10_000)
    assert claimed is not None

    def renew_later() -> None:  # what the renewal thread does once its next renewal gets through
        sent = time.monotonic()
        assert store.renew("w1", 10_000, {claimed.segment: claimed.token}) == set()
        with r._lock:
            r._renewed[claimed.segment] = sent

    def handler(records: Sequence[Record], ctx: ShardContext) -> Any:
        if not applied:
            with r._lock:  # the last renewal that got through is now older than lease_ttl - margin
                r._renewed[claimed.segment] = time.monotonic() - r.settings.lease_ttl_s
            threading.Timer(0.3, renew_later).start()
        applied.extend(str(x.keys["pk"]) for x in records)

    assert r.deliveries is not None
    r.deliveries = DeliveryFactory(call=handler, policy=DeliveryPolicy(), destination=NoDestination(),
                                   metrics=Metrics("w1", group), tracing=None)
    with r._lock:
        r._held[claimed.segment] = claimed.token
        r._renewed[claimed.segment] = time.monotonic()
    try:
        r._scan_segment(claimed)
    finally:
        r.reader.close()
    assert sorted(applied) == [f"k{i:04d}" for i in range(ITEMS)]  # each once
    assert store.state().status == "done"
