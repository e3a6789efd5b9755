"""--max-getrecords-per-second wired into a real Worker (a real Redis, the local endpoint): the worker's share
follows the leases it holds, whichever path gained them."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from leaser import ShardSpec
from tests.e2e.fleet import wait_until
from tests.e2e.test_idle_polling import key_for
from worker.embedding import build_config
from worker.handling.handler import ShardContext, as_handler
from worker.local import LocalStreamsServer
from worker.reading.records import Record
from worker.runtime import Worker


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


class Seen:
    def __init__(self) -> None:
        self.seqs: list[str] = []

    def handle(self, records: Sequence[Record], ctx: ShardContext) -> None:
        self.seqs.extend(r.sequence_number for r in records)


@pytest.fixture
def budget_worker(redis_url: str, group: str) -> Iterator[tuple[Worker, LocalStreamsServer, Any, Seen]]:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=2)
        seen = Seen()
        # A heartbeat every 60 s: nothing here waits for a second one.
        config = build_config(stream_arn=table.stream_arn, endpoint_url=server.endpoint_url, redis_url=redis_url,
                              group=group, worker_id="w2", lease_ttl_s=180, renew_interval_s=60,
                              idle_poll_interval_s=1, initial_position="TRIM_HORIZON", max_getrecords_per_second=50)
        w = Worker(config, handler=as_handler(seen))
        try:
            w.store.register_shards([ShardSpec(s) for s in server.model.shard_ids(table)])
            yield w, server, table, seen
        finally:
            w._close()


def test_a_lease_gained_between_heartbeats_is_read_without_waiting_for_the_next_heartbeat(
        budget_worker: tuple[Worker, LocalStreamsServer, Any, Seen]) -> None:
    """A lease handed over between heartbeats (the taker polls for its grants: Worker._wait_until_next_tick ->
    _start(manager.poll_grants())) starts a consumer at once.  Its worker held nothing at its last heartbeat,
    so its share of the budget was 0 calls/s: the consumer must not wait for the next heartbeat (up to
    --renew-interval away) to get a GetRecords token.  Failed before the fix: no token until a heartbeat."""
    w, server, table, seen = budget_worker
    assert w._heartbeat() is not None  # the first heartbeat joins: nothing held, share 0
    assert w.budget is not None and not w.manager.held()
    shard = server.model.shard_ids(table)[0]
    seq = table.put_item({"pk": key_for(server, table, shard), "n": 1})
    assert seq is not None
    gained = w.manager._acquire([shard])  # what Worker._wait_until_next_tick does with a grant (poll_grants)
    assert gained
    w._start(gained)
    # Liveness, not timing: before the fix the consumer was refused every token until a heartbeat, and none
    # comes here (60 s away, never run).
    assert wait_until(lambda: str(seq) in seen.seqs, 30), f"not read: {w.budget.granted} tokens granted"
    # The share is exported: the whole budget (one worker holding all it holds of a group it alone reads).
    assert w.metrics.value("shardlease_getrecords_budget_calls_per_second") == pytest.approx(w.budget.rate)
    assert w.budget.rate > 0


def test_calls_put_off_for_want_of_a_token_are_counted(
        budget_worker: tuple[Worker, LocalStreamsServer, Any, Seen]) -> None:
    from worker.consumer import ShardConsumer

    w, server, table, _ = budget_worker
    assert w.budget is not None and w._heartbeat() is not None
    gained = w.manager._acquire(server.model.shard_ids(table))
    consumer = ShardConsumer(gained[0], settings=w.settings, streams=w.streams, manager=w.manager, handler=w.handler,
                             metrics=w.metrics, on_shard_ended=w._on_shard_ended, deliveries=w.deliveries,
                             budget=w.budget)
    w.budget.set_share(2, 2)
    w.budget._tokens = 0.0  # the bucket is empty: the next ask is refused
    assert consumer._budget_wait() > 0
    assert w.metrics.value("shardlease_getrecords_budget_waits_total") == 1
