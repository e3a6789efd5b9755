"""The lease layer's failure paths on a real Redis: replies lost after a script ran, ticks that fail
part-way, forced take-overs of slow handoffs, and the local checks a worker makes before acting.

Each test names the state a failure leaves behind and checks that the protocol converges from it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from leaser import CoordinationUnavailable, LeaseLostError, LeaseManager, LeaseStore, ShardSpec
from tests.protocol.helpers import make_store, specs


@pytest.fixture
def store(redis_client: redis.Redis, group: str) -> LeaseStore:
    return make_store(redis_client, group)


# -- a reply lost after the script ran (a client retry runs it again) ------------------------------

def test_an_acquire_run_twice_reclaims_with_a_new_token_and_fences_the_first(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    [first], _ = store.acquire("w1", ["a"])  # the caller never saw this reply
    [again], refused = store.acquire("w1", ["a"])  # its retry
    assert refused == {}
    assert again.how == "reclaimed" and again.token > first.token
    with pytest.raises(LeaseLostError):
        store.checkpoint("w1", "a", first.token, "5")
    assert store.checkpoint("w1", "a", again.token, "5")
    assert store.members() == {} or store.members()["w1"] == 1  # the load is counted once


def test_a_lease_acquired_without_the_reply_is_reclaimed_at_the_next_tick(
    store: LeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.register_shards(specs(2))
    manager = LeaseManager(store, "w1")
    manager.tick()  # joins
    real_acquire = store.acquire

    def reply_lost(*args: Any, **kwargs: Any) -> Any:
        real_acquire(*args, **kwargs)  # the scripts ran in Redis...
        raise CoordinationUnavailable("Redis unavailable: connection reset")  # ...but the reply was lost

    monkeypatch.setattr(store, "acquire", reply_lost)
    result = manager.tick()
    assert result.error and result.gained == [] and manager.held() == {}
    monkeypatch.undo()
    result = manager.tick()  # the heartbeat names them unclaimed: reclaimed with new tokens
    assert sorted((a.shard_id, a.how) for a in result.gained) == [("s00000", "reclaimed"), ("s00001", "reclaimed")]
    assert set(manager.held()) == {"s00000", "s00001"}
    assert store.heartbeat("w1", {s: a.token for s, a in manager.held().items()}).lost == {}


def test_leases_of_another_process_with_the_same_worker_id_are_not_reclaimed(
    store: LeaseStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.register_shards(specs(2))
    manager = LeaseManager(store, "w1")
    manager.tick()
    [other], _ = store.acquire("w1", ["s00000"])  # a second process misconfigured with the same id
    result = manager.tick()
    assert "s00000" not in {a.shard_id for a in result.gained}
    assert store.lease("s00000").token == other.token  # type: ignore[union-attr]
    assert "same --worker-id" in caplog.text


def test_an_end_shard_run_twice_answers_ok_the_second_time(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("p"), ShardSpec("c", ("p",))])
    [p], _ = store.acquire("w1", ["p"])
    assert store.end_shard("w1", "p", p.token) == ["c"]
    assert store.end_shard("w1", "p", p.token) == []  # the retry: no spurious lease-lost
    with pytest.raises(LeaseLostError):
        store.end_shard("w2", "p", p.token)  # another worker still cannot end it


def test_end_shard_keeps_the_lease_when_redis_fails(store: LeaseStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.register_shards([ShardSpec("p")])
    manager = LeaseManager(store, "w1")
    manager.tick()
    manager.tick()
    [acquired] = manager.held().values()

    def unavailable(*args: object, **kwargs: object) -> list[str]:
        raise CoordinationUnavailable("Redis unavailable: test")

    monkeypatch.setattr(store, "end_shard", unavailable)
    with pytest.raises(CoordinationUnavailable):
        manager.end_shard("p", token=acquired.token)
    assert set(manager.held()) == {"p"}  # still held and renewed: the call can be repeated
    monkeypatch.undo()
    assert manager.tick().lost == {}
    assert manager.end_shard("p", token=acquired.token) == []
    assert manager.held() == {}


# -- a tick that fails part-way --------------------------------------------------------------------

def test_a_tick_that_fails_after_acquiring_still_reports_what_it_gained(
    store: LeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.register_shards(specs(4))
    other = LeaseManager(store, "w0")
    other.tick()
    other.tick()  # w0 holds all 4
    manager = LeaseManager(store, "w1")
    manager.tick()  # joins
    store.release("w0", "s00000", other.held()["s00000"].token)
    other.tick()

    def ask_fails(*args: object, **kwargs: object) -> None:
        raise CoordinationUnavailable("Redis unavailable: test")

    monkeypatch.setattr(store, "ask", ask_fails)
    result = manager.tick()  # takes the free lease, then asking w0 for another fails
    assert result.error and "test" in result.error
    assert [a.shard_id for a in result.gained] == ["s00000"]
    assert set(manager.held()) == {"s00000"}


# -- handoffs slower than the handoff timeout -------------------------------------------------------

def test_a_forced_takeover_takes_exactly_the_offered_lease_and_settles_once(
    redis_client: redis.Redis, group: str
) -> None:
    store = make_store(redis_client, group, handoff_timeout_s=0.5)
    store.register_shards(specs(4))
    clock = [0.0]
    owner = LeaseManager(store, "owner", clock=lambda: clock[0])
    owner.tick()
    owner.tick()
    assert len(owner.held()) == 4
    taker = LeaseManager(store, "taker", clock=lambda: clock[0])
    taker.tick()  # joins
    owner.tick()
    taker.tick()  # asks for 2
    gives = owner.tick().give  # offers 2, but its batches are slow: it does not release yet
    offered = sorted(shard for shard, _ in gives)
    assert len(offered) == 2 and store.offered("owner", "taker") == offered
    clock[0] = 1.0
    assert taker.tick().gained == []  # the taker's clock says time is up, Redis says the offer is too young
    time.sleep(0.5)
    taken = sorted(a.shard_id for a in taker.tick().gained)
    assert taken == offered  # exactly the shards under handoff, not the owner's lowest ids
    # The owner's slow batches finish: its cooperative release is refused by the token.
    for shard, to in gives:
        owner.release(shard, to=to)
    assert store.lease(offered[0]).owner == "taker"  # type: ignore[union-attr]
    for _ in range(6):  # and nothing moves any more
        clock[0] += 1.0
        assert owner.tick().give == [] and taker.tick().gained == []
    assert len(owner.held()) == 2 and sorted(taker.held()) == offered


# -- the checks a worker makes right before acting --------------------------------------------------

def test_may_act_needs_the_same_token_and_a_recent_renewal(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    clock = [100.0]
    manager = LeaseManager(store, "w1", clock=lambda: clock[0])
    manager.tick()
    [a] = manager.tick().gained
    assert manager.may_act("a", a.token) is None
    assert manager.may_act("a", a.token - 1) is not None  # an older acquisition's consumer
    clock[0] += store.config.lease_ttl_s - manager.safety_margin_s + 0.01  # paused: no renewal since
    assert "renewal" in (manager.may_act("a", a.token) or "")
    manager.tick()
    assert manager.may_act("a", a.token) is None


def test_a_lease_lost_at_a_heartbeat_is_forgotten_before_the_renewal_time_moves(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    clock = [0.0]
    manager = LeaseManager(store, "w1", clock=lambda: clock[0])
    manager.tick()
    [a] = manager.tick().gained
    clock[0] = 10.0  # paused past the TTL; meanwhile another worker took the lease
    store.client.hset(store.keys.lease("a"), "expires_ms", 1)
    store.acquire("w2", ["a"])
    assert manager.tick().lost == {"a": "taken by w2"}
    assert manager.may_act("a", a.token) == "lease not held by this worker"


# -- where a shard without a checkpoint starts --------------------------------------------------------

def test_only_shards_of_the_first_listing_start_at_the_initial_position(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("open"), ShardSpec("closed")])
    assert store.mark_listed() is True
    assert store.mark_listed() is False
    store.register_shards([ShardSpec("child", ("open",)), ShardSpec("orphan", ("gone",)),
                           ShardSpec("found-at-end", ("closed",), read_from_start=True)])
    assert {lease.shard_id: lease.read_from_start for lease in store.leases()} == {
        "open": False, "closed": False, "child": True, "orphan": True, "found-at-end": True,
    }
    acquired, _ = store.acquire("w1", ["closed", "orphan"])
    assert {a.shard_id: a.read_from_start for a in acquired} == {"closed": False, "orphan": True}


def test_an_offer_whose_reply_was_lost_is_withdrawn_at_the_next_tick(
    store: LeaseStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.register_shards(specs(4))
    owner = LeaseManager(store, "owner")
    owner.tick()
    owner.tick()
    taker = LeaseManager(store, "taker")
    taker.tick()
    owner.tick()
    taker.tick()  # asks for 2
    real_offer = store.offer

    def reply_lost(*args: Any, **kwargs: Any) -> None:
        real_offer(*args, **kwargs)
        raise CoordinationUnavailable("Redis unavailable: connection reset")

    monkeypatch.setattr(store, "offer", reply_lost)
    result = owner.tick()
    assert result.error and result.give == [] and owner.giving() == {}
    assert len(store.offered("owner", "taker")) == 1  # written in Redis, unknown to the owner
    monkeypatch.undo()
    owner.leave()  # stop giving, so only the withdrawal is observed
    owner._leaving = False
    owner.tick()
    assert all(s in owner.giving() for s in store.offered("owner", "taker"))  # no offer the owner does not act on


def test_redis_refusing_commands_is_retryable_not_fatal(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a")])
    store.client.config_set("maxmemory-policy", "noeviction")
    store.client.config_set("maxmemory", "1")
    try:
        with pytest.raises(CoordinationUnavailable, match="refuses"):
            store.acquire("w1", ["a"])
    finally:
        store.client.config_set("maxmemory", "0")
    [a], _ = store.acquire("w1", ["a"])
    assert a.how == "free"


# -- a process exiting at once (a second signal) --------------------------------------------------

def test_leases_left_to_expire_are_not_released_and_another_worker_takes_them_after_the_ttl(
    store: LeaseStore,
) -> None:
    """After ``leave_leases_to_expire`` a release (plain or a handoff) writes nothing: the lease stays with
    the exiting worker until ``lease_ttl_s`` passes on Redis time, then another worker acquires it."""
    store.register_shards(specs(2))
    exiting = LeaseManager(store, "w1")
    exiting.tick()
    gained = {a.shard_id for a in exiting.tick().gained}
    assert gained == {"s00000", "s00001"}
    exiting.leave_leases_to_expire()
    assert exiting.release("s00000") is False
    assert exiting.release("s00001", to="w2") is False
    for shard in sorted(gained):
        lease = store.lease(shard)
        assert lease is not None and lease.owner == "w1" and lease.offered_to == ""
    other = LeaseManager(store, "w2")
    other.tick()
    assert other.tick().gained == []  # held until it expires
    time.sleep(store.config.lease_ttl_s + 0.2)
    deadline = time.monotonic() + 5
    taken: set[str] = set()
    while taken != gained and time.monotonic() < deadline:
        taken |= {a.shard_id for a in other.tick().gained}
        time.sleep(0.1)
    assert taken == gained


def test_a_shard_left_to_expire_is_not_ended_and_its_child_stays_blocked(store: LeaseStore) -> None:
    """After ``leave_leases_to_expire`` an end_shard writes nothing (None): the parent stays held by the exiting
    worker, not ended, so its child cannot be acquired before the parent's lease expires and is ended by its next
    owner."""
    store.register_shards([ShardSpec("p"), ShardSpec("c", parent_ids=("p",))])
    exiting = LeaseManager(store, "w1")
    exiting.tick()
    exiting.tick()
    assert set(exiting.held()) == {"p"}
    exiting.leave_leases_to_expire()
    assert exiting.end_shard("p") is None
    lease = store.lease("p")
    assert lease is not None and lease.owner == "w1" and lease.state != "ended" and lease.checkpoint == ""
    other = LeaseManager(store, "w2")
    other.tick()
    assert other.tick().gained == []  # neither the parent (held) nor the child (blocked)
    time.sleep(store.config.lease_ttl_s + 0.2)
    deadline = time.monotonic() + 5
    taken: set[str] = set()
    while "p" not in taken and time.monotonic() < deadline:
        taken |= {a.shard_id for a in other.tick().gained}
        time.sleep(0.1)
    assert taken == {"p"}
    assert other.end_shard("p") == ["c"]
