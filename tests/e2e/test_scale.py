"""Discovery cost does not grow with workers; one process holds hundreds of shards with bounded threads."""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from leaser import LeaseStore, connect
from tests.e2e.fleet import Fleet
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e


class CountingCalls:
    def __init__(self, server: LocalStreamsServer) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        target = "DynamoDBStreams_20120810.DescribeStream"
        original = server._ops[target]

        def describe_stream(params: Mapping[str, Any]) -> Any:
            with self.lock:
                self.counts["filtered" if params.get("ShardFilter") else "listing"] += 1
            return original(params)

        server._ops[target] = describe_stream


def test_only_the_leader_lists_shards(tmp_path: Path, redis_url: str, group: str) -> None:
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=150)  # two DescribeStream pages per listing
        calls = CountingCalls(server)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"shard-sync-interval": "1"})
        for name in ("w1", "w2", "w3"):
            fleet.start(name)
        time.sleep(8)
        codes = fleet.stop_all()
        assert set(codes.values()) == {0}
        # At start every worker checks the stream once (one page); after that only the leader lists:
        # about one full listing (2 pages) then incremental ones (1 page) per second, never x3 workers.
        listings = calls.counts["listing"]
        print("DescribeStream calls in 8 s with 3 workers:", dict(calls.counts))
        assert 3 <= listings <= 3 + 2 * 10, calls.counts
        leaders = [name for name in ("w1", "w2", "w3") if "now the group's leader" in fleet.log_text(name)]
        assert len(leaders) == 1


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_one_worker_holds_hundreds_of_shards_with_bounded_threads(tmp_path: Path, redis_url: str, group: str) -> None:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=300)
        written = {str(table.put_item({"pk": f"k{i}", "n": i})) for i in range(900)}
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        proc = fleet.start("w1")
        peak = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            peak = max(peak, _threads(proc.pid))
            if written <= {r.seq for r in fleet.handled()}:
                break
            time.sleep(0.2)
        time.sleep(2)  # idle polling of 300 shards
        peak = max(peak, _threads(proc.pid))
        rows = fleet.handled()
        assert fleet.stop_all() == {"w1": 0}
        assert written <= {r.seq for r in rows}
        assert len({r.shard for r in rows}) > 250
        print("peak threads for 300 shards:", peak)
        assert peak < 50, f"{peak} threads for 300 shards"


def test_workers_started_together_survive_describe_stream_throttling(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    # Far below the account's 10 calls/s: every worker's start-up check is throttled at first.
    with LocalStreamsServer(port=0, describe_stream_per_s=2) as server:
        table = server.create_table("orders", shards=250)  # a full listing is 3 pages
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        names = [f"w{i}" for i in range(6)]
        for name in names:
            fleet.start(name)
        store = LeaseStore(connect(redis_url), group)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(store.members()) < len(names):
            time.sleep(0.5)
        members = store.members()
        codes = fleet.stop_all()
        assert set(members) == set(names), {n: fleet.log_text(n)[-300:] for n in names if n not in members}
        assert set(codes.values()) == {0}
