"""The worker's Redis metrics on a Redis Cluster client: scripts (single and pipelined), plain commands."""

from __future__ import annotations

import uuid

import pytest
import redis.cluster

from leaser import LeaseConfig, LeaseManager, LeaseStore, ShardSpec
from tests.security.servers import Cluster
from worker.observability import Metrics
from worker.redis_setup import open_redis

pytestmark = pytest.mark.e2e


def test_cluster_round_trips_are_measured(cluster: Cluster) -> None:
    m = Metrics("w1", "g")
    client, _ = open_redis(cluster.url, data_dir="/nonexistent", metrics=m)
    assert isinstance(client, redis.cluster.RedisCluster)
    try:
        store = LeaseStore(client, f"cl-{uuid.uuid4().hex[:8]}", LeaseConfig(lease_ttl_s=3, renew_interval_s=1))
        store.register_shards([ShardSpec("p", (), 1)])  # EVALSHA sent raw on a cluster pipeline
        manager = LeaseManager(store, "w1")
        manager.tick()
        manager.tick()
        manager.checkpoint("p", "100")
        store.candidates(5)
        count = m.value
        for command in ("ping", "script:register", "script:acquire", "script:heartbeat", "script:checkpoint", "time"):
            value = count("shardlease_redis_command_duration_seconds_count", {"command": command})
            assert value is not None and value >= 1, command
        assert "script:other" not in m.render().decode()
    finally:
        client.close()
