"""ShardConsumer step by step, against the local stream endpoint and a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

from leaser import CoordinationUnavailable, LeaseConfig, LeaseManager, LeaseStore, ShardSpec
from worker import consumer as consumer_module
from worker.consumer import ConsumerSettings, ShardConsumer, StopReason
from worker.handling.handler import as_handler
from worker.local import LocalStreamsServer, LocalTable
from worker.observability import Metrics
from worker.reading.streams import StreamsClient


@dataclass
class Recorder:
    seen: list[str] = field(default_factory=list)
    fail_next: int = 0
    events: list[str] = field(default_factory=list)

    def handle(self, records: list[Any], ctx: Any) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RuntimeError("sink unavailable")
        self.seen.extend(r.sequence_number for r in records)

    def on_lease_gained(self, ctx: Any) -> None:
        self.events.append("gained")

    def on_lease_lost(self, ctx: Any) -> None:
        self.events.append("lost")

    def on_shard_end(self, ctx: Any) -> None:
        self.events.append("end")


@dataclass
class Harness:
    server: LocalStreamsServer
    table: LocalTable
    store: LeaseStore
    manager: LeaseManager
    streams: StreamsClient
    metrics: Metrics
    recorder: Recorder
    ended: list[tuple[str, list[str]]]

    def consumer(self, shard_id: str, *, initial_position: str = "TRIM_HORIZON", batch_size: int = 10) -> ShardConsumer:
        self.store.register_shards([ShardSpec(shard_id)])
        acquired = self.manager._acquire([shard_id])
        assert acquired, f"could not acquire {shard_id}"
        settings = ConsumerSettings(stream_arn=self.table.stream_arn, group=self.store.group, worker_id="w1",
                                    batch_size=batch_size, initial_position=initial_position,
                                    idle_poll_interval_s=1.0, lease_ttl_s=30.0)
        return ShardConsumer(acquired[0], settings=settings, streams=self.streams, manager=self.manager,
                             handler=as_handler(self.recorder), metrics=self.metrics,
                             on_shard_ended=lambda s, c: self.ended.append((s, c)))

    def shard(self) -> str:
        return self.server.model.shard_ids(self.table, open_only=True)[0]

    def write(self, n: int, start: int = 0) -> list[str]:
        return [str(self.table.put_item({"pk": "k", "n": i})) for i in range(start, start + n)]


def run_steps(consumer: ShardConsumer, steps: int, *, honour_delays: bool = False) -> float | None:
    delay: float | None = 0.0
    for _ in range(steps):
        delay = consumer.step()
        if delay is None:
            return None
        if honour_delays:
            time.sleep(delay)
    return delay


@pytest.fixture
def h(redis_client: redis.Redis, group: str) -> Iterator[Harness]:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        store = LeaseStore(redis_client, group, LeaseConfig(lease_ttl_s=30, renew_interval_s=5))
        streams = StreamsClient(region_name="us-east-1", endpoint_url=server.endpoint_url)
        yield Harness(server, table, store, LeaseManager(store, "w1"), streams, Metrics("w1", group), Recorder(), [])
        streams.close()


@pytest.fixture(autouse=True)
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "t")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "t")


def test_reads_in_order_and_checkpoints_each_batch(h: Harness) -> None:
    written = h.write(25)
    c = h.consumer(h.shard())
    run_steps(c, 3)
    assert h.recorder.seen == written[:30]
    lease = h.store.lease(c.shard_id)
    assert lease is not None and lease.checkpoint == written[-1]
    assert h.recorder.events == ["gained"]
    assert h.metrics.value("shardlease_records_processed_total") == 25


def test_resumes_after_the_checkpoint_and_latest_applies_only_to_new_shards(h: Harness) -> None:
    written = h.write(5)
    c = h.consumer(h.shard(), initial_position="LATEST")
    assert run_steps(c, 2) is not None
    assert h.recorder.seen == []  # LATEST: records before the start are not read
    later = h.write(3, start=5)
    run_steps(c, 2)
    assert h.recorder.seen == later
    # A new owner of a checkpointed shard resumes after the checkpoint, whatever the initial position.
    h.manager.release(c.shard_id)
    more = h.write(2, start=8)
    c2 = h.consumer(c.shard_id, initial_position="LATEST")
    run_steps(c2, 2)
    assert h.recorder.seen == later + more
    assert written[0] not in h.recorder.seen


def test_an_expired_iterator_resumes_from_the_checkpoint_without_loss(h: Harness) -> None:
    written = h.write(30)
    c = h.consumer(h.shard())
    c.step()
    h.server.model.set_faults(iterator_ttl_s=0.05)
    time.sleep(0.1)
    run_steps(c, 6)
    assert h.recorder.seen == written


def test_a_failing_handler_retries_the_same_batch_and_never_skips_it(h: Harness) -> None:
    written = h.write(20)
    c = h.consumer(h.shard())
    h.recorder.fail_next = 3
    for _ in range(3):
        calls_before = h.metrics.value("shardlease_handler_errors_total")
        while h.metrics.value("shardlease_handler_errors_total") == calls_before:
            delay = c.step()
            assert delay is not None
            time.sleep(delay)
    lease = h.store.lease(c.shard_id)
    assert lease is not None and lease.checkpoint == ""  # nothing moved past the failing batch
    deadline = time.monotonic() + 10
    while h.recorder.seen != written and time.monotonic() < deadline:
        delay = c.step()
        time.sleep(delay or 0)
    assert h.recorder.seen == written
    assert h.metrics.value("shardlease_handler_errors_total") == 3


def test_trimmed_data_is_logged_counted_and_reading_continues_at_trim_horizon(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    old = h.write(10)
    c = h.consumer(h.shard())
    run_steps(c, 1)
    h.manager.checkpoint(c.shard_id, old[2])
    c.checkpoint = old[2]
    c._iterator = None
    time.sleep(0.01)
    h.server.model.trim(h.table, before=time.time())
    newer = h.write(5, start=10)
    run_steps(c, 3)
    assert h.recorder.seen[-5:] == newer
    assert h.metrics.value("shardlease_trimmed_data_total") == 1
    assert any("lost" in r.message and c.shard_id in r.getMessage() for r in caplog.records)


def test_shard_end_waits_for_the_handler_then_frees_the_children(h: Harness) -> None:
    written = h.write(15)
    parent = h.shard()
    c = h.consumer(parent)
    a, b = h.server.model.split_shard(h.table, parent)
    h.store.register_shards([ShardSpec(a, (parent,)), ShardSpec(b, (parent,))])
    assert h.store.acquire("w2", [a])[0] == []
    assert run_steps(c, 5) is None
    assert h.recorder.seen == written and h.recorder.events == ["gained", "end"]
    assert h.ended == [(parent, [a, b])]
    lease = h.store.lease(parent)
    assert lease is not None and lease.checkpoint == "SHARD_END"
    assert [x.shard_id for x in h.store.acquire("w2", [a, b])[0]] == [a, b]


def test_a_lost_lease_stops_the_shard_and_its_checkpoint_never_lands(h: Harness) -> None:
    written = h.write(10)
    c = h.consumer(h.shard())
    run_steps(c, 1)
    h.store.client.hset(h.store.keys.lease(c.shard_id), "expires_ms", 1)
    h.store.acquire("w2", [c.shard_id])
    h.write(5, start=10)
    assert c.step() is None  # the fenced checkpoint failed: the consumer stops at once
    assert c.finished and h.recorder.events == ["gained", "lost"]
    lease = h.store.lease(c.shard_id)
    assert lease is not None and lease.owner == "w2" and lease.checkpoint == written[-1]


# -- failure paths (issue 10) ---------------------------------------------------------------------

def test_a_consumer_of_an_older_acquisition_neither_calls_the_handler_nor_checkpoints(h: Harness) -> None:
    """The shard was released and acquired again by this worker while the old consumer still ran: the
    old consumer must not write with the new acquisition's token."""
    written = h.write(10)
    old = h.consumer(h.shard())
    h.manager.release(old.shard_id)
    new = h.consumer(old.shard_id)
    assert new.token > old.token
    assert old.step() is None and old.finished  # it stops at once, as for a lost lease
    assert h.recorder.seen == []
    assert h.store.lease(old.shard_id).checkpoint == ""  # type: ignore[union-attr]
    run_steps(new, 2)
    assert h.recorder.seen == written


@pytest.mark.parametrize("raised", [SystemExit(3), asyncio.CancelledError()])
def test_a_handler_raising_a_base_exception_is_a_failed_call_and_is_retried(
    h: Harness, raised: BaseException
) -> None:
    written = h.write(5)
    calls = []

    def handle(records: list[Any], ctx: Any) -> None:
        calls.append(len(records))
        if len(calls) == 1:
            raise raised
        h.recorder.seen.extend(r.sequence_number for r in records)

    h.recorder.handle = handle  # type: ignore[method-assign]
    c = h.consumer(h.shard())
    run_steps(c, 4, honour_delays=True)  # the retry waits a backoff of at most 0.2 s
    assert h.recorder.seen == written and calls == [5, 5]
    assert h.store.lease(c.shard_id).checkpoint == written[-1]  # type: ignore[union-attr]
    assert h.metrics.value("shardlease_handler_errors_total") == 1


def test_a_worker_paused_during_get_records_hands_the_page_to_no_handler(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    h.manager = LeaseManager(h.store, "w1", clock=lambda: clock[0])
    written = h.write(5)
    c = h.consumer(h.shard())
    real_get_records = h.streams.get_records

    def paused_in_flight(*args: Any, **kwargs: Any) -> Any:
        page = real_get_records(*args, **kwargs)
        clock[0] += h.store.config.lease_ttl_s + 1  # SIGSTOP while the call was in flight, SIGCONT later
        return page

    monkeypatch.setattr(h.streams, "get_records", paused_in_flight)
    c.step()
    assert h.recorder.seen == []  # woke past the TTL: the page read before the pause reaches no handler
    assert h.store.lease(c.shard_id).checkpoint == ""  # type: ignore[union-attr]
    monkeypatch.undo()
    h.manager.tick()  # the lease was still this worker's on Redis: the renewal gets through
    run_steps(c, 2)
    assert h.recorder.seen == written


def test_on_shard_end_runs_once_and_the_shard_ends_after_a_redis_error(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = h.write(3)
    parent = h.shard()
    c = h.consumer(parent)
    h.server.model.split_shard(h.table, parent)
    real_end_shard = h.store.end_shard
    failures = [1]

    def end_shard_fails_once(*args: Any, **kwargs: Any) -> list[str]:
        if failures:
            failures.pop()
            raise CoordinationUnavailable("Redis unavailable: test")
        return real_end_shard(*args, **kwargs)

    monkeypatch.setattr(h.store, "end_shard", end_shard_fails_once)
    assert run_steps(c, 6) is None
    assert h.recorder.seen == written and h.recorder.events == ["gained", "end"]
    assert h.store.lease(parent).checkpoint == "SHARD_END"  # type: ignore[union-attr]


def test_latest_applies_to_the_first_listing_and_children_are_read_whole(h: Harness) -> None:
    parent = h.shard()
    h.store.register_shards([ShardSpec(parent)])
    assert h.store.mark_listed()
    h.write(4)  # before the group's first read of the parent: LATEST skips these
    c = h.consumer(parent, initial_position="LATEST")
    run_steps(c, 2)
    assert h.recorder.seen == []
    later = h.write(2, start=4)
    run_steps(c, 2)
    a, b = h.server.model.split_shard(h.table, parent)
    in_children = h.write(20, start=6)  # written to the children before anyone reads them
    assert run_steps(c, 4) is None  # the parent ends
    h.store.register_shards([ShardSpec(a, (parent,)), ShardSpec(b, (parent,))])  # found by a later sync
    for child in (a, b):
        run_steps(h.consumer(child, initial_position="LATEST"), 4)
    assert sorted(h.recorder.seen, key=int) == sorted(later + in_children, key=int)


def test_a_later_owner_of_a_shard_first_read_at_latest_starts_where_the_first_one_did(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash or handoff before the first checkpoint must not move LATEST to the new owner's "now"."""
    monkeypatch.setattr(consumer_module, "LATEST_MARGIN_S", 0.0)  # keep the test short: no margin
    h.write(3)  # before the group started: skipped
    time.sleep(1.1)  # ApproximateCreationDateTime has second precision
    parent = h.shard()
    first = h.consumer(parent, initial_position="LATEST")
    run_steps(first, 2)  # got its LATEST iterator; nothing written since, so nothing checkpointed
    h.manager.release(parent)  # a rolling restart (or SIGKILL: the lease expires)
    time.sleep(1.1)
    meanwhile = h.write(5, start=3)
    second = h.consumer(parent, initial_position="LATEST")
    run_steps(second, 3)
    assert h.recorder.seen == meanwhile
    assert h.store.lease(parent).checkpoint == meanwhile[-1]  # type: ignore[union-attr]


def test_a_stop_writes_the_checkpoint_of_a_batch_handled_while_renewals_were_late(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    h.manager = LeaseManager(h.store, "w1", clock=lambda: clock[0])
    written = h.write(5)

    def handle(records: list[Any], ctx: Any) -> None:
        h.recorder.seen.extend(r.sequence_number for r in records)
        clock[0] += h.store.config.lease_ttl_s  # the handler ran long: the renewal is late when it returns

    h.recorder.handle = handle  # type: ignore[method-assign]
    c = h.consumer(h.shard())
    c.step()
    assert h.recorder.seen == written
    assert h.store.lease(c.shard_id).checkpoint == ""  # type: ignore[union-attr]  # had to wait
    h.manager.tick()  # the renewal gets through
    c.request_stop(StopReason.SHUTDOWN)
    assert c.step() is None
    lease = h.store.lease(c.shard_id)
    assert lease is not None and lease.checkpoint == written[-1] and lease.owner == ""
