"""Three workers over a stream that splits and rolls over while written to; one SIGTERM, one SIGKILL."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.fleet import Fleet, Writer, check_order_per_key, check_parents_before_children
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e


def test_fleet_loses_nothing_and_keeps_order_through_splits_rollovers_and_kills(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0, seed=3) as server:
        table = server.create_table("orders", shards=4)
        model = server.model
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        for name in ("w1", "w2", "w3"):
            fleet.start(name)
        fleet.wait_joined(["w1", "w2", "w3"])

        with Writer(table, keys=40) as writer:
            time.sleep(3)
            open_shards = model.shard_ids(table, open_only=True)
            model.split_shard(table, open_shards[0])
            time.sleep(2)
            # SIGTERM: w2 finishes its batches, checkpoints, releases; nothing it handled is handled again.
            fleet.signal("w2", signal.SIGTERM)
            time.sleep(3)
            model.rollover_shard(table, open_shards[1])
            time.sleep(2)
            terminated_rows = {r.seq for r in fleet.handled() if r.worker == "w2"}
            # SIGKILL: w3 dies mid-stream; its leases expire on Redis time and w1 takes them over.
            fleet.signal("w3", signal.SIGKILL)
            time.sleep(1)
            model.split_shard(table, model.shard_ids(table, open_only=True)[-1])
            time.sleep(2)
        written = writer.written
        rows = fleet.wait_for(set(written), timeout_s=60)
        codes = fleet.stop_all()

        handled = [r.seq for r in rows]
        missing = set(written) - set(handled)
        assert not missing, f"{len(missing)} of {len(written)} records never handled"
        assert codes["w1"] == 0 and codes["w2"] == 0
        check_order_per_key(rows)
        parent_of = {sid: s.parent_id for sid, s in model.stream(table.stream_arn).shards.items()}
        check_parents_before_children(rows, parent_of)

        counts = collections.Counter(handled)
        # No record is handled twice across the SIGTERM handoff.
        assert all(counts[seq] == 1 for seq in terminated_rows)
        # Duplicates only come from the SIGKILL: at most one batch per shard w3 held.
        duplicates = [seq for seq, c in counts.items() if c > 1]
        assert len(duplicates) <= 50 * 4, f"{len(duplicates)} duplicates"
        assert {r.worker for r in rows} == {"w1", "w2", "w3"}
