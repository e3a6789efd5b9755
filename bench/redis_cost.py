"""Redis cost per busy shard, with and without checkpoint coalescing, and the duplicates a crash then causes.

    .venv/bin/python bench/redis_cost.py [--shards 8] [--rate 10] [--window 20] [--intervals 0,1,5] [--json PATH]

Side by side in one run: one ``python -m worker run`` process per ``--checkpoint-interval`` value (0 = a
checkpoint per batch, the default), started together, each with its OWN private redis-server (so its
commands are counted alone) and its own table of ``--shards`` shards on one in-process
:class:`worker.local.LocalStreamsServer`.  Default settings otherwise.

1. idle: ``--window`` seconds after every lease is held, no records: Redis ``total_commands_processed``/s
   (heartbeats, the leader's work);
2. busy: ``--rate`` records/s per shard into every table for ``--window`` seconds: commands/s again, and
   the scripts run (``INFO commandstats`` EVALSHA: a checkpoint is one).  Per busy shard = (busy - idle) /
   shards.  ``total_commands_processed`` and ``commandstats`` count every command a Lua script runs too;
3. crash: with the writers still running, SIGKILL each worker, start a replacement (it takes the leases
   over once they expire, lease TTL 5 s), stop writing 1 s later and count the records handled twice
   (what the killed worker handled after its last checkpoint) and those never handled (must be 0).
   The documented bound: ``interval x rate x shards`` plus one batch per shard.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import redis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ENV, Fleet, all_held, wait_until, write_json
from bench.latency import Writer
from leaser.embedded import RedisServer
from worker.local import LocalStreamsServer


def redis_stats(url: str) -> tuple[int, dict[str, int]]:
    client = redis.Redis.from_url(url)
    try:
        total = int(client.info("stats")["total_commands_processed"])
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in client.info("commandstats").items()}
    finally:
        client.close()
    return total, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rate", type=float, default=10.0, help="records/s per shard")
    ap.add_argument("--window", type=float, default=20.0)
    ap.add_argument("--intervals", default="0,1,5", help="comma-separated --checkpoint-interval values")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="bench-redis-cost-"))
    print(f"worker logs in {tmp}", flush=True)
    intervals = [float(x) for x in args.intervals.split(",")]
    results = []
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, contextlib.ExitStack() as stack:
        urls, tables, fleets = {}, {}, {}
        try:
            for iv in intervals:
                urls[iv] = stack.enter_context(RedisServer()).url
                group = f"rc-{iv:g}-{os.getpid()}".replace(".", "_")
                tables[iv] = server.create_table(f"t-{group}", [("pk", "S")], view_type="NEW_IMAGE",
                                                 shards=args.shards)
                fleets[iv] = Fleet(tmp, server.endpoint_url, tables[iv].stream_arn, urls[iv], group,
                                   flags={"checkpoint-interval": f"{iv:g}"})
                fleets[iv].start("w0")
            for iv, fleet in fleets.items():
                wait_until(lambda f=fleet, u=urls[iv]: all_held(u, f.group, args.shards), 60, "every lease held", fleet)
            time.sleep(3.0)
            marks: dict[float, list[tuple[float, int, dict[str, int]]]] = {iv: [] for iv in intervals}
            walls: list[float] = []

            def mark() -> None:
                walls.append(time.time())
                for iv in intervals:
                    marks[iv].append((time.monotonic(), *redis_stats(urls[iv])))

            mark()
            time.sleep(args.window)
            mark()
            writers = {iv: Writer(server, tables[iv], args.rate, args.window + 3600) for iv in intervals}
            for w in writers.values():
                w.start()
            time.sleep(3.0)  # past the start of the traffic
            mark()
            time.sleep(args.window)
            mark()
            # The crash: SIGKILL with the writers running; a replacement takes the leases over.
            for fleet in fleets.values():
                fleet.procs["w0"].send_signal(signal.SIGKILL)
                fleet.start("w1")
            time.sleep(1.0)
            for w in writers.values():
                w.seconds = 0  # stops at its next round
            for w in writers.values():
                w.join()
            for iv, fleet in fleets.items():
                want = set(writers[iv].written)
                wait_until(lambda f=fleet, w=want: w <= {s for b in f.batches() for s in b["seqs"]}, 90,
                           "every record handled", fleet)
        finally:
            for fleet in fleets.values():
                fleet.stop_all()
        for iv in intervals:
            (i0, idle0, icalls0), (i1, idle1, icalls1), (b0, busy0, calls0), (b1, busy1, calls1) = marks[iv]
            idle_per_s = (idle1 - idle0) / (i1 - i0)
            busy_per_s = (busy1 - busy0) / (b1 - b0)
            idle_scripts = (icalls1.get("evalsha", 0) - icalls0.get("evalsha", 0)) / (i1 - i0)
            busy_scripts = (calls1.get("evalsha", 0) - calls0.get("evalsha", 0)) / (b1 - b0)
            client_calls = {k: (calls1.get(k, 0) - calls0.get(k, 0)) / (b1 - b0) for k in calls1}
            client_calls = {k: round(v, 2) for k, v in client_calls.items() if v > 0}
            handled = Counter(s for b in fleets[iv].batches() for s in b["seqs"])
            written = writers[iv].written
            duplicates = sum(c - 1 for s, c in handled.items() if c > 1)
            missing = sum(1 for s in written if s not in handled)
            batches = fleets[iv].batches()
            busy_batches = [b for b in batches if walls[2] <= b["t"] < walls[3]]
            r = {"checkpoint_interval_s": iv, "shards": args.shards, "rate_per_shard": args.rate,
                 "window_s": args.window, "idle_commands_per_s": idle_per_s, "busy_commands_per_s": busy_per_s,
                 "commands_per_busy_shard_per_s": (busy_per_s - idle_per_s) / args.shards,
                 "busy_commandstats_per_s": client_calls, "batches": len(batches),
                 "scripts_per_busy_shard_per_s": (busy_scripts - idle_scripts) / args.shards,
                 "batches_per_shard_per_s": len(batches) / args.shards / (args.window + 3.0 + args.window),
                 "batches_per_busy_shard_per_s": len(busy_batches) / args.shards / (walls[3] - walls[2]),
                 "records_written": len(written), "crash_duplicates": duplicates, "crash_missing": missing,
                 "duplicate_bound": int(iv * args.rate * args.shards) + 100 * args.shards}
            results.append(r)
            print(f"--checkpoint-interval {iv:g}: Redis commands/s idle {idle_per_s:.0f}, busy {busy_per_s:.0f} "
                  f"({args.shards} shards x {args.rate:g} records/s) = {r['commands_per_busy_shard_per_s']:.1f} per "
                  f"busy shard, of which {r['scripts_per_busy_shard_per_s']:.2f} EVALSHA (a checkpoint each; "
                  f"{r['batches_per_busy_shard_per_s']:.2f} batches/s per shard); "
                  f"commandstats/s busy {client_calls}; SIGKILL: {duplicates} duplicates "
                  f"(bound {r['duplicate_bound']}), {missing} missing", flush=True)
    write_json(args.json, {"benchmark": "redis_cost", "points": results})


if __name__ == "__main__":
    main()
