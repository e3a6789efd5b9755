"""Repositioning a group (rewind, import) on a real Redis: fencing, lineage, epochs, lost replies."""

from __future__ import annotations

import uuid

import pytest
import redis

from leaser import (
    SHARD_END,
    SKIP_BEFORE_NOW,
    ConcurrentUpdate,
    LeaseLostError,
    LeaseManager,
    LeaseState,
    LeaseStore,
    Position,
    ShardSpec,
)
from tests.protocol.helpers import make_store


@pytest.fixture
def store(redis_client: redis.Redis, group: str) -> LeaseStore:
    return make_store(redis_client, group)


def _reposition(store: LeaseStore, positions: list[Position], request_id: str | None = None,
                epoch: int | None = None) -> object:
    return store.reposition(positions, expected_epoch=store.epoch() if epoch is None else epoch,
                            request_id=request_id or uuid.uuid4().hex, record={"what": "test"})


def test_a_rewind_fences_the_running_owner_and_the_next_owner_starts_from_the_new_position(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a", (), 1)])
    owner = LeaseManager(store, "w1")
    [got], _ = store.acquire("w1", ["a"])
    owner._held["a"] = got  # as if its tick had acquired it
    store.checkpoint("w1", "a", got.token, "100")

    result = _reposition(store, [Position("a", skip_before_ms=1_700_000_000_000)])

    assert result.fenced == ("a",) and result.epoch == 1  # type: ignore[attr-defined]
    # Every fenced write of the old acquisition is refused, so it cannot undo the rewind.
    with pytest.raises(LeaseLostError):
        store.checkpoint("w1", "a", got.token, "200")
    with pytest.raises(LeaseLostError):
        store.end_shard("w1", "a", got.token)
    with pytest.raises(LeaseLostError):
        store.begin("w1", "a", got.token)
    with pytest.raises(LeaseLostError):
        store.release("w1", "a", got.token)
    assert owner.tick().lost == {"a": "taken by nobody"}
    lease = store.lease("a")
    assert lease is not None
    assert (lease.state, lease.owner, lease.checkpoint, lease.skip_before_ms) == (LeaseState.READY, "", "",
                                                                                  1_700_000_000_000)
    assert "a" in store.candidates(10)
    [again], _ = store.acquire("w2", ["a"])
    assert (again.checkpoint, again.read_from_start, again.skip_before_ms) == ("", True, 1_700_000_000_000)
    assert again.token > got.token


def test_the_history_entry_names_the_fence_every_later_acquisition_is_above(store: LeaseStore) -> None:
    """``fence_token`` is the token counter as the change left it: the moved lease's fresh token, and every
    token drawn before the change, are at or below it; every acquisition after it is above."""
    store.register_shards([ShardSpec("a", (), 1), ShardSpec("b", (), 2)])
    [before], _ = store.acquire("w1", ["b"])  # not moved: its owner keeps it, below the fence
    _reposition(store, [Position("a", checkpoint="50")])
    fence = store.history(1)[0]["fence_token"]
    lease = store.lease("a")
    assert lease is not None and before.token < lease.token
    assert type(fence) is int and fence == lease.token  # exact: the last token the change drew
    [after], _ = store.acquire("w2", ["a"])
    assert after.token > fence


def test_a_lost_reply_retried_with_the_same_request_changes_nothing_more(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a", (), 1)])
    [got], _ = store.acquire("w1", ["a"])
    store.checkpoint("w1", "a", got.token, "100")
    first = store.reposition([Position("a", checkpoint="50")], expected_epoch=0, request_id="r-1",
                             record={"what": "rewind"})
    # The fleet moves on, then the caller retries the call whose reply it never saw.
    [again], _ = store.acquire("w2", ["a"])
    store.checkpoint("w2", "a", again.token, "60")
    retried = store.reposition([Position("a", checkpoint="50")], expected_epoch=0, request_id="r-1",
                               record={"what": "rewind"})
    assert (first.repeated, retried.repeated, retried.epoch) == (False, True, 1)
    lease = store.lease("a")
    assert lease is not None and (lease.owner, lease.checkpoint) == ("w2", "60")
    assert [h["what"] for h in store.history()] == ["rewind"]


def test_a_lost_reply_retried_after_another_operators_change_is_known_as_applied(store: LeaseStore) -> None:
    # The retry finds the epoch moved by another operator in between: it must not say "nothing changed,
    # plan again" (the operator would apply it a second time, over the other change).
    store.register_shards([ShardSpec("a", (), 1)])
    first = store.reposition([Position("a", checkpoint="50")], expected_epoch=0, request_id="r-1",
                             record={"what": "rewind"})
    _reposition(store, [Position("a", checkpoint="70")], request_id="r-2")
    retried = store.reposition([Position("a", checkpoint="50")], expected_epoch=0, request_id="r-1",
                               record={"what": "rewind"})
    assert (first.repeated, retried.repeated) == (False, True)
    lease = store.lease("a")
    assert lease is not None and lease.checkpoint == "70" and store.epoch() == 2


def test_a_plan_made_before_another_reposition_is_refused_and_changes_nothing(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a", (), 1)])
    _reposition(store, [Position("a", checkpoint="70")])
    with pytest.raises(ConcurrentUpdate, match="plan again"):
        _reposition(store, [Position("a", checkpoint="10")], epoch=0)
    lease = store.lease("a")
    assert lease is not None and lease.checkpoint == "70"
    assert store.epoch() == 1


def test_reopening_an_ended_parent_blocks_its_running_child_until_the_parent_ends_again(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("p", (), 1), ShardSpec("c", ("p",), 2)])
    [p], _ = store.acquire("w1", ["p"])
    store.end_shard("w1", "p", p.token)
    [c], _ = store.acquire("w2", ["c"])
    store.checkpoint("w2", "c", c.token, "500")

    result = _reposition(store, [Position("p", checkpoint="10")])

    assert result.fenced == ("c",)  # type: ignore[attr-defined]
    parent, child = store.lease("p"), store.lease("c")
    assert parent is not None and child is not None
    assert (parent.state, parent.checkpoint) == (LeaseState.READY, "10")
    assert (child.state, child.owner, child.checkpoint) == (LeaseState.BLOCKED, "", "500")
    assert store.candidates(10) == ["p"]
    with pytest.raises(LeaseLostError):
        store.checkpoint("w2", "c", c.token, "600")
    assert store.acquire("w3", ["c"])[1] == {"c": "a parent has not ended"}
    [p2], _ = store.acquire("w3", ["p"])
    assert store.end_shard("w3", "p", p2.token) == ["c"]
    [c2], _ = store.acquire("w3", ["c"])
    assert c2.checkpoint == "500"


def test_import_into_an_empty_group_registers_lineage_and_ended_shards(store: LeaseStore) -> None:
    _reposition(store, [
        Position("c", checkpoint="900", parent_ids=("p",), order=2),
        Position("p", checkpoint=SHARD_END, order=1),
        Position("d", checkpoint="", skip_before_ms=SKIP_BEFORE_NOW, parent_ids=("c",), order=3),
    ])
    p, c, d = store.lease("p"), store.lease("c"), store.lease("d")
    assert p is not None and c is not None and d is not None
    assert (p.state, p.checkpoint, p.child_ids) == (LeaseState.ENDED, SHARD_END, ("c",))
    assert (c.state, c.checkpoint, c.child_ids) == (LeaseState.READY, "900", ("d",))
    assert d.state == LeaseState.BLOCKED and d.skip_before_ms >= store.server_time_ms() - 60_000
    # The leader's next listing finds them registered; children end up ready when their parent ends.
    assert store.register_shards([ShardSpec("p", (), 1), ShardSpec("c", ("p",), 2), ShardSpec("d", ("c",), 3)]) == {
        "p": "exists", "c": "exists", "d": "exists"}
    [got], _ = store.acquire("w1", ["c"])
    assert got.checkpoint == "900"
    assert store.end_shard("w1", "c", got.token) == ["d"]


def test_a_cleaned_up_shard_is_registered_again_when_set(store: LeaseStore, redis_client: redis.Redis) -> None:
    store.register_shards([ShardSpec("a", (), 1)])
    redis_client.delete(store.keys.lease("a"))
    redis_client.zrem(store.keys.shards, "a")
    redis_client.zadd(store.keys.tombstones, {"a": 1})
    _reposition(store, [Position("a", order=1)])
    lease = store.lease("a")
    assert lease is not None and lease.state == LeaseState.READY
    assert redis_client.zscore(store.keys.tombstones, "a") is None


def test_an_owner_change_between_read_and_script_is_read_again(store: LeaseStore,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store.register_shards([ShardSpec("a", (), 1)])
    real = store._lineage_rows
    calls = []

    def stale_first(shards: list[str]) -> dict[str, dict[str, object]]:
        rows = real(shards)
        if not calls and "a" in rows:
            calls.append(1)
            store.acquire("w9", ["a"])  # someone acquires it after the read
        return rows

    monkeypatch.setattr(store, "_lineage_rows", stale_first)
    result = _reposition(store, [Position("a", checkpoint="5")])
    assert result.fenced == ("a",)  # type: ignore[attr-defined]
    lease = store.lease("a")
    assert lease is not None and (lease.owner, lease.checkpoint) == ("", "5")


def test_history_keeps_who_and_what_newest_first(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("a", (), 1)])
    store.record_history({"what": "export", "user": "ops"})
    _reposition(store, [Position("a")])
    history = store.history()
    assert [h["what"] for h in history] == ["test", "export"]
    assert history[0]["epoch"] == 1 and history[0]["at_ms"] > 0


def test_history_is_capped_and_newest_first(store: LeaseStore) -> None:
    from leaser.positions import HISTORY_KEPT

    for n in range(HISTORY_KEPT + 5):
        store.record_history({"what": f"export {n}"})
    history = store.history(limit=1000)
    assert len(history) == HISTORY_KEPT
    assert history[0]["what"] == f"export {HISTORY_KEPT + 4}" and history[-1]["what"] == "export 5"


def test_setting_a_parent_to_shard_end_lets_its_waiting_child_start(store: LeaseStore) -> None:
    store.register_shards([ShardSpec("p", (), 1), ShardSpec("c", ("p",), 2)])
    assert store.acquire("w1", ["c"])[1] == {"c": "a parent has not ended"}
    _reposition(store, [Position("p", checkpoint=SHARD_END)])
    child = store.lease("c")
    assert child is not None and child.state == LeaseState.READY
    assert store.candidates(10) == ["c"]


def test_a_cleaned_up_parent_set_again_holds_back_its_registered_child(
    store: LeaseStore, redis_client: redis.Redis
) -> None:
    store.register_shards([ShardSpec("p", (), 1), ShardSpec("c", ("p",), 2)])
    [p], _ = store.acquire("w1", ["p"])
    store.end_shard("w1", "p", p.token)
    [c], _ = store.acquire("w2", ["c"])
    store.checkpoint("w2", "c", c.token, "5")
    redis_client.delete(store.keys.lease("p"))  # cleaned up (as cleanup.lua would, with a tombstone)
    redis_client.zrem(store.keys.shards, "p")
    redis_client.zadd(store.keys.tombstones, {"p": 1})

    result = _reposition(store, [Position("p", checkpoint="10", order=1)])

    assert result.fenced == ("c",)  # type: ignore[attr-defined]
    parent, child = store.lease("p"), store.lease("c")
    assert parent is not None and child is not None
    assert (parent.state, parent.child_ids) == (LeaseState.READY, ("c",))
    assert (child.state, child.checkpoint) == (LeaseState.BLOCKED, "5")
    [p2], _ = store.acquire("w3", ["p"])
    assert store.end_shard("w3", "p", p2.token) == ["c"]
