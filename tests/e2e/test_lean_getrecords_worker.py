"""A real worker process reads through the lean GetRecords path, and loses nothing when GetRecords
is throttled or fails with 500s (those answers go back through botocore)."""

from __future__ import annotations

import collections
import time
from pathlib import Path

import orjson
import pytest

from tests.e2e.fleet import Fleet, Writer, check_order_per_key
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e


def test_worker_reads_everything_through_the_lean_path_under_faults(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0, seed=11) as server:
        table = server.create_table("orders", shards=2)
        server.model.set_faults(internal_error_rate=0.15, get_records_per_shard_per_s=3)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group, **{"batch-size": "20"})
        fleet.start("w1", SHARDLEASE_TEST_CALLS=str(tmp_path / "calls.jsonl"))
        with Writer(table, keys=10) as writer:
            time.sleep(1.5)
        written = writer.written
        rows = fleet.wait_for(set(written), timeout_s=60)
        codes = fleet.stop_all()
        log = fleet.log_text("w1")

    assert codes["w1"] == 0
    assert not set(written) - {r.seq for r in rows}
    check_order_per_key(rows)
    assert max(collections.Counter(r.seq for r in rows).values()) == 1  # no duplicates without a crash
    assert "GetRecords: lean path on" in log, log[-2000:]
    assert "lean GetRecords path off" not in log and "fast path failed" not in log
    # `shardlease run` froze its start-up heap (modules, botocore's models) before the first batch.
    calls = [orjson.loads(line) for line in (tmp_path / "calls.jsonl").read_bytes().splitlines()]
    assert calls and min(c["frozen"] for c in calls) > 10_000, calls[:3]
