"""Import plans (pure): where each shard of the stream goes from a position file or a KCL lease table."""

from __future__ import annotations

import pytest

from leaser import SHARD_END, ConfigError
from worker.checkpoints.kcl import entry
from worker.checkpoints.transfer import plan_import
from worker.reading.streams import Shard

GRANDPARENT = "shardId-00000001800000000000-aaaa0001"  # closed, its lease deleted by KCL long ago
PARENT = "shardId-00000001800014400000-aaaa0002"  # closed, SHARD_END in KCL, its lease deleted since
CHILD = "shardId-00000001800028800000-aaaa0003"  # open, checkpointed by KCL
NEW = "shardId-00000001800030000000-aaaa0004"  # created after KCL stopped: no lease, no descendant with one
SHARDS = [Shard(GRANDPARENT, None, "1", "9"), Shard(PARENT, GRANDPARENT, "10", "20"),
          Shard(CHILD, PARENT, "30", None), Shard(NEW, None, "40", None)]


def test_ancestors_of_a_leased_shard_that_kcl_cleaned_up_are_ended_not_read_again() -> None:
    # KCL (cleanupLeasesUponShardCompletion, on by default) deletes a finished shard's lease once its
    # children have started; the stream still lists that shard for up to 24 h.  It was handled: re-reading
    # it whole would handle all of it again, and hold its children back until it is read.
    kcl = {CHILD: entry({"leaseKey": CHILD, "checkpoint": "35", "leaseOwner": "w1", "leaseCounter": 3})}
    steps = {s.shard_id: s for s in plan_import(kcl, [], SHARDS, source="lease table t")}
    for shard in (GRANDPARENT, PARENT):
        position = steps[shard].position
        assert position is not None and position.checkpoint == SHARD_END, steps[shard]
    child = steps[CHILD].position
    assert child is not None and child.checkpoint == "35"
    new = steps[NEW].position
    assert new is not None and (new.checkpoint, new.read_from_start, new.skip_before_ms) == ("", True, 0)


@pytest.mark.parametrize("skip", [True, -1, "soon", 1.5])
def test_a_skip_time_that_is_not_unix_ms_is_one_line_of_bad_input(skip: object) -> None:
    # True passed as an int and reached Redis as 'True': every worker acquiring the shard then failed
    # to parse it; -1 failed later with a ValueError instead of the one-line error.
    with pytest.raises(ConfigError, match="skip_before_ms"):
        plan_import({CHILD: {"checkpoint": "35", "skip_before_ms": skip}}, [], SHARDS, source="f.json")


@pytest.mark.parametrize("foreign", ["shardId-00000001800020000000-ffff0001", "shardId-000000000001"])
def test_positions_of_no_shard_of_this_stream_are_refused_not_read_as_everything_new(foreign: str) -> None:
    # Another table's lease table (or a Kinesis application's): no entry names a listed shard, though
    # the stream would still list it (created after its oldest listed shard), or it is no DynamoDB
    # Streams shard at all.  Imported, every shard of this stream read whole again.
    with pytest.raises(ConfigError, match="none of"):
        plan_import({foreign: {"checkpoint": "35"}}, [], SHARDS, source="lease table t")


def test_positions_all_trimmed_since_are_read_from_the_trim_horizon() -> None:
    old = "shardId-00000001700000000000-aaaa0000"  # older than every listed shard: trimmed since
    steps = plan_import({old: {"checkpoint": "35"}}, [], SHARDS, source="lease table t")
    assert all(s.position is not None and s.position.checkpoint == "" for s in steps if s.shard_id != old)
