"""Memory (RSS) and CPU of one worker process holding 1,000 shards: idle, then with traffic.

    .venv/bin/python bench/memory.py [--shards 1000] [--seconds 30] [--rate 500] [--json PATH]

One ``python -m worker run`` process with DEFAULT settings (idle poll 1 s, 32 shard threads;
only ``--metrics-port 0``; handler :func:`bench.bench_handlers:record_seqs`) against an in-process
:class:`worker.local.LocalStreamsServer` with ``--shards`` shards and a private redis-server.
RSS (psutil) and CPU are sampled every second:

- start: right after start-up (before the leases are taken);
- idle: from 10 s after every lease is held, ``--seconds`` s (every shard polled about once a
  second: GetRecords calls are counted server-side to show the rate actually reached);
- traffic: ``--rate`` records/s (1.4 KB-ish NEW_IMAGE items on random keys, so spread over all
  shards) for ``--seconds`` s; every record must be handled.

The local server runs in this process and shares the 2 cores; its CPU is reported too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ENV, CallCounter, CpuSampler, Fleet, all_held, wait_until, write_json
from leaser.embedded import RedisServer
from worker.local import LocalStreamsServer

PAYLOAD = "x" * 1200


def summarize(samples: list[dict[str, Any]], t0: float, t1: float, name: str) -> dict[str, Any]:
    rows = [r[name] for r in samples if t0 <= r["t"] <= t1 and r.get(name)]
    if not rows:
        return {}
    return {"rss_mb_max": max(r["rss_mb"] for r in rows), "rss_mb_median": statistics.median(r["rss_mb"] for r in rows),
            "cpu_pct_mean": statistics.fmean(r["cpu_pct"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=500.0, help="records/s in the traffic phase")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    print(f"worker logs in {tmp}", flush=True)
    out: dict[str, Any] = {"benchmark": "memory", "shards": args.shards, "seconds": args.seconds, "rate": args.rate}
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        group = f"mem-{os.getpid()}"
        table = server.create_table(f"t-{group}", [("pk", "S")], view_type="NEW_IMAGE", shards=args.shards)
        counter = CallCounter(server, ("GetRecords",))
        fleet = Fleet(tmp, server.endpoint_url, table.stream_arn, rs.url, group)
        try:
            t_start = time.time()
            fleet.start("w0")
            sampler = CpuSampler({"w0": fleet.procs["w0"].pid, "bench": os.getpid()}, period_s=1.0)
            sampler.start()
            t_held = wait_until(lambda: all_held(rs.url, group, args.shards), 180, "every lease held", fleet)
            out["all_held_after_s"] = t_held - t_start
            time.sleep(10.0)
            t0 = time.time()
            time.sleep(args.seconds)
            t1 = time.time()
            out["idle"] = summarize(sampler.samples, t0, t1, "w0")
            out["idle"]["bench_process_cpu_pct_mean"] = summarize(sampler.samples, t0, t1, "bench")["cpu_pct_mean"]
            out["idle"]["get_records_per_s"] = len(counter.between(t0, t1)) / (t1 - t0)
            written: dict[str, float] = {}

            def write() -> None:
                n, period, next_t = 0, 1.0 / args.rate, time.monotonic()
                while time.time() < t2 + args.seconds:
                    seq = table.put_item({"pk": f"k{n}", "n": n, "wt": repr(time.time()), "payload": PAYLOAD})
                    written[seq] = time.time()
                    n += 1
                    next_t += period
                    time.sleep(max(0.0, next_t - time.monotonic()))

            t2 = time.time()
            writer = threading.Thread(target=write, daemon=True)
            writer.start()
            writer.join()
            t3 = time.time()
            wait_until(lambda: set(written) <= {s for b in fleet.batches() for s in b["seqs"]}, 120,
                       "every record handled", fleet)
            t4 = time.time()
            out["traffic"] = summarize(sampler.samples, t2, t4, "w0")
            out["traffic"]["bench_process_cpu_pct_mean"] = summarize(sampler.samples, t2, t4, "bench")["cpu_pct_mean"]
            out["traffic"]["records"] = len(written)
            out["traffic"]["records_per_s_written"] = len(written) / (t3 - t2)
            out["traffic"]["drain_after_writer_s"] = t4 - t3
            out["traffic"]["get_records_per_s"] = len(counter.between(t2, t4)) / (t4 - t2)
            first = sorted(r["w0"]["rss_mb"] for r in sampler.samples[:2] if r.get("w0"))
            out["start_rss_mb"] = first[0] if first else None
            out["rss_mb_max_overall"] = max(r["w0"]["rss_mb"] for r in sampler.samples if r.get("w0"))
            out["timeline"] = [[round(r["t"] - t_start, 1), round(r["w0"]["rss_mb"], 1), round(r["w0"]["cpu_pct"], 1)]
                               for r in sampler.samples if r.get("w0")]
            out["phases_s"] = {"held": t_held - t_start, "idle": [t0 - t_start, t1 - t_start],
                               "traffic": [t2 - t_start, t4 - t_start]}
            sampler.stop_event.set()
            fleet.check_alive()
        finally:
            counter.restore()
            fleet.stop_all()
    out["cpus"] = psutil.cpu_count()
    print(f"1 worker, {args.shards} shards: all leases held {out['all_held_after_s']:.1f} s after Popen; RSS at start "
          f"{out['start_rss_mb']:.0f} MB; idle RSS {out['idle']['rss_mb_max']:.0f} MB, CPU "
          f"{out['idle']['cpu_pct_mean']:.0f}% of one core, GetRecords {out['idle']['get_records_per_s']:.0f}/s "
          f"(bench/server process {out['idle']['bench_process_cpu_pct_mean']:.0f}%); traffic "
          f"{out['traffic']['records_per_s_written']:.0f} records/s: RSS {out['traffic']['rss_mb_max']:.0f} MB, CPU "
          f"{out['traffic']['cpu_pct_mean']:.0f}%, drained {out['traffic']['drain_after_writer_s']:.1f} s after the "
          "writer stopped", flush=True)
    write_json(args.json, out)


if __name__ == "__main__":
    main()
