"""Async handlers end to end: real worker processes, a real Redis and the local stream endpoint.

The handlers are in tests/e2e/async_recording_handler.py.
"""

from __future__ import annotations

import collections
import signal
import time
import zlib
from pathlib import Path

import orjson
import pytest

from leaser import LeaseStore, connect
from leaser.snapshot import SnapshotStore
from tests.e2e.fleet import Fleet, Writer, check_order_per_key, check_parents_before_children, key_for, wait_until
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e

HANDLER = "tests.e2e.async_recording_handler:handle"


def test_async_handler_loses_nothing_and_keeps_order_through_splits_a_sigterm_and_a_sigkill(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0, seed=5) as server:
        table = server.create_table("orders", shards=4)
        model = server.model
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        for name in ("w1", "w2", "w3"):
            fleet.start(name, handler=HANDLER)
        with Writer(table, keys=40) as writer:
            time.sleep(2.5)
            model.split_shard(table, model.shard_ids(table, open_only=True)[0])
            time.sleep(1.5)
            # SIGTERM: w2's coroutines in flight finish, it checkpoints and releases: nothing is handled twice.
            fleet.signal("w2", signal.SIGTERM)
            assert fleet.procs["w2"].wait(20) == 0
            terminated_rows = {r.seq for r in fleet.handled() if r.worker == "w2"}
            # SIGKILL: w3 dies with coroutines in flight; its leases expire and w1 takes them over.
            fleet.signal("w3", signal.SIGKILL)
            model.split_shard(table, model.shard_ids(table, open_only=True)[-1])
            time.sleep(1.5)
        written = writer.written
        rows = fleet.wait_for(set(written), timeout_s=40)
        codes = fleet.stop_all()
    handled = [r.seq for r in rows]
    missing = set(written) - set(handled)
    assert not missing, f"{len(missing)} of {len(written)} records never handled"
    assert codes["w1"] == 0 and codes["w2"] == 0
    check_order_per_key(rows)
    parent_of = {sid: s.parent_id for sid, s in model.stream(table.stream_arn).shards.items()}
    check_parents_before_children(rows, parent_of)
    counts = collections.Counter(handled)
    assert terminated_rows and all(counts[seq] == 1 for seq in terminated_rows)
    duplicates = [seq for seq, c in counts.items() if c > 1]
    assert len(duplicates) <= 50 * 6, f"{len(duplicates)} duplicates"  # at most a batch per shard w3 held
    assert {r.worker for r in rows} == {"w1", "w2", "w3"}
    for name in ("w1", "w2"):
        assert "event loop thread" in fleet.log_text(name)  # the handler did run on the loop


def test_a_hung_coroutine_is_cancelled_by_the_timeout_and_a_second_signal_cancels_one_in_flight(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """The first call on records 0..7 never returns: cancelled after --handler-timeout 2 s, a failed call, the
    batch retried and handled; the worker stays up.  Then a call in flight when SIGTERM comes twice is
    cancelled (its finally runs) and the worker exits 1 without releasing that shard's lease."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        shard = server.model.shard_ids(table)[0]
        first = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(8)]
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"handler-timeout": "2"})
        proc = fleet.start("w1", handler=HANDLER, ASYNC_HANG_N="3", ASYNC_SLOW_N="100")
        rows = fleet.wait_for(set(first), timeout_s=20)
        assert proc.poll() is None, fleet.log_text("w1")[-2000:]
        later = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(8, 11)]
        rows = fleet.wait_for(set(first + later), timeout_s=20)
        assert proc.poll() is None
        log = fleet.log_text("w1")
        cancelled = [line for line in log.splitlines() if "past --handler-timeout" in line]
        assert len(cancelled) == 1 and shard in cancelled[0], log[-2000:]
        assert "HandlerTimeout" in log  # the delivery counted a failed call
        assert "it is hung" not in log  # the hang watchdog never fired: no exit for a cancelled call
        seqs = [r.seq for r in rows]
        assert sorted(seqs) == sorted(first + later)  # the cancelled call handled nothing: no duplicates

        marks = Path(str(fleet.out) + ".marks")
        table.put_item({"pk": "k100", "n": 100})
        assert wait_until(lambda: marks.exists() and b"started" in marks.read_bytes(), 20)
        fleet.signal("w1", signal.SIGTERM)
        assert wait_until(lambda: "SIGTERM received" in fleet.log_text("w1"), 10)
        fleet.signal("w1", signal.SIGTERM)
        assert proc.wait(10) == 1
        assert marks.read_bytes().split() == [b"started", b"unwound"]
        lease = LeaseStore(connect(redis_url), group).lease(shard)
        assert lease is not None and lease.owner == "w1"  # not released: it expires


def test_a_second_signal_leaves_every_lease_to_expire_even_where_the_call_unwound_at_once(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """Two shards, each with an async call in flight when SIGTERM comes twice: one call unwinds at once, the
    other takes 0.8 s, and the exit waits for it.  The first shard's consumer is free meanwhile, yet its lease
    is not released: a thread its call started could still run, so no next owner may start before the process
    is gone.  Both leases expire; nothing was checkpointed past the cancelled batches."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=2)
        model = server.model
        fast, slow = model.shard_ids(table)
        key_on = {shard: key_for(server, table, shard) for shard in (fast, slow)}
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        proc = fleet.start("w1", handler=HANDLER, ASYNC_SLOW_N="100", ASYNC_SLOW_UNWIND_N="101")
        first = [str(table.put_item({"pk": key_on[shard], "n": n})) for n, shard in enumerate((fast, slow))]
        fleet.wait_for(set(first), timeout_s=20)
        store = LeaseStore(connect(redis_url), group)
        checkpoints = dict(zip((fast, slow), first, strict=True))
        assert wait_until(lambda: all(getattr(store.lease(shard), "checkpoint", "") == seq
                                      for shard, seq in checkpoints.items()), 10)
        table.put_item({"pk": key_on[fast], "n": 100})
        table.put_item({"pk": key_on[slow], "n": 101})
        marks = Path(str(fleet.out) + ".marks")
        assert wait_until(lambda: marks.exists() and marks.read_bytes().split().count(b"started") == 2, 20)
        fleet.signal("w1", signal.SIGTERM)
        assert wait_until(lambda: "SIGTERM received" in fleet.log_text("w1"), 10)
        fleet.signal("w1", signal.SIGTERM)
        assert proc.wait(10) == 1
        assert marks.read_bytes().split() == [b"started", b"started", b"unwound", b"unwound"]
        for shard in (fast, slow):
            lease = store.lease(shard)
            assert lease is not None and lease.owner == "w1", fleet.log_text("w1")[-3000:]  # left to expire
            assert lease.checkpoint == checkpoints[shard]


def test_a_second_signal_during_an_on_shard_end_hook_leaves_the_shard_unended_and_its_lease_to_expire(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """A shard's end is reached and its async on_shard_end hook is in flight when SIGTERM comes twice: the hook is
    cancelled and unwinds at once, but SHARD_END is not written in the second before the exit (it would let another
    worker start the children while a thread the hook started may still run).  A call on another shard takes 0.8 s
    to unwind, so the exit waits and the first shard's consumer does reach its end meanwhile.  The lease is left
    to expire; its next owner reads to the end again, calls the hook and ends the shard."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=2)
        model = server.model
        parent, other = model.shard_ids(table)
        key_on = {shard: key_for(server, table, shard) for shard in (parent, other)}
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        proc = fleet.start("w1", handler="tests.e2e.async_recording_handler:SlowShardEnd", ASYNC_SLOW_UNWIND_N="101")
        first = str(table.put_item({"pk": key_on[parent], "n": 0}))
        fleet.wait_for({first}, timeout_s=20)
        store = LeaseStore(connect(redis_url), group)
        assert wait_until(lambda: getattr(store.lease(parent), "checkpoint", "") == first, 10)
        table.put_item({"pk": key_on[other], "n": 101})
        marks = Path(str(fleet.out) + ".marks")
        assert wait_until(lambda: marks.exists() and b"started" in marks.read_bytes(), 20)
        model.rollover_shard(table, parent)
        assert wait_until(lambda: b"hook-started" in marks.read_bytes(), 20)
        fleet.signal("w1", signal.SIGTERM)
        assert wait_until(lambda: "SIGTERM received" in fleet.log_text("w1"), 10)
        fleet.signal("w1", signal.SIGTERM)
        assert proc.wait(10) == 1
        assert marks.read_bytes().split() == [b"started", b"hook-started", b"hook-unwound", b"unwound"]
        log = fleet.log_text("w1")
        assert "shard end left to the next owner" in log, log[-3000:]  # the consumer reached the end meanwhile
        lease = store.lease(parent)
        assert lease is not None and lease.state != "ended" and lease.owner == "w1", log[-3000:]  # left to expire
        assert lease.checkpoint == first


def test_a_second_signal_leaves_a_snapshot_segment_to_expire_while_another_lane_waits_for_a_retry(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """A snapshot page's two lanes (--parallelization-factor 2): one call is in flight, the other lane's call failed
    and waits for its retry, when SIGTERM comes twice; a stream shard's call is in flight too.  The page's call is
    cancelled and unwinds at once, the stream call takes 0.8 s, and the exit waits for it.  Meanwhile the page's
    retry falls due and the scanner, stopping, is refused it: the segment must not be given back then (another
    worker would claim it and call the handler on the page while a thread the cancelled call started may still run,
    and the page would leave flight, letting go the stream's records it holds back).  It stays with w1 and expires."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("items", shards=1, stream_enabled=False)
        lanes: dict[int, str] = {}
        for i in range(1000):
            key = orjson.dumps({"pk": {"S": f"k{i}"}}, option=orjson.OPT_SORT_KEYS)
            lanes.setdefault(zlib.crc32(key) % 2, f"k{i}")
            if len(lanes) == 2:
                break
        table.put_item({"pk": lanes[0], "n": 200})
        table.put_item({"pk": lanes[1], "n": 201})
        arn = server.model.enable_stream(table, "NEW_IMAGE")
        table.put_item({"pk": "stream", "n": 300})
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, arn, group, snapshot="true",
                      **{"snapshot-segments": "1", "parallelization-factor": "2"})
        # The snapshot's first page waits for its notice (4 s): the stream call starts before, while no page holds
        # the stream's records back.
        proc = fleet.start("w1", handler="tests.e2e.async_recording_handler:snapshot_lanes", SNAPSHOT_SLOW_N="200",
                           SNAPSHOT_FAIL_N="201", STREAM_SLOW_UNWIND_N="300", SHARDLEASE_TEST_SNAPSHOT_NOTICE_S="4")
        marks = Path(str(fleet.out) + ".marks")
        assert wait_until(lambda: marks.exists() and b"stream-started" in marks.read_bytes(), 20)
        assert wait_until(lambda: b"started" in marks.read_bytes().split(), 30), fleet.log_text("w1")[-3000:]
        assert wait_until(lambda: "failing on purpose" in fleet.log_text("w1"), 10)
        fleet.signal("w1", signal.SIGTERM)
        assert wait_until(lambda: "SIGTERM received" in fleet.log_text("w1"), 10)
        time.sleep(0.5)  # the runner is stopping: a refused call now gives the segment back
        fleet.signal("w1", signal.SIGTERM)
        assert proc.wait(10) == 1
        assert sorted(marks.read_bytes().split()) == [b"started", b"stream-started", b"stream-unwound", b"unwound"]
        store = SnapshotStore(connect(redis_url), group)
        owners = store.client.hgetall(store.keys[5])
        assert {k: v.split("|")[0] for k, v in owners.items()} == {"0": "w1"}, \
            fleet.log_text("w1")[-3000:]
        assert "given back" not in fleet.log_text("w1")
        assert "segment 0/1 left to expire" in fleet.log_text("w1")


def test_a_coroutine_that_swallows_its_cancellation_is_a_hung_call(tmp_path: Path, redis_url: str, group: str) -> None:
    """A coroutine that ignores its cancellation falls back to the hung-call path: --on-handler-timeout exit stops
    the worker with code 3, and the hung shard's lease is not released (it expires)."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        shard = server.model.shard_ids(table)[0]
        table.put_item({"pk": "k1", "n": 1})
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group, **{"handler-timeout": "1"})
        proc = fleet.start("w1", handler=HANDLER, ASYNC_STUBBORN_N="1")
        assert proc.wait(20) == 3
        log = fleet.log_text("w1")
        lease = LeaseStore(connect(redis_url), group).lease(shard)
    assert "past --handler-timeout 1 s: cancelled" in log
    assert "ignored its cancellation" in log
    assert "it is hung" in log
    assert lease is not None and lease.owner == "w1"
    assert fleet.handled() == []


def test_async_lambda_handler_with_a_partial_batch_response(tmp_path: Path, redis_url: str, group: str) -> None:
    """An async lambda_handler(event, context) (detected by --handler-style auto) fails record 4 of 0..9 once:
    records 0..3 are checkpointed and never sent again, the retry starts at record 4."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        written = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(10)]
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        calls_path = Path(str(fleet.out) + ".calls")

        def calls() -> list[dict[str, list[str]]]:
            return [orjson.loads(line) for line in calls_path.read_bytes().splitlines()] if calls_path.exists() else []

        fleet.start("w1", handler="tests.e2e.async_recording_handler:lambda_handler", ASYNC_FAIL_N="4")
        assert wait_until(lambda: {s for c in calls() for s in c["seqs"]} >= set(written)
                          and sum(written[4] in c["seqs"] for c in calls()) >= 2, 20), fleet.log_text("w1")[-2000:]
        assert fleet.stop_all() == {"w1": 0}
    log = fleet.log_text("w1")
    assert "Lambda-style" in log and "event loop thread" in log
    made = calls()
    failing = next(i for i, c in enumerate(made) if c["failed"])
    assert made[failing]["failed"] == [written[4]]
    before = set(made[failing]["seqs"][: made[failing]["seqs"].index(written[4])])
    assert before >= set(written[:4])  # the batch began at record 0 or earlier
    later_calls = made[failing + 1:]
    assert later_calls[0]["seqs"][0] == written[4]  # retried from the failed record
    assert not before & {s for c in later_calls for s in c["seqs"]}  # the records before it were checkpointed


def test_a_second_signal_sends_nothing_to_the_on_failure_destination(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """A call cancelled by the second signal did not fail: with --max-retry-attempts 0 its records must not go to
    the on-failure destination (nor be checkpointed past); the next owner re-reads them."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        shard = server.model.shard_ids(table)[0]
        table.put_item({"pk": "k100", "n": 100})
        dlq = tmp_path / "dlq.jsonl"
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"max-retry-attempts": "0", "on-failure": f"file:{dlq}"})
        proc = fleet.start("w1", handler=HANDLER, ASYNC_SLOW_N="100")
        marks = Path(str(fleet.out) + ".marks")
        assert wait_until(lambda: marks.exists() and b"started" in marks.read_bytes(), 20), fleet.log_text("w1")
        fleet.signal("w1", signal.SIGTERM)
        assert wait_until(lambda: "SIGTERM received" in fleet.log_text("w1"), 10)
        fleet.signal("w1", signal.SIGTERM)
        assert proc.wait(10) == 1
        lease = LeaseStore(connect(redis_url), group).lease(shard)
    assert marks.read_bytes().split() == [b"started", b"unwound"]
    assert not dlq.exists() or dlq.read_bytes() == b"", dlq.read_text()
    assert lease is not None and lease.checkpoint == "", lease


def test_a_thread_left_stuck_by_the_handler_does_not_hold_the_process_after_a_clean_stop(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """A coroutine that gave up on an ``asyncio.to_thread`` call which never returns leaves a thread of the loop's
    default executor running: the worker stops cleanly and the process exits anyway (interpreter shutdown would
    join that thread for ever)."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        seq = str(table.put_item({"pk": "k1", "n": 1}))
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        proc = fleet.start("w1", handler=HANDLER, ASYNC_STUCK_THREAD_N="1")
        assert {r.seq for r in fleet.wait_for({seq}, timeout_s=20)} == {seq}
        fleet.signal("w1", signal.SIGTERM)
        try:
            code = proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, fleet.log_text("w1")[-2000:]
