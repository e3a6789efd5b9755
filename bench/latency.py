"""End-to-end latency, write -> handler, at default settings: p50 / p99 / max.

    .venv/bin/python bench/latency.py [--shards 4] [--seconds 40] [--json PATH]

One ``python -m worker run`` process with DEFAULT settings (batch size 100, idle poll 1 s, lease
TTL 5 s; only ``--metrics-port 0``) against an in-process :class:`worker.local.LocalStreamsServer`
(``empty_page_probability`` 0) and a private redis-server.  A writer thread puts items carrying
their wall write time ``wt``; the handler (:func:`bench.bench_handlers.record_seqs`) appends the
handler wall time per batch.  Latency of a record = handler time - ``wt`` (same host clock).

Phases, one after the other on the same worker, ``--seconds`` each:

- busy: 10 records/s per shard (every shard has new records at each poll);
- sparse: one record per shard every 2.5 s (the shard's idle back-off, 0.1 s doubling up to the
  1 s idle poll interval, has reached its ceiling when the record lands, so a record waits up to
  about 1 s for the next poll).
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ENV, CpuSampler, Fleet, all_held, percentile, wait_until, write_json
from leaser.embedded import RedisServer
from worker.local import LocalStreamsServer

PHASES = (("busy", 10.0), ("sparse", 0.4))


class Writer(threading.Thread):
    """``rate`` records/s per shard, one key per shard, each item's ``wt`` = wall time at put."""

    def __init__(self, server: LocalStreamsServer, table: Any, rate: float, seconds: float) -> None:
        super().__init__(daemon=True)
        self.table, self.rate, self.seconds = table, rate, seconds
        keys: dict[str, str] = {}
        i = 0
        shard_ids = server.model.shard_ids(table)
        while len(keys) < len(shard_ids):
            key = f"k{i}"
            keys.setdefault(server.model.shard_for_key(table, key), key)
            i += 1
        self.keys = list(keys.values())
        self.written: dict[str, float] = {}

    def run(self) -> None:
        period = 1.0 / self.rate
        start = next_t = time.monotonic()
        n = 0
        while time.monotonic() - start < self.seconds:
            for key in self.keys:
                wt = time.time()
                seq = self.table.put_item({"pk": key, "n": n, "wt": repr(wt)})
                self.written[seq] = wt
            n += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=40.0, help="seconds per phase")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    print(f"worker logs in {tmp}", flush=True)
    results: list[dict[str, Any]] = []
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        group = f"lat-{os.getpid()}"
        table = server.create_table(f"t-{group}", [("pk", "S")], view_type="NEW_IMAGE", shards=args.shards)
        fleet = Fleet(tmp, server.endpoint_url, table.stream_arn, rs.url, group)
        try:
            fleet.start("w0")
            wait_until(lambda: all_held(rs.url, group, args.shards), 60, "every lease held", fleet)
            time.sleep(3.0)
            sampler = CpuSampler({"w0": fleet.procs["w0"].pid}, period_s=1.0)
            sampler.start()
            writers = []
            for phase, rate in PHASES:
                w = Writer(server, table, rate, args.seconds)
                w.start()
                w.join()
                writers.append((phase, rate, w))
                time.sleep(3.0)
            written_all = {s: wt for _, _, w in writers for s, wt in w.written.items()}
            wait_until(lambda: set(written_all) <= {s for b in fleet.batches() for s in b["seqs"]}, 60,
                       "every record handled", fleet)
            sampler.stop_event.set()
        finally:
            fleet.stop_all()
        first: dict[str, float] = {}
        for b in sorted(fleet.batches(), key=lambda b: b["t"]):
            for s in b["seqs"]:
                first.setdefault(s, b["t"])
        for phase, rate, w in writers:
            lat = [first[s] - wt for s, wt in w.written.items()]
            r = {"phase": phase, "rate_per_shard": rate, "shards": args.shards, "records": len(lat),
                 "p50_ms": percentile(lat, 50) * 1000, "p90_ms": percentile(lat, 90) * 1000,
                 "p99_ms": percentile(lat, 99) * 1000, "max_ms": max(lat) * 1000,
                 "mean_ms": statistics.fmean(lat) * 1000,
                 "samples": [[round(wt, 3), round(first[s] - wt, 4)] for s, wt in w.written.items()]}
            results.append(r)
            print(f"{phase} ({rate:g}/s per shard x {args.shards} shards, {len(lat)} records): p50 "
                  f"{r['p50_ms']:.0f} ms, p90 {r['p90_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, max {r['max_ms']:.0f} ms",
                  flush=True)
        rss = [row["w0"]["rss_mb"] for row in sampler.samples if row.get("w0")]
        cpu = [row["w0"]["cpu_pct"] for row in sampler.samples if row.get("w0")]
    write_json(args.json, {"benchmark": "latency", "phases": results, "worker_rss_mb_max": max(rss) if rss else None,
                           "worker_cpu_pct_mean": statistics.fmean(cpu) if cpu else None})


if __name__ == "__main__":
    main()
