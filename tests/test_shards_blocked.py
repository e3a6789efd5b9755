"""The leader's shard sync reports how many shards wait for a parent (shardlease_shards_blocked)."""

from __future__ import annotations

import pytest
import redis

from leaser import LeaseConfig, LeaseManager, LeaseStore
from worker.discovery import ShardDiscovery
from worker.local import LocalStreamsServer
from worker.observability import Metrics
from worker.reading.streams import StreamsClient


@pytest.fixture(autouse=True)
def creds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "t")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "t")


def test_children_wait_for_their_parent_until_it_ends(redis_client: redis.Redis, group: str) -> None:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        (parent,) = server.model.shard_ids(table, open_only=True)
        children = server.model.split_shard(table, parent)
        streams = StreamsClient(region_name="us-east-1", endpoint_url=server.endpoint_url)
        try:
            metrics = Metrics("w1", group)
            store = LeaseStore(redis_client, group, LeaseConfig(lease_ttl_s=30, renew_interval_s=5))
            discovery = ShardDiscovery(streams, store, table.stream_arn, metrics)
            assert metrics.value("shardlease_shards_blocked") == 0
            assert discovery.sync(full=True) == 3
            assert metrics.value("shardlease_shards_blocked") == 2  # both children wait for the parent

            manager = LeaseManager(store, "w1")
            assert [a.shard_id for a in manager._acquire([parent])] == [parent]
            assert sorted(manager.end_shard(parent)) == sorted(children)
            discovery.sync()
            assert metrics.value("shardlease_shards_blocked") == 0
        finally:
            streams.close()
