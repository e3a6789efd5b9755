"""Idle cost: GetRecords calls per idle shard per minute and worker CPU, the new default vs the old fixed poll.

    .venv/bin/python bench/idle_cost.py [--shards 50] [--window 60] [--warmup 70] [--configs default,baseline]
                                        [--quiet-after S] [--json PATH]

Side by side in one run: one ``python -m worker run`` process per configuration, started together, each
on its own table of ``--shards`` shards that never receive a record (one in-process
:class:`worker.local.LocalStreamsServer`, one private redis-server, one group per configuration):

- ``default``: default settings (a shard quiet for ``--quiet-after`` 60 s is polled every
  ``--idle-poll-interval`` 4 s);
- ``baseline``: ``--idle-poll-interval 1`` (every caught-up shard polled once a second: the behaviour before
  quiet pacing);
- ``idle<S>``: ``--idle-poll-interval S`` (any other ceiling);
- ``wakes``: default settings while wakes keep coming: half of the table's shards (the *triggers*) get one
  record every ``WAKE_EVERY_S`` seconds in turn through the window, each one on a shard quiet for longer
  than ``--quiet-after`` (a wake of the worker's other quiet shards each time); calls are reported for the
  other half, which never get a record.  Target: still at most 15 per quiet shard per minute.
- ``budget``: ``--max-getrecords-per-second 5`` (the worker holds every shard of its group, so the whole
  budget is its own): 5 calls/s over 50 shards stretches every shard's interval to about 10 s, 6 calls per
  shard per minute (``calls_per_s`` in the JSON: the worker's total).

After every lease is held and ``--warmup`` seconds (longer than ``--quiet-after`` plus the ceiling, so the
shards are quiet), GetRecords and GetShardIterator calls are counted server-side per shard for ``--window``
seconds, and each worker's CPU sampled.  ``--quiet-after`` (default: the worker's 60 s) shortens the warm-up
of a quick run; it is passed to every configuration.  Lambda's event source mapping polls each shard 4 times
a second: 240 calls per shard per minute.  Target (issue 16): at most 15 per quiet shard per minute.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import ENV, CallCounter, CpuSampler, Fleet, all_held, wait_until, write_json
from leaser.embedded import RedisServer
from worker.local import LocalStreamsServer

LAMBDA_PER_SHARD_PER_MIN = 4 * 60


TARGET_PER_SHARD_PER_MIN = 15.0
BUDGET_CALLS_PER_S = 5
CONFIGS = {"default": {}, "baseline": {"idle-poll-interval": "1"}, "wakes": {},
           "budget": {"max-getrecords-per-second": str(BUDGET_CALLS_PER_S)}}
WAKE_EVERY_S = 2.5
"""Seconds between trigger records in the ``wakes`` configuration (the waker's own gap is 2 s)."""


def trigger_writes(server: LocalStreamsServer, table: Any, shard_ids: list[str], stop: threading.Event) -> None:
    """One record every WAKE_EVERY_S on the next of ``shard_ids`` in turn (each quiet again by its next turn if
    ``len(shard_ids) * WAKE_EVERY_S`` exceeds --quiet-after)."""
    keys = []
    for shard in shard_ids:
        i = 0
        while server.model.shard_for_key(table, {"S": f"k{i}"}) != shard:
            i += 1
        keys.append(f"k{i}")
    n = 0
    while not stop.wait(WAKE_EVERY_S):
        table.put_item({"pk": keys[n % len(keys)], "n": n})
        n += 1


def config_flags(name: str) -> dict[str, str]:
    if name in CONFIGS:
        return dict(CONFIGS[name])
    if name.startswith("idle"):
        return {"idle-poll-interval": name[4:]}
    raise SystemExit(f"unknown configuration {name!r}: {', '.join(CONFIGS)} or idle<seconds>")


def run(server: LocalStreamsServer, redis_url: str, tmp: Path, names: list[str], shards: int, window_s: float,
        warmup_s: float, quiet_after: str | None) -> list[dict[str, Any]]:
    counter = CallCounter(server, ("GetRecords", "GetShardIterator"))
    tables, fleets = {}, {}
    try:
        for name in names:
            group = f"idle-{name}-{os.getpid()}".replace(".", "_")
            tables[name] = server.create_table(f"t-{group}", [("pk", "S")], view_type="NEW_IMAGE", shards=shards)
            flags = config_flags(name) | ({"quiet-after": quiet_after} if quiet_after else {})
            fleets[name] = Fleet(tmp, server.endpoint_url, tables[name].stream_arn, redis_url, group, flags=flags)
        for fleet in fleets.values():
            fleet.start("w0")
        for fleet in fleets.values():
            wait_until(lambda f=fleet: all_held(redis_url, f.group, shards), 120, "every lease held", fleet)
        time.sleep(warmup_s)
        stop_writes = threading.Event()
        triggers = {name: sorted(server.model.shard_ids(tables[name]))[::2] for name in names if name == "wakes"}
        writers = [threading.Thread(target=trigger_writes, args=(server, tables[name], ids, stop_writes), daemon=True)
                   for name, ids in triggers.items()]
        for w in writers:
            w.start()
        time.sleep(2 * WAKE_EVERY_S if writers else 0.0)  # wakes under way before the window
        sampler = CpuSampler({name: fleet.procs["w0"].pid for name, fleet in fleets.items()}, period_s=1.0)
        sampler.start()
        t0 = time.time()
        time.sleep(window_s)
        t1 = time.time()
        stop_writes.set()
        sampler.stop_event.set()
        for fleet in fleets.values():
            fleet.check_alive()
    finally:
        counter.restore()
        for fleet in fleets.values():
            fleet.stop_all()
    results = []
    for name in names:
        table, flags = tables[name], fleets[name].flags
        ids = set(server.model.shard_ids(table)) - set(triggers.get(name, ()))
        gr = [c for c in counter.between(t0, t1, "GetRecords") if c[2] in ids]
        per_shard = Counter(c[2] for c in gr)
        per_min = [per_shard.get(s, 0) / (t1 - t0) * 60 for s in ids]
        gsi = [c for c in counter.between(t0, t1, "GetShardIterator") if c[2] in ids]
        cpu = [row[name]["cpu_pct"] for row in sampler.samples if row.get(name)]
        rss = [row[name]["rss_mb"] for row in sampler.samples if row.get(name)]
        results.append({
            "config": name, "flags": {k: v for k, v in flags.items() if k != "metrics-port"},
            "shards": len(ids), "idle_poll_interval_s": float(flags.get("idle-poll-interval", 4.0)),
            "window_s": t1 - t0, "warmup_s": warmup_s,
            "get_records_calls": len(gr), "get_shard_iterator_calls": len(gsi), "calls_per_s": len(gr) / (t1 - t0),
            "per_shard_per_min_median": statistics.median(per_min), "per_shard_per_min_min": min(per_min),
            "per_shard_per_min_max": max(per_min), "lambda_per_shard_per_min": LAMBDA_PER_SHARD_PER_MIN,
            "target_per_shard_per_min": TARGET_PER_SHARD_PER_MIN,
            "worker_cpu_pct_mean": statistics.fmean(cpu) if cpu else None, "worker_rss_mb": max(rss) if rss else None,
        })
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=50)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=70.0)
    ap.add_argument("--configs", default="default,baseline",
                    help=f"comma-separated: {', '.join(CONFIGS)}, idle<S>")
    ap.add_argument("--quiet-after", help="--quiet-after for every worker (a quick run's shorter warm-up)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    print(f"worker logs in {tmp}", flush=True)
    names = args.configs.split(",")
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        results = run(server, rs.url, tmp, names, args.shards, args.window, args.warmup, args.quiet_after)
    for r in results:
        print(f"{r['config']} ({' '.join(f'--{k} {v}' for k, v in r['flags'].items()) or 'default settings'}): "
              f"{r['get_records_calls']} GetRecords on {r['shards']} shards in {r['window_s']:.0f} s = "
              f"{r['per_shard_per_min_median']:.1f} per shard per minute (min {r['per_shard_per_min_min']:.1f}, "
              f"max {r['per_shard_per_min_max']:.1f}; {r['calls_per_s']:.2f} calls/s in all); GetShardIterator "
              f"{r['get_shard_iterator_calls']}; worker CPU "
              f"{r['worker_cpu_pct_mean']:.1f}% of one core; target <= {TARGET_PER_SHARD_PER_MIN:g}; Lambda: "
              f"{LAMBDA_PER_SHARD_PER_MIN}", flush=True)
    write_json(args.json, {"benchmark": "idle_cost", "points": results,
                           "quiet_after_s": float(args.quiet_after) if args.quiet_after else 60.0})


if __name__ == "__main__":
    main()
