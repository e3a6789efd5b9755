"""--max-getrecords-per-second with a real worker process, a real Redis and the local endpoint.

Count assertions only (GetRecords counted server-side over a window): a worker can be slower than its
budget on a loaded machine, never faster.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.e2e.fleet import Fleet
from tests.e2e.test_idle_polling import PollLog, key_for, wait_handled
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e

BUDGET = 2.0
"""GetRecords calls per second for the whole group (one worker here: all of it)."""
CEILING_S = 2.0
WINDOW_S = 20.0


def test_the_budget_caps_the_calls_busy_shard_first_and_idle_shards_still_read(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("budget", shards=8)
        shards = server.model.shard_ids(table)
        busy, idle = shards[0], shards[3]
        polls = PollLog(server)
        # Unbudgeted, the 7 idle shards alone would make 3.5 calls/s (one per 2 s ceiling) and the busy one
        # several a second (at once after a page with records).
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"idle-poll-interval": f"{CEILING_S:g}", "active-poll-interval": "0.2", "quiet-after": "1",
                         "max-getrecords-per-second": f"{BUDGET:g}"})
        fleet.start("w1")
        written: list[str] = []
        stop = threading.Event()

        def write() -> None:  # 25 records a second onto the busy shard
            key = key_for(server, table, busy)
            n = 0
            while not stop.is_set():
                for _ in range(5):
                    seq = table.put_item({"pk": key, "n": n})
                    assert seq is not None
                    written.append(str(seq))
                    n += 1
                time.sleep(0.2)

        writer = threading.Thread(target=write, name="writer")
        try:
            deadline = time.monotonic() + 60
            while not all(polls.calls[s] for s in shards):
                assert time.monotonic() < deadline, "not every shard was polled"
                time.sleep(0.2)
            writer.start()
            time.sleep(2.0)
            t0 = time.monotonic()
            time.sleep(WINDOW_S)
            t1 = time.monotonic()
            stop.set()
            writer.join()
            calls = {s: polls.between(s, t0, t1) for s in shards}
            # The bucket holds at most max(1, rate * 1 s) = 2 calls beyond the rate; 10% for the window's edges.
            assert sum(calls.values()) <= BUDGET * WINDOW_S * 1.1 + 2, calls
            assert calls[busy] >= 1 and all(n >= 1 for n in calls.values()), calls  # nobody starves
            # Every record of the busy shard is handled, and a record on a long-idle shard still arrives.
            seq = table.put_item({"pk": key_for(server, table, idle), "n": -1})
            assert seq is not None
            rows = fleet.wait_for(set(written), 120)
            assert set(written) <= {r.seq for r in rows}
            wait_handled(fleet, seq, 120)
        finally:
            stop.set()
            if writer.is_alive():
                writer.join()
            codes = fleet.stop_all()  # shards waiting for a token hand their leases back at once
        assert codes == {"w1": 0}
        log = fleet.log_text("w1")
        # 2 calls/s for 8 shards at a 2 s ceiling: below one call per shard per ceiling, said once per share.
        assert "--max-getrecords-per-second 2 gives this worker" in log
        assert "released for shutdown" in log
