"""DescribeStream calls per minute for 1, 10 and 50 worker processes on a stream of 2,000 shards.

    .venv/bin/python bench/discovery_cost.py [--shards 2000] [--workers 1,10,50] [--window 120]
        [--shard-sync-interval 60] [--idle-poll-interval 30] [--json PATH]

Per point: a fresh table of ``--shards`` idle shards in an in-process
:class:`worker.local.LocalStreamsServer`, a fresh group on a private redis-server, and N real
``python -m worker run`` processes started together (default lease settings and the DEFAULT
``--shard-sync-interval 60``; ``--idle-poll-interval 30`` so that 2,000 idle shards do not turn
the 2-core machine into a GetRecords loop: idle polling does not touch discovery).  DescribeStream
calls are counted server-side (``server._ops`` wrapped) from the first Popen:

- start-up: from Popen until every shard's lease is held (the leader's first, full listing:
  ``shards / 100`` pages, plus any other caller);
- steady: the next ``--window`` seconds, as calls per minute;
- the peak calls in any 1 s (AWS allows 10 DescribeStream calls/s per account and region);
- how many workers logged "now the group's leader".

Each worker also calls DescribeStream once (Limit 1) at start to check the stream's status, so
start-up calls grow by one per worker.  The server throttles DescribeStream above
``--describe-limit`` calls/s per stream (default 10, AWS's per-account limit), and throttled calls
are counted.  Workers that exit (e.g. a throttled start-up check) are recorded, not fatal.
``--also-unthrottled 50`` runs that point once more without the throttle.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ENV, CallCounter, CpuSampler, Fleet, all_held, wait_until, write_json
from leaser.embedded import RedisServer
from worker.discovery import FULL_SYNC_EVERY
from worker.local import LocalStreamsServer


def run_point(server: LocalStreamsServer, redis_url: str, tmp: Path, shards: int, workers: int, window_s: float,
              sync_s: float, idle_s: float, describe_limit: float | None) -> dict[str, Any]:
    name = f"d{workers}{'' if describe_limit else 'u'}-{os.getpid()}"
    table = server.create_table(f"t-{name}", [("pk", "S")], view_type="NEW_IMAGE", shards=shards)
    server.model.set_faults(describe_stream_per_s=describe_limit)
    counter = CallCounter(server, ("DescribeStream",))
    fleet = Fleet(tmp, server.endpoint_url, table.stream_arn, redis_url, name,
                  flags={"shard-sync-interval": f"{sync_s:g}", "idle-poll-interval": f"{idle_s:g}",
                         "log-level": "INFO"})
    names = [f"w{i}" for i in range(workers)]
    try:
        t0 = time.time()
        for w in names:
            fleet.start(w)
        t_held = wait_until(lambda: all_held(redis_url, name, shards), 300, "every lease held", None, 1.0)
        t_end = t_held + window_s
        sampler = CpuSampler({w: p.pid for w, p in fleet.procs.items()}, period_s=5.0)
        sampler.start()
        while time.time() < t_end:
            time.sleep(1.0)
        sampler.stop_event.set()
        alive = sum(1 for p in fleet.procs.values() if p.poll() is None)
        exited = {w: p.returncode for w, p in fleet.procs.items() if p.poll() is not None}
        startup = counter.between(t0, t_held)
        steady = counter.between(t_held, t_end)
        leaders = [w for w in names if "now the group's leader" in fleet.log_text(w)]
        rss = [row[w]["rss_mb"] for row in sampler.samples[-1:] for w in names if row.get(w)]
        cpu = [row[w]["cpu_pct"] for row in sampler.samples[1:] for w in names if row.get(w)]
    finally:
        counter.restore()
        fleet.stop_all()
    pages = math.ceil(shards / 100)
    # Long run at the default settings: per FULL_SYNC_EVERY syncs, one full listing (pages calls)
    # and FULL_SYNC_EVERY - 1 incremental ones (one page each on a stream that did not change).
    per_min_longrun = (pages + FULL_SYNC_EVERY - 1) / FULL_SYNC_EVERY * 60 / sync_s
    return {
        "workers": workers, "shards": shards, "window_s": window_s, "shard_sync_interval_s": sync_s,
        "idle_poll_interval_s": idle_s, "startup_s": t_held - t0, "startup_calls": len(startup),
        "steady_calls": len(steady), "steady_calls_per_min": len(steady) / window_s * 60,
        "total_calls": len(startup) + len(steady), "peak_calls_in_1s": counter.peak_per_s("DescribeStream", t0, t_end),
        "leaders": leaders, "describe_limit_per_s": describe_limit,
        "throttled": len([e for e in counter.errors if e[2] == "LimitExceededException"]),
        "workers_alive_at_end": alive, "workers_exited": exited,
        "pages_per_full_listing": pages, "expected_longrun_per_min": per_min_longrun,
        "worker_rss_mb_median": sorted(rss)[len(rss) // 2] if rss else None,
        "worker_rss_mb_sum": sum(rss) if rss else None,
        "workers_cpu_pct_sum_mean": (sum(cpu) / max(1, len(sampler.samples) - 1)) if cpu else None,
        "call_times": [round(c[0] - t0, 3) for c in counter.between(t0, t_end)],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=2000)
    ap.add_argument("--workers", default="1,10,50")
    ap.add_argument("--window", type=float, default=120.0, help="steady seconds counted per point")
    ap.add_argument("--shard-sync-interval", type=float, default=60.0)
    ap.add_argument("--idle-poll-interval", type=float, default=30.0)
    ap.add_argument("--describe-limit", type=float, default=10.0,
                    help="server-side DescribeStream calls/s per stream before LimitExceededException "
                         "(AWS: 10/s per account and region); 0 disables")
    ap.add_argument("--also-unthrottled", metavar="N", default="",
                    help="comma-separated worker counts to run once more with the throttle off (--describe-limit 0)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="bench-discovery-"))
    print(f"worker logs in {tmp}", flush=True)
    results = []
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        points = [(int(x), args.describe_limit or None) for x in args.workers.split(",")]
        points += [(int(x), None) for x in args.also_unthrottled.split(",") if x]
        for n, limit in points:
            r = run_point(server, rs.url, tmp, args.shards, n, args.window, args.shard_sync_interval,
                          args.idle_poll_interval, limit)
            results.append(r)
            write_json(args.json, {"benchmark": "discovery_cost", "points": results})  # keep what is done
            print(f"{n} workers: start-up {r['startup_s']:.1f} s, {r['startup_calls']} calls; steady "
                  f"{r['steady_calls']} calls in {args.window:.0f} s = {r['steady_calls_per_min']:.2f}/min; peak "
                  f"{r['peak_calls_in_1s']}/s, throttled {r['throttled']}; leaders {r['leaders']}; "
                  f"exited {r['workers_exited']}; "
                  f"RSS median {r['worker_rss_mb_median']} MB",
                  flush=True)
    print("\n| workers | throttle /s | start-up calls (s) | steady calls / min | peak calls in 1 s | throttled | "
          "exited | leaders |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['workers']} | {r['describe_limit_per_s'] or 'off'} | "
              f"{r['startup_calls']} ({r['startup_s']:.1f} s) | {r['steady_calls_per_min']:.2f} | "
              f"{r['peak_calls_in_1s']} | {r['throttled']} | "
              f"{len(r['workers_exited'])} | {len(r['leaders'])} |")
    write_json(args.json, {"benchmark": "discovery_cost", "points": results})


if __name__ == "__main__":
    main()
