"""Failure paths found by review, end to end with real worker processes, a real Redis and the local endpoint."""

from __future__ import annotations

import signal
from pathlib import Path

import orjson
import pytest

from leaser import LeaseStore, connect
from tests.e2e.fleet import Fleet, wait_until
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e



def test_latest_survives_a_rolling_restart_before_the_first_checkpoint(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """w1 starts a quiet shard at LATEST and stops (SIGTERM) before any record arrived, so no checkpoint
    exists; records written next must be handled by w2, not skipped by a second LATEST."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        shard = server.model.shard_ids(table)[0]
        store = LeaseStore(connect(redis_url), group)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"initial-position": "LATEST"})
        fleet.start("w1")
        assert wait_until(lambda: (lease := store.lease(shard)) is not None and lease.began_ms > 0)
        fleet.signal("w1", signal.SIGTERM)
        assert fleet.procs["w1"].wait(20) == 0
        between = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(5)]
        fleet.start("w2")
        later = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(5, 8)]
        rows = fleet.wait_for(set(between + later), timeout_s=30)
        assert fleet.stop_all() == {"w1": 0, "w2": 0}
    handled = {r.seq for r in rows}
    assert set(between) <= handled, f"{len(set(between) - handled)} of 5 records written between the workers lost"
    assert set(later) <= handled


def test_waiting_for_a_serialized_lambda_handler_is_not_a_hang(tmp_path: Path, redis_url: str, group: str) -> None:
    """Lambda-style handlers run one invocation at a time per process: on 4 shards each 1 s call waits up
    to 3 s for its turn, past --handler-timeout 2.5; the wait must not count, so no call is hung."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=4)
        for n in range(80):
            table.put_item({"pk": f"k{n}", "n": n})
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"batch-size": "5", "handler-timeout": "2.5", "handler-style": "lambda"})
        proc = fleet.start("w1", handler="tests.e2e.slow_lambda_handler:handler", SLOW_S="1")
        calls_path = Path(str(fleet.out) + ".calls")
        assert wait_until(lambda: calls_path.exists() and len(calls_path.read_bytes().splitlines()) >= 8, 40)
        assert proc.poll() is None, "the worker exited: " + fleet.log_text("w1")[-500:]
        codes = fleet.stop_all()
    calls = [orjson.loads(line) for line in calls_path.read_bytes().splitlines()]
    assert max(c["duration_s"] for c in calls) < 2.5  # no invocation itself ran past the timeout
    log = fleet.log_text("w1")
    assert "hung" not in log
    assert codes == {"w1": 0}


@pytest.mark.timeout(60)
def test_the_worker_survives_redis_refusing_commands(tmp_path: Path, redis_url: str, group: str) -> None:
    """Redis out of memory (or an ACL changed under a running worker) is a failed tick, retried; the worker
    neither crashes nor leaves its handler running in a process without a coordinator."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        first = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(5)]
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        proc = fleet.start("w1")
        fleet.wait_for(set(first))
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        try:
            assert wait_until(lambda: "refuses commands" in fleet.log_text("w1"), 20)
        finally:
            admin.config_set("maxmemory", "0")
        assert proc.poll() is None
        later = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(5, 10)]
        rows = fleet.wait_for(set(later), timeout_s=30)
        assert fleet.stop_all() == {"w1": 0}
    assert set(first + later) <= {r.seq for r in rows}
