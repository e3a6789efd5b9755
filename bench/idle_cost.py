"""Idle cost: GetRecords calls per idle shard per minute for one worker process.

    .venv/bin/python bench/idle_cost.py [--shards 50] [--window 60] [--idle-poll-intervals 1] [--json PATH]

One ``python -m worker run`` process (default settings; ``--idle-poll-interval`` from the list,
default 1 s) against an in-process :class:`worker.local.LocalStreamsServer` holding ``--shards``
shards that never receive a record, and a private redis-server.  After every lease is held and a
10 s warm-up (the idle back-off, 0.1 s doubling, has reached its ceiling), GetRecords and
GetShardIterator calls are counted server-side per shard for ``--window`` seconds.  Lambda's event
source mapping polls each shard 4 times a second: 240 calls per shard per minute.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ENV, CallCounter, CpuSampler, Fleet, all_held, wait_until, write_json
from leaser.embedded import RedisServer
from worker.local import LocalStreamsServer

LAMBDA_PER_SHARD_PER_MIN = 4 * 60


def run_point(server: LocalStreamsServer, redis_url: str, tmp: Path, shards: int, window_s: float,
              idle_s: float, warmup_s: float) -> dict[str, Any]:
    name = f"idle{idle_s:g}-{os.getpid()}".replace(".", "_")
    table = server.create_table(f"t-{name}", [("pk", "S")], view_type="NEW_IMAGE", shards=shards)
    counter = CallCounter(server, ("GetRecords", "GetShardIterator"))
    flags = {} if idle_s == 1.0 else {"idle-poll-interval": f"{idle_s:g}"}
    fleet = Fleet(tmp, server.endpoint_url, table.stream_arn, redis_url, name, flags=flags)
    try:
        fleet.start("w0")
        wait_until(lambda: all_held(redis_url, name, shards), 120, "every lease held", fleet)
        time.sleep(warmup_s)
        sampler = CpuSampler({"w0": fleet.procs["w0"].pid}, period_s=1.0)
        sampler.start()
        t0 = time.time()
        time.sleep(window_s)
        t1 = time.time()
        sampler.stop_event.set()
        fleet.check_alive()
    finally:
        counter.restore()
        fleet.stop_all()
    gr = counter.between(t0, t1, "GetRecords")
    per_shard = Counter(c[2] for c in gr)
    per_min = [per_shard.get(s, 0) / (t1 - t0) * 60 for s in server.model.shard_ids(table)]
    cpu = [row["w0"]["cpu_pct"] for row in sampler.samples if row.get("w0")]
    rss = [row["w0"]["rss_mb"] for row in sampler.samples if row.get("w0")]
    return {
        "shards": shards, "idle_poll_interval_s": idle_s, "window_s": t1 - t0,
        "get_records_calls": len(gr), "get_shard_iterator_calls": len(counter.between(t0, t1, "GetShardIterator")),
        "per_shard_per_min_median": statistics.median(per_min), "per_shard_per_min_min": min(per_min),
        "per_shard_per_min_max": max(per_min), "lambda_per_shard_per_min": LAMBDA_PER_SHARD_PER_MIN,
        "worker_cpu_pct_mean": statistics.fmean(cpu) if cpu else None, "worker_rss_mb": max(rss) if rss else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=50)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--idle-poll-intervals", default="1", help="comma-separated --idle-poll-interval values")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    print(f"worker logs in {tmp}", flush=True)
    results = []
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        for idle in (float(x) for x in args.idle_poll_intervals.split(",")):
            r = run_point(server, rs.url, tmp, args.shards, args.window, idle, args.warmup)
            results.append(r)
            print(f"idle poll {idle:g} s: {r['get_records_calls']} GetRecords on {args.shards} shards in "
                  f"{r['window_s']:.0f} s = {r['per_shard_per_min_median']:.1f} per shard per minute (min "
                  f"{r['per_shard_per_min_min']:.1f}, max {r['per_shard_per_min_max']:.1f}); GetShardIterator "
                  f"{r['get_shard_iterator_calls']}; worker CPU {r['worker_cpu_pct_mean']:.1f}% of one core; "
                  f"Lambda: {LAMBDA_PER_SHARD_PER_MIN}", flush=True)
    write_json(args.json, {"benchmark": "idle_cost", "points": results})


if __name__ == "__main__":
    main()
