"""Fair share on a real Redis: convergence, joins, leaves, crashes, no oscillation."""

from __future__ import annotations

import time

import pytest
import redis

from leaser import LeaseManager, LeaseStore
from tests.protocol.helpers import Fleet, make_store, specs


@pytest.fixture
def store(redis_client: redis.Redis, group: str) -> LeaseStore:
    return make_store(redis_client, group, handoff_timeout_s=60.0)


def test_three_workers_share_twenty_shards_then_one_leaves(store: LeaseStore) -> None:
    store.register_shards(specs(20))
    fleet = Fleet(store, ["w1", "w2", "w3"])
    rounds = fleet.run_until_balanced(20)
    assert sorted(fleet.counts().values()) == [6, 7, 7]
    assert rounds <= 4
    held = [set(m.held()) for m in fleet.managers.values()]
    assert set().union(*held) == {s.shard_id for s in specs(20)}
    assert sum(len(h) for h in held) == 20  # nobody holds a lease twice

    moves_before = fleet.moves
    fleet.leave("w2")
    fleet.run_until_balanced(20)
    assert sorted(fleet.counts().values()) == [10, 10]
    # Only the leaver's leases moved.
    assert fleet.moves - moves_before <= 7


def test_a_newcomer_reaches_its_share_by_handoff_within_a_few_rounds(store: LeaseStore) -> None:
    store.register_shards(specs(20))
    fleet = Fleet(store, ["w1", "w2"])
    fleet.run_until_balanced(20)
    moves_before = fleet.moves
    fleet.add("w3")
    rounds = fleet.run_until_balanced(20)
    assert rounds <= 4
    assert sorted(fleet.counts().values()) == [6, 7, 7]
    assert fleet.moves - moves_before == fleet.counts()["w3"]  # only the leases the newcomer needed moved


def test_a_crashed_workers_leases_are_taken_over(store: LeaseStore) -> None:
    store.register_shards(specs(21))
    fleet = Fleet(store, ["w1", "w2", "w3"])
    fleet.run_until_balanced(21)
    fleet.crash("w3")
    fleet.run_until_balanced(21)
    assert sorted(fleet.counts().values()) == [10, 11]


def test_a_balanced_fleet_stays_still(store: LeaseStore) -> None:
    store.register_shards(specs(20))
    fleet = Fleet(store, ["w1", "w2", "w3"])
    fleet.run_until_balanced(20)
    before = {name: set(m.held()) for name, m in fleet.managers.items()}
    moves = fleet.moves
    for _ in range(5):
        fleet.round()
    assert fleet.moves == moves
    assert {name: set(m.held()) for name, m in fleet.managers.items()} == before


def test_an_owner_that_never_hands_over_loses_leases_after_the_timeout(
    redis_client: redis.Redis, group: str
) -> None:
    store = make_store(redis_client, group, handoff_timeout_s=0.5)
    store.register_shards(specs(10))
    fleet = Fleet(store, ["stuck"])
    fleet.run_until_balanced(10)
    stuck = fleet.managers["stuck"]
    clock = [0.0]
    taker = LeaseManager(store, "taker", clock=lambda: clock[0])
    taker.tick()  # joins
    stuck.tick()  # sees the newcomer; the ask below is never answered: it never releases
    taker.tick()  # asks
    assert taker.waiting_for_handoff
    stuck.tick()  # offers 5 leases to the taker, never releases them
    clock[0] = 1.0
    assert taker.tick().gained == []  # the offers are younger than the timeout on Redis time
    time.sleep(0.5)
    gained = taker.tick().gained  # timeout passed: hard take-over
    assert len(gained) == 5 and all(a.how == "takeover" for a in gained)
    lost = stuck.tick().lost
    assert set(lost) == {a.shard_id for a in gained}


def test_max_leases_caps_a_worker(redis_client: redis.Redis, group: str) -> None:
    store = make_store(redis_client, group, max_leases=3)
    store.register_shards(specs(10))
    fleet = Fleet(store, ["w1", "w2"])
    for _ in range(3):
        fleet.round()
    assert fleet.counts() == {"w1": 3, "w2": 3}
