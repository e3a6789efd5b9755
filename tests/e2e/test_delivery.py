"""Failure policies, filters, Lambda-style handlers and lanes, on real worker processes."""

from __future__ import annotations

import collections
import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from leaser import GroupKeys, LeaseStore, connect
from tests.e2e.fleet import ROOT, Fleet, Writer, check_order_per_key
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e

POLICY = "tests.e2e.policy_handler:handle"


def calls(tmp: Path) -> list[dict[str, Any]]:
    path = tmp / "calls.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def dlq_entries(redis_url: str, group: str) -> list[dict[str, Any]]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        rows = client.xrange(GroupKeys.for_group(group).namespaced("dlq"))
    finally:
        client.close()
    entries = []
    for _, fields in rows:
        blob = next(v for v in fields.values() if v.startswith("{"))
        entries.append(json.loads(blob))
    return entries


def checkpoint_of(redis_url: str, group: str, shard_id: str) -> str:
    lease = LeaseStore(connect(redis_url), group).lease(shard_id)
    return lease.checkpoint if lease is not None else ""


def wait_until(predicate: Any, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


@pytest.fixture
def stream() -> Any:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        yield server, server.create_table("orders", shards=1)


def test_partial_batch_failures_are_retried_from_the_lowest_failed_record(
    tmp_path: Path, redis_url: str, group: str, stream: Any
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n % 7}", "n": n})) for n in range(40)]
    fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group, **{"batch-size": "10"})
    fleet.start("w1", handler=POLICY, SHARDLEASE_TEST_CALLS=str(tmp_path / "calls.jsonl"),
                SHARDLEASE_TEST_FAIL_N="13,17", SHARDLEASE_TEST_FAIL_TIMES="2", SHARDLEASE_TEST_FAIL_MODE="partial")
    rows = fleet.wait_for(set(written))
    assert fleet.stop_all() == {"w1": 0}
    handled = [r.seq for r in rows]
    assert set(handled) == set(written)
    # Records before the lowest failed one in a batch are never handled again.
    counts = collections.Counter(handled)
    assert all(counts[s] == 1 for s in written[:13] + written[20:])
    check_order_per_key(rows)
    # The batch 10..19 failed at 13 (and 17) twice: it was called from 10 once, then from 13 twice.
    starts = [c["first"] for c in calls(tmp_path)]
    assert starts.count(written[10]) == 1 and starts.count(written[13]) == 2


def test_retries_exhausted_go_to_the_destination_in_full_and_replay_re_drives_them(
    tmp_path: Path, redis_url: str, group: str, stream: Any
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n}", "n": n, "blob": {"deep": [n, "x" * 50]}})) for n in range(30)]
    fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                  **{"batch-size": "5", "max-retry-attempts": "2"})
    fleet.start("w1", handler=POLICY, SHARDLEASE_TEST_FAIL_N="7", SHARDLEASE_TEST_FAIL_TIMES="-1")
    shard = server.model.shard_ids(table)[0]
    assert wait_until(lambda: checkpoint_of(redis_url, group, shard) == written[-1])
    assert fleet.stop_all() == {"w1": 0}
    handled = {r.seq for r in fleet.handled()}
    entries = dlq_entries(redis_url, group)
    assert len(entries) == 1
    entry = entries[0]
    assert entry["attempts"] == 3 and entry["reason"] == "retries_exhausted"
    assert entry["first_sequence_number"] == written[5] and entry["last_sequence_number"] == written[9]
    assert [r["dynamodb"]["SequenceNumber"] for r in entry["records"]] == written[5:10]
    assert entry["records"][2]["dynamodb"]["NewImage"]["blob"]["M"]["deep"]["L"][1] == {"S": "x" * 50}
    assert handled == set(written) - set(written[5:10])
    # An operator re-drives the entry with a fixed handler; it leaves the destination.
    replay = subprocess.run(
        [sys.executable, "-m", "worker", "dlq", "replay", "--all", "--group", group, "--redis-url", redis_url,
         "--handler", "tests.e2e.recording_handler:handle"],
        cwd=ROOT, env=fleet.env(), capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    assert {r.seq for r in fleet.handled()} == set(written)
    assert dlq_entries(redis_url, group) == []


def test_bisect_isolates_one_poison_record_in_a_batch_of_1000(
    tmp_path: Path, redis_url: str, group: str, stream: Any
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n % 50}", "n": n})) for n in range(1000)]
    fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                  **{"batch-size": "1000", "bisect-on-error": "true", "max-retry-attempts": "0"})
    fleet.start("w1", handler=POLICY, SHARDLEASE_TEST_CALLS=str(tmp_path / "calls.jsonl"),
                SHARDLEASE_TEST_FAIL_N="637", SHARDLEASE_TEST_FAIL_TIMES="-1")
    shard = server.model.shard_ids(table)[0]
    assert wait_until(lambda: checkpoint_of(redis_url, group, shard) == written[-1], 60)
    assert fleet.stop_all() == {"w1": 0}
    entries = dlq_entries(redis_url, group)
    assert [(e["record_count"], e["first_sequence_number"]) for e in entries] == [(1, written[637])]
    handled = [r.seq for r in fleet.handled()]
    assert sorted(handled, key=int) == [s for i, s in enumerate(written) if i != 637]  # each exactly once
    made = calls(tmp_path)
    assert made[0]["size"] == 1000
    assert len(made) <= 2 * 11 + 1, f"{len(made)} handler calls to isolate one record"


def test_records_older_than_the_maximum_age_go_to_the_destination(
    tmp_path: Path, redis_url: str, group: str, stream: Any
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(10)]
    time.sleep(2.5)
    fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                  **{"batch-size": "10", "max-record-age": "2"})
    fleet.start("w1", handler=POLICY, SHARDLEASE_TEST_FAIL_N="4", SHARDLEASE_TEST_FAIL_TIMES="-1",
                SHARDLEASE_TEST_FAIL_MODE="partial")
    shard = server.model.shard_ids(table)[0]
    assert wait_until(lambda: checkpoint_of(redis_url, group, shard) == written[-1])
    assert fleet.stop_all() == {"w1": 0}
    [entry] = dlq_entries(redis_url, group)
    assert entry["reason"] == "record_too_old" and entry["first_sequence_number"] == written[4]
    assert {r.seq for r in fleet.handled()} >= set(written[:4])


def test_strict_mode_waits_at_the_failed_record_and_keeps_order(
    tmp_path: Path, redis_url: str, group: str, stream: Any
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n % 3}", "n": n})) for n in range(30)]
    fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                  **{"batch-size": "10", "stop-on-failure": "true", "bisect-on-error": "true"})
    fleet.start("w1", handler=POLICY, SHARDLEASE_TEST_FAIL_N="12", SHARDLEASE_TEST_FAIL_TIMES="4",
                SHARDLEASE_TEST_FAIL_MODE="raise")
    rows = fleet.wait_for(set(written))
    assert fleet.stop_all() == {"w1": 0}
    first_time: list[str] = []
    for r in rows:
        if r.seq not in first_time:
            first_time.append(r.seq)
    assert first_time == written  # the whole shard in order: nothing after record 12 before it
    # Bisecting isolated record 12 (10 and 11 went through first); the shard waited there.
    assert f"shard stopped at record {written[12]}" in fleet.log_text("w1")
    assert dlq_entries(redis_url, group) == []


def test_filtered_records_never_reach_the_handler_and_the_checkpoint_moves_past_them(
    tmp_path: Path, redis_url: str, group: str, stream: Any
) -> None:
    server, table = stream
    for n in range(20):
        table.put_item({"pk": f"k{n}", "n": n, "status": "NEW" if n % 4 == 0 else "OLD"})
    last = table.put_item({"pk": "k0", "n": 100, "status": "OLD"})  # a MODIFY that the filter drops
    patterns = json.dumps([{"eventName": ["INSERT"], "dynamodb": {"NewImage": {"status": {"S": ["NEW"]}}}}])
    fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                  **{"filter-patterns": patterns})
    fleet.start("w1")
    shard = server.model.shard_ids(table)[0]
    assert wait_until(lambda: checkpoint_of(redis_url, group, shard) == last)
    assert fleet.stop_all() == {"w1": 0}
    assert sorted(r.n for r in fleet.handled()) == [0, 4, 8, 12, 16]


def test_an_unmodified_powertools_handler_runs_in_lambda_style(
    tmp_path: Path, redis_url: str, group: str, stream: Any
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n:02d}", "n": n, "fail": n in (6, 15)})) for n in range(25)]
    fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                  **{"batch-size": "10", "max-retry-attempts": "1"})
    fleet.start("w1", handler="tests.powertools_handler:lambda_handler", POWERTOOLS_SERVICE_NAME="orders")
    shard = server.model.shard_ids(table)[0]
    assert wait_until(lambda: checkpoint_of(redis_url, group, shard) == written[-1])
    assert fleet.stop_all() == {"w1": 0}
    log = fleet.log_text("w1")
    assert "Lambda-style" in log
    # Powertools' Logger wrote one JSON line per record it processed, with Lambda's context fields.
    seen: collections.Counter[int] = collections.Counter()
    for line in log.splitlines():
        if line.startswith("{") and '"function_name"' in line:
            message = json.loads(line)["message"]
            if isinstance(message, dict) and "n" in message:
                seen[int(message["n"])] += 1
    assert set(seen) == set(range(25))  # every record reached the Powertools handler
    # The batch [0..9] failed at record 6: 0-5 were never re-delivered, 6 was retried once, then
    # 6..9 (from the failed record on) went to the destination in full, as Lambda does.
    assert all(seen[n] == 1 for n in range(6))
    assert seen[6] == 2
    entries = dlq_entries(redis_url, group)
    assert sorted(e["first_sequence_number"] for e in entries) == sorted([written[6], written[15]])
    assert all(e["attempts"] == 2 and e["reason"] == "retries_exhausted" for e in entries)


def test_parallel_lanes_keep_per_key_order_under_a_kill(tmp_path: Path, redis_url: str, group: str) -> None:
    with LocalStreamsServer(port=0, seed=5) as server:
        table = server.create_table("orders", shards=2)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"parallelization-factor": "4", "batch-size": "40"})
        for name in ("w1", "w2"):
            fleet.start(name, SHARDLEASE_TEST_SLOW_S="0.05", SHARDLEASE_TEST_CALLS=str(tmp_path / "calls.jsonl"))
        with Writer(table, keys=23) as writer:
            time.sleep(4)
            fleet.signal("w2", signal.SIGKILL)
            time.sleep(4)
        written = writer.written
        rows = fleet.wait_for(set(written), 60)
        fleet.stop_all()
        assert set(written) <= {r.seq for r in rows}
        check_order_per_key(rows)
        # Lanes really ran side by side: calls on one shard overlapped in time.
        made = sorted(calls(tmp_path), key=lambda c: (c["shard"], c["start"]))
        overlaps = sum(1 for a, b in itertools.pairwise(made)
                       if a["shard"] == b["shard"] and b["start"] < a["end"])
        assert overlaps > 0
