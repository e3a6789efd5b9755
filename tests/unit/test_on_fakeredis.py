"""The fast unit tier: logic that needs a Redis client, against fakeredis in-process (no server).

fakeredis runs our Lua scripts through lupa (EVALSHA included), so the store's helpers can be driven
here in milliseconds.  These tests check the Python around Redis (parsing, keys, listing); every
lease-protocol behaviour is also tested against a real Redis in tests/protocol.
"""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest

from leaser import LeaseManager, LeaseStore, ShardSpec
from leaser.lease import LeaseState
from tests import test_destinations


@pytest.fixture
def fake() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis(decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def store(fake: fakeredis.FakeRedis) -> LeaseStore:
    return LeaseStore(fake, "unit")


def test_scripts_run_through_evalsha(fake: fakeredis.FakeRedis) -> None:
    sha = fake.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert fake.evalsha(sha, 1, "n", 5) == 5 and fake.evalsha(sha, 1, "n", 2) == 7


def test_store_read_helpers(store: LeaseStore) -> None:
    assert store.register_shards([ShardSpec("a", (), 1), ShardSpec("b", (), 2), ShardSpec("c", ("a",), 3)]) == {
        "a": "ready", "b": "ready", "c": "blocked"}
    assert store.shard_ids() == ["a", "b", "c"]
    assert store.candidates(10) == ["a", "b"]
    [got], _ = store.acquire("w1", ["a"])
    store.heartbeat("w1", {"a": got.token})
    assert store.held_by("w1") == ["a"]
    assert store.members() == {"w1": 1}
    assert store.candidates(10) == ["b"]
    lease = store.lease("a")
    assert lease is not None and (lease.owner, lease.token, lease.state) == ("w1", got.token, LeaseState.READY)
    assert {x.shard_id: (x.state, x.owner) for x in store.leases()} == {
        "a": (LeaseState.READY, "w1"), "b": (LeaseState.READY, ""), "c": (LeaseState.BLOCKED, "")}
    assert store.lease("nope") is None
    assert abs(store.server_time_ms() - int(store.client.time()[0]) * 1000) < 2000


def test_leader_and_shard_report(store: LeaseStore) -> None:
    assert store.current_leader() is None
    leader = store.leader("w1", 5000)
    assert leader.owner == "w1" and store.current_leader() == leader
    store.report("w1", {"stuck": "retrying", "shard": "a", "since_ms": 12}, ttl_s=30)
    assert store.reports(["w1", "w2"]) == {"w1": {"stuck": "retrying", "shard": "a", "since_ms": "12"}, "w2": {}}
    store.resign_leader("w1")
    assert store.current_leader() is None


def test_a_manager_tick_on_the_fake(store: LeaseStore) -> None:
    store.register_shards([ShardSpec(f"s{i}", (), i) for i in range(4)])
    manager = LeaseManager(store, "w1")
    gained: list[str] = []
    for _ in range(3):  # the first heartbeat makes the worker a member; then it takes the free shards
        result = manager.tick()
        assert not result.error
        gained += [g.shard_id for g in result.gained]
    assert sorted(gained) == ["s0", "s1", "s2", "s3"] and store.held_by("w1") == ["s0", "s1", "s2", "s3"]


def test_dlq_redis_destination(fake: fakeredis.FakeRedis) -> None:
    """The DLQ's Redis stream destination (send, list, get, delete, count), as on a real Redis."""
    test_destinations.test_redis_stream_send_list_delete(fake, "unit")
    test_destinations.test_redis_stream_is_trimmed_approximately(fake, "unit-trim")
