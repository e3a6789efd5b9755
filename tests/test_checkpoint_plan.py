"""Rewind plans (pure): which shards move where, and why."""

from __future__ import annotations

import dataclasses

import pytest

from leaser import SHARD_END, SKIP_BEFORE_NOW, ConfigError, Lease, LeaseState
from worker.checkpoints.plan import Target, plan_rewind
from worker.reading.streams import Shard

NOW = 1_800_000_000_000
T = NOW - 3_600_000


def _lease(shard_id: str, state: LeaseState, checkpoint: str = "", ended_ms: int = 0,
           parents: tuple[str, ...] = ()) -> Lease:
    return Lease(shard_id, parents, (), 0.0, state, "", 0, 0, checkpoint, 0, "", 0, "", False, 0, 0, 0, 0, 0, ended_ms)


def _id(created_ms: int, tag: str) -> str:
    return f"shardId-{created_ms:020d}-{tag}"


OLD_ENDED = _id(T - 7_200_000, "aaaa0001")  # ended before T
ENDED_AFTER = _id(T - 7_200_000, "aaaa0002")  # open at T, ended since
OPEN = _id(T + 30_000, "aaaa0003")  # child of ENDED_AFTER (so that one closed after T), open
NEW = _id(T + 60_000, "aaaa0004")  # created after T, not registered yet
GONE = _id(T - 90_000_000, "aaaa0005")  # trimmed: no longer listed
CLEANED = _id(T - 9_000_000, "aaaa0006")  # closed long before T, its lease cleaned up since
CLEANED_CHILD = _id(T - 3_600_000, "aaaa0007")  # its child, created an hour before T, ended after T

SHARDS = [Shard(OLD_ENDED, None, "10", "20"), Shard(ENDED_AFTER, None, "30", "40"),
          Shard(OPEN, ENDED_AFTER, "50", None), Shard(NEW, OPEN, "60", None), Shard(CLEANED, None, "1", "9"),
          Shard(CLEANED_CHILD, CLEANED, "70", "80")]
LEASES = [_lease(OLD_ENDED, LeaseState.ENDED, SHARD_END, ended_ms=T - 1), _lease(ENDED_AFTER, LeaseState.ENDED,
          SHARD_END, ended_ms=T + 1), _lease(OPEN, LeaseState.READY, "55", parents=(ENDED_AFTER,)),
          _lease(GONE, LeaseState.ENDED, SHARD_END, ended_ms=1),
          _lease(CLEANED_CHILD, LeaseState.ENDED, SHARD_END, ended_ms=T + 5, parents=(CLEANED,))]


def test_to_time_leaves_what_ended_before_it_reopens_the_rest_and_reads_later_shards_whole() -> None:
    steps = {s.shard_id: s for s in plan_rewind(Target("time", time_ms=T), LEASES, SHARDS, now_ms=NOW)}
    assert steps[OLD_ENDED].position is None and "before the time" in steps[OLD_ENDED].why
    assert steps[GONE].position is None and "trimmed" in steps[GONE].why
    # Closed when its child was created, long before T: nothing of it is at or after T.
    assert steps[CLEANED].position is None and "children were created" in steps[CLEANED].why
    # Its child has no child listed: when it closed is unknown, so it is read again (skipping before T).
    assert steps[CLEANED_CHILD].position is not None
    for shard in (ENDED_AFTER, OPEN, NEW):
        position = steps[shard].position
        assert position is not None and (position.checkpoint, position.skip_before_ms) == ("", T)
    assert "after the time: read whole" in steps[NEW].why
    assert steps[NEW].position.parent_ids == (OPEN,)  # type: ignore[union-attr]


def test_to_latest_skips_up_to_the_change_on_every_shard_not_ended() -> None:
    steps = {s.shard_id: s for s in plan_rewind(Target("latest"), LEASES, SHARDS, now_ms=NOW)}
    assert steps[OLD_ENDED].position is None and steps[ENDED_AFTER].position is None
    assert steps[OPEN].position is not None and steps[OPEN].position.skip_before_ms == SKIP_BEFORE_NOW
    assert steps[NEW].position is not None and steps[NEW].position.skip_before_ms == SKIP_BEFORE_NOW


def test_to_sequence_checks_the_shards_range() -> None:
    step = plan_rewind(Target("sequence", shard_id=ENDED_AFTER, sequence_number="35"), LEASES, SHARDS, now_ms=NOW)[0]
    assert step.position is not None and step.position.checkpoint == "35"
    for outside in ("29", "41"):
        with pytest.raises(ConfigError, match="outside shard"):
            plan_rewind(Target("sequence", shard_id=ENDED_AFTER, sequence_number=outside), LEASES, SHARDS, now_ms=NOW)


def test_to_latest_leaves_a_closed_shard_whose_lease_was_cleaned_up() -> None:
    # Cleaned up = ended: re-registering it would re-open it and block its children until its whole
    # retention (and its ancestors') is read, only to skip it.
    steps = {s.shard_id: s for s in plan_rewind(Target("latest"), LEASES, SHARDS, now_ms=NOW)}
    assert steps[CLEANED].position is None, steps[CLEANED]


def test_to_sequence_in_an_ended_shard_reads_its_descendants_whole_again_after_it() -> None:
    # ENDED_AFTER is re-opened at 35; its child OPEN had handled up to 55.  Resuming OPEN at 55 would leave
    # a key written in ENDED_AFTER after 35 and again in OPEN before 55 with the older value last handled:
    # order per key holds only if OPEN (and its descendants) are handled again, after their parent.
    steps = {s.shard_id: s for s in plan_rewind(Target("sequence", shard_id=ENDED_AFTER, sequence_number="35"),
                                                LEASES, SHARDS, now_ms=NOW)}
    parent = steps[ENDED_AFTER].position
    assert parent is not None and parent.checkpoint == "35"
    child = steps[OPEN].position
    assert child is not None and (child.checkpoint, child.read_from_start, child.skip_before_ms) == ("", True, 0)
    assert set(steps) == {ENDED_AFTER, OPEN, NEW}  # NEW (not registered yet) has no progress to undo
    assert steps[NEW].position is None


def test_to_sequence_reads_again_a_descendant_left_skipping_by_an_earlier_rewind() -> None:
    # OPEN, set by an earlier --to-time to skip what was created before T (records it had handled), has
    # not checkpointed since: left so, its parent's records after 35 would be handled after its own.
    skipping = dataclasses.replace(LEASES[2], checkpoint="", skip_before_ms=T)
    steps = {s.shard_id: s for s in plan_rewind(Target("sequence", shard_id=ENDED_AFTER, sequence_number="35"),
                                                [*LEASES[:2], skipping, *LEASES[3:]], SHARDS, now_ms=NOW)}
    child = steps[OPEN].position
    assert child is not None and (child.checkpoint, child.skip_before_ms) == ("", 0)
