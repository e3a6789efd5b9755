"""The lease protocol on a Redis Cluster of three primaries (and three replicas) started by the tests.

The group's keys share one hash tag, so every script runs unchanged on the slot's primary.  A failover
(manual, or the primary killed) shows up as CoordinationUnavailable for a moment, then the same leases
and tokens work on the promoted replica and no checkpoint moves backwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

import pytest
import redis
import redis.cluster

from leaser import CoordinationUnavailable, LeaseConfig, LeaseManager, LeaseStore, ShardSpec, connect, sequence_key
from tests.security.servers import Cluster
from worker.observability import Metrics
from worker.redis_setup import open_redis

pytestmark = pytest.mark.e2e

T = TypeVar("T")


def _store(cluster: Cluster, ttl_s: float = 10.0) -> LeaseStore:
    client = connect(cluster.url)
    assert isinstance(client, redis.cluster.RedisCluster)
    return LeaseStore(client, f"cl-{uuid.uuid4().hex[:8]}", LeaseConfig(lease_ttl_s=ttl_s, renew_interval_s=ttl_s / 3))


def test_scripts_run_unchanged_on_the_cluster(cluster: Cluster) -> None:
    store = _store(cluster, ttl_s=2.0)
    slots = {cluster.node(cluster.ports[0]).cluster("keyslot", key) for key in (
        store.keys.lease("a"), store.keys.free, store.keys.token, store.keys.held("w1"), store.keys.wake_channel)}
    assert len(slots) == 1
    wake = store.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    wake.subscribe(store.keys.wake_channel)

    assert store.register_shards([ShardSpec("p", (), 1), ShardSpec("c", ("p",), 2)]) == {"p": "ready", "c": "blocked"}
    manager = LeaseManager(store, "w1")
    manager.tick()
    assert [a.shard_id for a in manager.tick().gained] == ["p"]
    assert manager.checkpoint("p", "100") is True
    assert store.heartbeat("w1", {"p": manager.token("p")}).lost == {}
    assert store.members() == {"w1": 1} and store.held_by("w1") == ["p"]
    assert manager.end_shard("p") == ["c"]
    assert store.candidates(5) == ["c"]
    [child], _ = store.acquire("w1", ["c"])
    assert store.checkpoint("w1", "c", child.token, "200") is True
    store.ask("w2", "w1", 1)
    store.release("w1", "c", child.token, to="w2")
    assert store.grants("w2") == ["c"]
    leader = store.leader("w1", 5000)
    assert leader.owner == "w1" and store.current_leader() == leader
    store.resign_leader("w1")
    assert [lease.checkpoint for lease in store.leases()] == ["SHARD_END", "200"]
    assert store.cleanup() == []  # nothing old enough
    messages = [wake.get_message(timeout=0.2) for _ in range(5)]
    assert "c" in [m["data"] for m in messages if m]
    wake.close()
    # Scripts flushed on every node (a restart): the pipelined and the single calls load them again.
    for port in cluster.ports:
        cluster.node(port).script_flush()
    assert store.register_shards([ShardSpec("d", (), 3)]) == {"d": "ready"}
    assert store.heartbeat("w1", {}).lost == {}
    # The worker's own entry point takes the cluster URL.
    client, shown = open_redis(cluster.url, data_dir="/nonexistent")
    assert shown == cluster.url and isinstance(client, redis.cluster.RedisCluster)
    client.close()
    store.client.close()


def test_the_workers_redis_metrics_measure_the_cluster_client(cluster: Cluster) -> None:
    """Scripts (single, and raw EVALSHA in a cluster pipeline) and plain commands are labelled as on one server."""
    metrics = Metrics("w1", "g")
    client, _ = open_redis(cluster.url, data_dir="/nonexistent", metrics=metrics)
    assert isinstance(client, redis.cluster.RedisCluster)
    try:
        store = LeaseStore(client, f"cl-{uuid.uuid4().hex[:8]}", LeaseConfig(lease_ttl_s=3, renew_interval_s=1))
        store.register_shards([ShardSpec("p", (), 1)])
        manager = LeaseManager(store, "w1")
        manager.tick()
        manager.tick()
        manager.checkpoint("p", "100")
        store.candidates(5)
        for command in ("ping", "script:register", "script:acquire", "script:heartbeat", "script:checkpoint", "time"):
            count = metrics.value("shardlease_redis_command_duration_seconds_count", {"command": command})
            assert count is not None and count >= 1, command
        assert "script:other" not in metrics.render().decode()
    finally:
        client.close()


def _until_ok(call: Callable[[], T], errors: list[BaseException], timeout_s: float = 30.0) -> T:
    """Call until it succeeds; only CoordinationUnavailable may be raised meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except CoordinationUnavailable as exc:
            errors.append(exc)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _held_with_checkpoints(store: LeaseStore, n: int) -> tuple[LeaseManager, dict[str, str]]:
    store.register_shards([ShardSpec(f"s{i}", (), i) for i in range(n)])
    manager = LeaseManager(store, "w1")
    manager.tick()
    manager.tick()
    assert sorted(manager.held()) == [f"s{i}" for i in range(n)]
    written = {}
    for i, shard in enumerate(sorted(manager.held())):
        sequence = str(1000 + i)
        assert manager.checkpoint(shard, sequence)
        written[shard] = sequence
    return manager, written


def _check_after_failover(store: LeaseStore, manager: LeaseManager, written: dict[str, str],
                          errors: list[BaseException]) -> None:
    tokens = {shard: manager.token(shard) for shard in written}
    beat = _until_ok(lambda: store.heartbeat("w1", tokens), errors)
    assert beat.lost == {}, "the leases survive a failover shorter than lease_ttl_s"
    for lease in _until_ok(store.leases, errors):
        assert lease.owner == "w1" and lease.token == tokens[lease.shard_id]
        assert sequence_key(lease.checkpoint) >= sequence_key(written[lease.shard_id]), "a checkpoint moved back"
    for shard in written:  # the same tokens go on checkpointing on the promoted replica
        assert _until_ok(lambda shard=shard: store.checkpoint("w1", shard, tokens[shard], "5000"), errors) is True  # type: ignore[misc]
    assert all(isinstance(e, CoordinationUnavailable) for e in errors)


def test_manual_failover_of_the_groups_primary(cluster: Cluster) -> None:
    store = _store(cluster)
    manager, written = _held_with_checkpoints(store, 4)
    primary = cluster.primary_of(store.keys.token)
    [replica] = cluster.replicas_of(primary)
    cluster.node(replica).execute_command("CLUSTER", "FAILOVER")  # waits for the replica to catch up: no loss
    deadline = time.monotonic() + 20
    while cluster.primary_of(store.keys.token) != replica:
        assert time.monotonic() < deadline, "the replica was not promoted"
        time.sleep(0.1)
    errors: list[BaseException] = []
    _check_after_failover(store, manager, written, errors)
    cluster.wait_ok(20)
    store.client.close()


def test_primary_killed_replica_promoted(cluster: Cluster) -> None:
    store = _store(cluster)
    manager, written = _held_with_checkpoints(store, 4)
    primary = cluster.primary_of(store.keys.token)
    [replica] = cluster.replicas_of(primary)
    # Make the test deterministic about what replicated; docs/security.md says what an unlucky crash loses.
    assert cluster.node(primary).execute_command("WAIT", 1, 2000) == 1
    cluster.server(primary).kill()
    errors: list[BaseException] = []
    started = time.monotonic()
    _check_after_failover(store, manager, written, errors)
    deadline = time.monotonic() + 10  # the surviving nodes' views converge on the promotion
    while cluster.primary_of(store.keys.token) != replica:
        assert time.monotonic() < deadline, "the replica was not promoted"
        time.sleep(0.1)
    assert errors, "the store saw the failover as CoordinationUnavailable"
    assert time.monotonic() - started < 30
    store.client.close()


def test_cluster_url_errors_are_one_line(cluster: Cluster) -> None:
    from leaser import ConfigError, CoordinationUnavailable

    dead = cluster.url.rsplit(":", 1)[0] + ":1/0"
    # An unreachable cluster may come back: retried at start-up (1 s in tests), then CoordinationUnavailable.
    with pytest.raises(CoordinationUnavailable) as unreachable:
        open_redis(dead.replace("://", "://u:Secr3t@"), data_dir="/nonexistent")
    text = str(unreachable.value)
    assert "cannot reach" in text and "Secr3t" not in text and "\n" not in text
    for url, words in ((cluster.url.replace("/0", "/3"), "database 0"),
                       ("redis+cluster://hostonly/0", "host:port")):
        with pytest.raises(ConfigError) as info:
            open_redis(url, data_dir="/nonexistent")
        assert words in str(info.value) and "Secr3t" not in str(info.value) and "\n" not in str(info.value)

