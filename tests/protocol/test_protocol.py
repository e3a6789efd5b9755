"""The lease protocol on a real Redis: ownership, fencing, checkpoints, lineage, expiry."""

from __future__ import annotations

import time

import pytest
import redis

from leaser import SHARD_END, LeaseLostError, LeaseState, LeaseStore, ShardSpec
from tests.protocol.helpers import expire_now, make_store


@pytest.fixture
def store(redis_client: redis.Redis, group: str) -> LeaseStore:
    return make_store(redis_client, group)


def test_register_is_idempotent_and_keeps_state(store: LeaseStore) -> None:
    assert store.register_shards([ShardSpec("a", (), 1)]) == {"a": "ready"}
    [got], _ = store.acquire("w1", ["a"])
    store.checkpoint("w1", "a", got.token, "42")
    assert store.register_shards([ShardSpec("a", (), 1)]) == {"a": "exists"}
    lease = store.lease("a")
    assert lease is not None
    assert (lease.owner, lease.token, lease.checkpoint) == ("w1", got.token, "42")


def test_acquire_only_when_free_or_expired_and_tokens_grow(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    [first], _ = store.acquire("w1", ["a"])
    assert first.how == "free"
    acquired, refused = store.acquire("w2", ["a"])
    assert acquired == [] and refused == {"a": "owned by w1"}
    expire_now(store, "a")
    [second], _ = store.acquire("w2", ["a"])
    assert second.how == "expired" and second.previous_owner == "w1"
    assert second.token > first.token
    lease = store.lease("a")
    assert lease is not None and lease.owner == "w2" and lease.owner_switches == 2


def test_stale_token_can_neither_checkpoint_nor_end(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a"), ShardSpec("b", ("a",))])
    [old], _ = store.acquire("w1", ["a"])
    store.checkpoint("w1", "a", old.token, "100")
    expire_now(store, "a")
    [new], _ = store.acquire("w2", ["a"])
    before = store.lease("a")
    with pytest.raises(LeaseLostError, match=r"stale|owned by w2"):
        store.checkpoint("w1", "a", old.token, "200")
    with pytest.raises(LeaseLostError):
        store.end_shard("w1", "a", old.token)
    with pytest.raises(LeaseLostError):
        store.release("w1", "a", old.token)
    # The same worker id with an old token is refused too (a process restarted with a stale view).
    with pytest.raises(LeaseLostError, match="stale"):
        store.checkpoint("w2", "a", old.token, "200")
    assert store.lease("a") == before
    assert store.acquire("w3", ["b"])[1] == {"b": "a parent has not ended"}
    assert store.checkpoint("w2", "a", new.token, "200") is True


def test_expired_lease_refuses_writes_even_before_anyone_takes_it(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    [got], _ = store.acquire("w1", ["a"])
    expire_now(store, "a")
    with pytest.raises(LeaseLostError, match="expired"):
        store.checkpoint("w1", "a", got.token, "1")


@pytest.mark.parametrize(
    ("first", "second", "moved"),
    [
        ("99999999999999999999", "100000000000000000000", True),  # more digits is larger
        ("100000000000000000000", "99999999999999999999", False),  # fewer digits never wins
        ("1" * 40, "9" * 39, False),
        ("9" * 39, "1" * 40, True),
        ("0000123", "124", True),
        ("500", "500", False),
    ],
)
def test_checkpoint_never_moves_backwards(store: LeaseStore, first: str, second: str, moved: bool) -> None:
    store.register_shards([ShardSpec("a")])
    [got], _ = store.acquire("w1", ["a"])
    assert store.checkpoint("w1", "a", got.token, first) is True
    assert store.checkpoint("w1", "a", got.token, second) is moved
    lease = store.lease("a")
    assert lease is not None
    assert int(lease.checkpoint) == max(int(first), int(second))


def test_checkpoint_rejects_malformed_sequence_numbers(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    [got], _ = store.acquire("w1", ["a"])
    for bad in ["", "12a", "1" * 41, "-5", SHARD_END]:
        with pytest.raises(ValueError):
            store.checkpoint("w1", "a", got.token, bad)


def test_children_wait_for_their_parents_and_start_right_after(store: LeaseStore) -> None:
    # a splits into b and c; c rolls over into d.
    store.register_shards(
        [ShardSpec("d", ("c",), 4), ShardSpec("b", ("a",), 2), ShardSpec("c", ("a",), 3), ShardSpec("a", (), 1)]
    )
    states = {lease.shard_id: lease.state for lease in store.leases()}
    assert states == {"a": "ready", "b": "blocked", "c": "blocked", "d": "blocked"}
    assert store.candidates(10) == ["a"]
    assert store.acquire("w1", ["b", "c", "d"])[0] == []
    [a], _ = store.acquire("w1", ["a"])
    assert sorted(store.end_shard("w1", "a", a.token)) == ["b", "c"]
    parent = store.lease("a")
    assert parent is not None and parent.state == LeaseState.ENDED and parent.checkpoint == SHARD_END
    acquired, refused = store.acquire("w2", ["b", "c", "d"])
    assert sorted(x.shard_id for x in acquired) == ["b", "c"] and set(refused) == {"d"}
    c = next(x for x in acquired if x.shard_id == "c")
    assert store.end_shard("w2", "c", c.token) == ["d"]
    assert [x.shard_id for x in store.acquire("w3", ["d"])[0]] == ["d"]


def test_a_child_registered_after_its_parent_ended_is_ready(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    [a], _ = store.acquire("w1", ["a"])
    store.end_shard("w1", "a", a.token)
    assert store.register_shards([ShardSpec("b", ("a",))]) == {"b": "ready"}


def test_unknown_parent_does_not_block_its_child(store: LeaseStore) -> None:
    assert store.register_shards([ShardSpec("child", ("trimmed-long-ago",))]) == {"child": "ready"}
    assert [x.shard_id for x in store.acquire("w1", ["child"])[0]] == ["child"]


def test_ended_shard_cannot_be_acquired_or_checkpointed(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    [a], _ = store.acquire("w1", ["a"])
    store.end_shard("w1", "a", a.token)
    assert store.acquire("w2", ["a"]) == ([], {"a": "shard ended"})
    with pytest.raises(LeaseLostError, match="ended"):
        store.checkpoint("w1", "a", a.token, "5")


def test_release_lets_another_worker_take_it_at_once(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    [a], _ = store.acquire("w1", ["a"])
    store.checkpoint("w1", "a", a.token, "77")
    store.release("w1", "a", a.token)
    [b], _ = store.acquire("w2", ["a"])
    assert b.how == "free" and b.checkpoint == "77" and b.token > a.token


def test_handoff_reserves_the_lease_for_the_taker(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    [a], _ = store.acquire("w1", ["a"])
    store.ask("w2", "w1", 1)
    assert store.heartbeat("w1", {"a": a.token}).asks == {"w2": 1}
    store.release("w1", "a", a.token, to="w2")
    assert store.heartbeat("w1", {}).asks == {}
    assert store.grants("w2") == ["a"]
    assert store.acquire("w3", ["a"]) == ([], {"a": "reserved for w2"})
    [b], _ = store.acquire("w2", ["a"])
    assert b.how == "handoff" and store.grants("w2") == []


def test_hard_takeover_from_a_live_owner_fences_it(redis_client: redis.Redis, group: str) -> None:
    store = make_store(redis_client, group, handoff_timeout_s=0.3)
    store.register_shards([ShardSpec("a"), ShardSpec("b")])
    [a, other], _ = store.acquire("w1", ["a", "b"])
    assert store.held_by("w1") == ["a", "b"]
    # Only a lease its owner offered to the taker can be taken by force, and only that one.
    assert store.acquire("w2", ["a"], take_from="w1") == ([], {"a": "not offered to w2"})
    store.offer("w1", "a", a.token, "w2")
    assert store.offered("w1", "w2") == ["a"] and store.offered("w1", "w3") == []
    assert store.acquire("w2", ["b"], take_from="w1") == ([], {"b": "not offered to w2"})
    # ... and only once the offer is handoff_timeout_s old on Redis time: the owner had its chance.
    assert store.acquire("w2", ["a"], take_from="w1") == ([], {"a": "offered too recently"})
    time.sleep(0.35)
    [b], _ = store.acquire("w2", ["a"], take_from="w1")
    assert b.how == "takeover" and b.token > a.token
    assert store.held_by("w1") == ["b"] and store.held_by("w2") == ["a"]
    assert store.heartbeat("w1", {"a": a.token, "b": other.token}).lost == {"a": "taken by w2"}
    with pytest.raises(LeaseLostError):
        store.checkpoint("w1", "a", a.token, "1")
    # The owner's late cooperative release is refused by the token: the give settles one way only.
    with pytest.raises(LeaseLostError):
        store.release("w1", "a", a.token, to="w2")
    assert store.lease("a").owner == "w2"  # type: ignore[union-attr]


def test_heartbeat_renews_on_redis_time_not_the_worker_clock(
    redis_client: redis.Redis, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(redis_client, group, lease_ttl_s=1.0, renew_interval_s=0.3)
    store.register_shards([ShardSpec("a")])
    [a], _ = store.acquire("w1", ["a"])
    # A worker whose clock is a day off changes nothing: no expiry is computed from it.
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 86400)
    lease = store.lease("a")
    assert lease is not None
    assert abs(lease.expires_ms - (store.server_time_ms() + 1000)) < 500
    assert store.heartbeat("w1", {"a": a.token}).lost == {}
    assert store.acquire("w2", ["a"])[0] == []
    monkeypatch.undo()
    time.sleep(1.2)  # one TTL of Redis time without renewal
    assert store.heartbeat("w1", {"a": a.token}).lost == {"a": "expired"}
    assert [x.how for x in store.acquire("w2", ["a"])[0]] == ["expired"]


def test_membership_drops_dead_workers_after_their_ttl(redis_client: redis.Redis, group: str) -> None:
    store = make_store(redis_client, group, lease_ttl_s=1.0, renew_interval_s=0.3)
    store.heartbeat("w1", {})
    assert set(store.heartbeat("w2", {}).members) == {"w1", "w2"}
    time.sleep(1.1)
    assert set(store.heartbeat("w2", {}).members) == {"w2"}
    assert store.members() == {"w2": 0}
    store.heartbeat("w2", {}, leaving=True)
    assert store.members() == {}


def test_one_leader_at_a_time_and_succession(redis_client: redis.Redis, group: str) -> None:
    store = make_store(redis_client, group, lease_ttl_s=1.0, renew_interval_s=0.3)
    first = store.heartbeat("w1", {})
    second = store.heartbeat("w2", {})
    assert first.leader == second.leader == "w1"
    store.heartbeat("w1", {}, leaving=True)  # a graceful leader resigns
    third = store.heartbeat("w2", {})
    assert third.leader == "w2" and third.leader_token > first.leader_token
    time.sleep(1.1)  # w2 dies silently: after one TTL of Redis time, w3 takes over
    assert store.heartbeat("w3", {}).leader == "w3"


def test_cleanup_waits_for_children_and_leaves_a_tombstone(redis_client: redis.Redis, group: str) -> None:
    store = make_store(redis_client, group, ended_retention_s=0.001, orphan_retention_s=3600)
    store.register_shards([ShardSpec("p", (), 1), ShardSpec("c1", ("p",), 2), ShardSpec("c2", ("p",), 3)])
    [p], _ = store.acquire("w1", ["p"])
    store.end_shard("w1", "p", p.token)
    acquired, _ = store.acquire("w1", ["c1", "c2"])
    time.sleep(0.01)
    assert store.cleanup() == []  # children have not progressed past their start
    c1 = next(a for a in acquired if a.shard_id == "c1")
    c2 = next(a for a in acquired if a.shard_id == "c2")
    store.checkpoint("w1", "c1", c1.token, "10")
    assert store.cleanup() == []  # c2 still at its start
    store.checkpoint("w1", "c2", c2.token, "11")
    assert store.cleanup() == ["p"]
    assert store.lease("p") is None
    # A listing that still shows the parent cannot register it again (that would replay it).
    assert store.register_shards([ShardSpec("p", (), 1)]) == {"p": "tombstoned"}


def test_cleanup_keeps_ended_leases_without_children_for_the_orphan_retention(
    redis_client: redis.Redis, group: str
) -> None:
    store = make_store(redis_client, group, ended_retention_s=0.001, orphan_retention_s=3600)
    store.register_shards([ShardSpec("last")])
    [a], _ = store.acquire("w1", ["last"])
    store.end_shard("w1", "last", a.token)
    time.sleep(0.01)
    assert store.cleanup() == []
    soon = make_store(redis_client, store.group, ended_retention_s=0.001, orphan_retention_s=0.001)
    assert soon.cleanup() == ["last"]


def test_unfinished_leases_are_never_cleaned_up(redis_client: redis.Redis, group: str) -> None:
    store = make_store(redis_client, group, ended_retention_s=0.001, orphan_retention_s=0.001)
    store.register_shards([ShardSpec("a")])
    store.acquire("w1", ["a"])
    time.sleep(0.01)
    assert store.cleanup() == []
    assert store.lease("a") is not None


def test_registration_orders_parents_first_in_one_batch(store: LeaseStore) -> None:
    chain = [ShardSpec(f"s{i}", (f"s{i - 1}",) if i else (), float(100 - i)) for i in range(30)]
    result = store.register_shards(reversed(chain))
    assert result["s0"] == "ready"
    assert all(result[f"s{i}"] == "blocked" for i in range(1, 30))


def test_a_group_reset_is_detected(redis_client: redis.Redis, group: str) -> None:
    store = make_store(redis_client, group)
    first = store.heartbeat("w1", {})
    redis_client.delete(store.keys.meta)
    time.sleep(0.002)
    assert store.heartbeat("w1", {}).created_ms != first.created_ms
