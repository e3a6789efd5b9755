"""Idle pacing and checkpoint coalescing with real worker processes, a real Redis and the local endpoint.

Count and bound assertions only: a poll can come late on a loaded machine but never early, so "at most N
polls in a window" and "arrives within the ceiling plus slack" are the feature's contract, not timing goals
(those are in bench/idle_cost.py and bench/latency.py).
"""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.fleet import Fleet, Writer, check_order_per_key, key_for
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e

GET_RECORDS = "DynamoDBStreams_20120810.GetRecords"
CEILING_S = 5.0
WAKE_GAP_S = CEILING_S / 2
SLACK_S = 2.0


class PollLog:
    """Server-side GetRecords calls per shard: (monotonic time of each call)."""

    def __init__(self, server: LocalStreamsServer) -> None:
        self.calls: dict[str, list[float]] = collections.defaultdict(list)
        self._lock = threading.Lock()
        model, orig = server.model, server._ops[GET_RECORDS]

        def counted(params: Any) -> Any:
            shard = model._decode_iterator(params.get("ShardIterator"))[1]
            with self._lock:
                self.calls[shard].append(time.monotonic())
            return orig(params)

        server._ops[GET_RECORDS] = counted

    def between(self, shard: str, t0: float, t1: float) -> int:
        with self._lock:
            return sum(1 for t in self.calls[shard] if t0 <= t < t1)

    def first_after(self, shard: str, t: float) -> float:
        with self._lock:
            return min((c for c in self.calls[shard] if c >= t), default=float("inf"))

    def last_before(self, shard: str, t: float) -> float:
        with self._lock:
            return max((c for c in self.calls[shard] if c < t), default=float("-inf"))


def wait_handled(fleet: Fleet, seq: str, timeout_s: float) -> float:
    """Wall time the handler saw ``seq``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for r in fleet.handled():
            if r.seq == seq:
                return r.t
        time.sleep(0.05)
    raise AssertionError(f"record {seq} not handled within {timeout_s} s")


def test_quiet_shards_poll_at_the_ceiling_wake_together_and_still_deliver_within_it(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("quiet", shards=8)
        shards = server.model.shard_ids(table)
        polls = PollLog(server)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"idle-poll-interval": f"{CEILING_S:g}", "active-poll-interval": "0.2", "quiet-after": "1"})
        fleet.start("w1")
        try:
            # Every shard polled, then quiet (after 1 s) and at the ceiling (after a first wait drawn below it).
            deadline = time.monotonic() + 60
            while not all(polls.calls[s] for s in shards):
                assert time.monotonic() < deadline, "not every shard was polled"
                time.sleep(0.2)
            time.sleep(1 + CEILING_S + 0.5)

            # 1. A quiet shard costs at most one call per ceiling (an active one: 5 a second).
            t0 = time.monotonic()
            time.sleep(2 * CEILING_S)
            t1 = time.monotonic()
            counts = {s: polls.between(s, t0, t1) for s in shards}
            assert all(1 <= n <= 3 for n in counts.values()), counts

            # 2. The first record on a long-quiet shard arrives within the ceiling (plus slack).
            written_at = time.time()
            seq = table.put_item({"pk": key_for(server, table, shards[0]), "n": 1})
            assert seq is not None
            assert wait_handled(fleet, seq, 60) - written_at <= CEILING_S + SLACK_S
            # Past the waker's own gap, and every shard that record woke back on its own grid (the slot after a
            # woken poll is up to ceiling + wake gap away: worker.polling).
            time.sleep(CEILING_S + WAKE_GAP_S + 0.5)

            # 3. A burst: records on one quiet shard wake this worker's other quiet shards, those not polled
            # within the wake gap, at once.  Write when a trigger shard is about to poll while others are
            # eligible and not due for a while (phases are spread, so this comes within a ceiling or two).
            woken_checked = 0
            for trigger_shard in shards[1:4]:
                others = [s for s in shards[1:] if s != trigger_shard]
                deadline = time.monotonic() + 4 * CEILING_S
                while time.monotonic() < deadline:
                    now = time.monotonic()
                    due = polls.last_before(trigger_shard, now) + CEILING_S
                    if 0.3 < due - now < 1.0 and any(
                            WAKE_GAP_S + 0.3 < due - polls.last_before(s, now) < CEILING_S - 1.2 for s in others):
                        break
                    time.sleep(0.02)
                burst = {s: table.put_item({"pk": key_for(server, table, s), "n": 2}) for s in others}
                written = time.monotonic()
                trigger = table.put_item({"pk": key_for(server, table, trigger_shard), "n": 3})
                assert trigger is not None
                wait_handled(fleet, trigger, 60)
                tp = polls.first_after(trigger_shard, written)  # the poll that found the records
                for s in others:
                    if tp - polls.last_before(s, tp) > WAKE_GAP_S + 0.1:
                        # Polled by the wake, not at its own next poll up to CEILING_S later.
                        assert polls.between(s, tp - 0.05, tp + 1.0) >= 1, (s, tp)
                        woken_checked += 1
                for sq in burst.values():
                    assert sq is not None
                    wait_handled(fleet, sq, 60)
                if woken_checked:
                    break
                time.sleep(1 + CEILING_S + WAKE_GAP_S)  # every shard quiet again, on its own grid
            assert woken_checked, "no shard was eligible for a wake at the trigger's poll"
        finally:
            codes = fleet.stop_all()
        assert codes == {"w1": 0}


def test_checkpoint_coalescing_no_duplicate_at_handoff_and_bounded_duplicates_at_a_crash(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    interval_s = 2.0
    with LocalStreamsServer(port=0, seed=5) as server:
        table = server.create_table("coalesced", shards=4)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"checkpoint-interval": f"{interval_s:g}"})
        fleet.start("w1")
        fleet.start("w2")
        with Writer(table, keys=40) as writer:  # 200 records/s in all
            time.sleep(4)
            # SIGTERM: w1 writes its last handled positions before handing its shards over.
            fleet.signal("w1", signal.SIGTERM)
            time.sleep(4)
            terminated = {r.seq for r in fleet.handled() if r.worker == "w1"}
            fleet.start("w3")
            time.sleep(4)
            # SIGKILL: w2's records handled since its last checkpoint (at most interval_s of them) come again.
            killed_at = len(fleet.handled())
            fleet.signal("w2", signal.SIGKILL)
            time.sleep(3)
        rows = fleet.wait_for(set(writer.written), timeout_s=60)
        codes = fleet.stop_all()

    handled = [r.seq for r in rows]
    assert not set(writer.written) - set(handled), "records lost"
    assert codes["w1"] == 0 and codes["w3"] == 0
    check_order_per_key(rows)
    counts = collections.Counter(handled)
    assert all(counts[seq] == 1 for seq in terminated), "a SIGTERM handoff re-delivered records"
    w2_before_kill = {r.seq for r in rows[:killed_at] if r.worker == "w2"}
    duplicates = [seq for seq, c in counts.items() if c > 1]
    assert set(duplicates) <= w2_before_kill | {r.seq for r in rows[killed_at:] if r.worker == "w2"}
    # At most interval_s of w2's records per shard (200 records/s over 4 shards), plus one batch per shard.
    bound = int(interval_s * 200) + 4 * 50
    assert len(duplicates) <= bound, (len(duplicates), bound)
    print(f"SIGKILL with --checkpoint-interval {interval_s:g}: {len(duplicates)} duplicates (bound {bound})")
