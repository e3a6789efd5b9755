"""Async vs sync handlers: batches per second when each batch waits on an I/O call (5 and 200 ms), 64 shards.

    .venv/bin/python bench/async_handlers.py [--shards 64] [--records 25600] [--batch-size 10]
                                             [--io-ms 5,200] [--reps 3] [--json PATH]

One ``python -m worker run`` process per run against an in-process
:class:`worker.local.LocalStreamsServer` and a private redis-server (never 6379).  Each run drains a
backlog of ``--records`` small records spread over ``--shards`` shards, ``--batch-size`` per batch,
with one of two handlers defined below: ``sync_io`` (``time.sleep(io)`` per batch) or ``async_io``
(``await asyncio.sleep(io)`` per batch, on the worker's event loop).  Everything else is the same.
Each handler appends one line per batch (start and end, wall time) to ``$SHARDLEASE_BENCH_OUT``.

Figures, for each I/O time: batches/s over the middle 80 % of each drain (from the 10th to the 90th
percentile batch end, so start-up and the uneven tail do not count), the most handler calls in flight at
once (what bounds concurrency: the scheduler's step threads, 32 with a sync handler and 128 with an async
one), and the async/sync ratio of the medians.  With 200 ms of I/O the worker waits more than it works, so
the ratio shows what the thread bound costs a sync handler; the runs of the longer I/O time drain a
quarter of ``--records`` (the same number of batches would take minutes).
Runs alternate sync/async so drift hits both.  Last, in this process: microseconds per call of a
handler that does nothing, sync vs async (the cost of the hop to the loop thread and back).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import Fleet, machine_info, wait_until, write_json


def _io_s() -> float:
    return float(os.environ.get("BENCH_IO_S", "0.005"))


def _record(started: float, records: Sequence[Any], ctx: Any) -> None:
    line = orjson.dumps({"shard": ctx.shard_id, "n": len(records), "start": started, "end": time.time()})
    fd = os.open(os.environ["SHARDLEASE_BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)


def sync_io(records: Sequence[Any], ctx: Any) -> None:
    """The baseline: a blocking 5 ms I/O call per batch."""
    started = time.time()
    time.sleep(_io_s())
    _record(started, records, ctx)


async def async_io(records: Sequence[Any], ctx: Any) -> None:
    """The same work as an async handler: an awaited 5 ms I/O call per batch."""
    started = time.time()
    await asyncio.sleep(_io_s())
    _record(started, records, ctx)


def max_in_flight(batches: list[dict[str, Any]]) -> int:
    events = sorted([(b["start"], 1) for b in batches] + [(b["end"], -1) for b in batches])
    best = now = 0
    for _, delta in events:
        now += delta
        best = max(best, now)
    return best


def call_overhead_us(calls: int = 5000) -> dict[str, float]:
    """Microseconds per ``Handler.handle`` call of a handler that does nothing, sync vs async, in this
    process from one thread: the cost of the hop to the event loop thread and back."""
    from worker.handling.handler import ShardContext, as_handler

    async def nothing_async(records: Sequence[Any], ctx: Any) -> None:
        return None

    ctx = ShardContext(shard_id="s", worker_id="w", stream_arn="a", group="g", lease_token=1)
    result = {}
    for kind, func in (("sync", lambda records, ctx: None), ("async", nothing_async)):
        handler = as_handler(func)
        handler.use_runtime(timeout_s=300)
        handler.handle([], ctx)  # start the loop outside the timing
        t0 = time.perf_counter()
        for _ in range(calls):
            handler.handle([], ctx)
        result[kind] = (time.perf_counter() - t0) / calls * 1e6
        handler.close()
    return result


def run_one(server: Any, redis_url: str, tmp: Path, kind: str, rep: int, shards: int, records: int,
            batch_size: int, io_s: float) -> dict[str, Any]:
    name = f"{kind}-{rep}-{round(io_s * 1000)}ms-{os.getpid()}"
    table = server.create_table(f"t-{name}", [("pk", "S")], view_type="NEW_IMAGE", shards=shards)
    for n in range(records):
        table.put_item({"pk": f"k{n}", "n": n})
    fleet = Fleet(tmp, server.endpoint_url, table.stream_arn, redis_url, name,
                  handler=f"bench.async_handlers:{kind}_io",
                  flags={"batch-size": str(batch_size), "idle-poll-interval": "0.5"})
    os.environ["BENCH_IO_S"] = str(io_s)  # inherited by the worker
    try:
        fleet.start("w0")
        wait_until(lambda: sum(b["n"] for b in fleet.batches()) >= records, 600, f"{kind}: every record handled",
                   fleet, poll_s=0.2)
    finally:
        fleet.stop_all()
    batches = fleet.batches()
    ends = sorted(b["end"] for b in batches)
    lo, hi = ends[len(ends) // 10], ends[len(ends) * 9 // 10]
    middle = len(ends) * 9 // 10 - len(ends) // 10
    return {"kind": kind, "rep": rep, "batches": len(batches), "records": sum(b["n"] for b in batches),
            "batches_per_s": middle / (hi - lo), "max_in_flight": max_in_flight(batches),
            "drain_s": ends[-1] - min(b["start"] for b in batches)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--records", type=int, default=25600)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--io-ms", default="5,200", help="comma-separated I/O times per batch, in ms")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    io_times = [float(x) for x in args.io_ms.split(",")]

    from leaser.embedded import RedisServer
    from worker.local import LocalStreamsServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-async-"))
    print(f"logs in {tmp}", flush=True)
    by_io: list[dict[str, Any]] = []
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        for io_ms in io_times:
            records = args.records if io_ms == io_times[0] else max(args.records // 4, args.shards * args.batch_size)
            runs: list[dict[str, Any]] = []
            for rep in range(args.reps):
                order = ("sync", "async") if rep % 2 == 0 else ("async", "sync")
                for kind in order:
                    run = run_one(server, rs.url, tmp, kind, rep, args.shards, records, args.batch_size, io_ms / 1000)
                    print(f"  {io_ms:g} ms {kind:5} rep {rep}: {run['batches_per_s']:7.0f} batches/s, "
                          f"{run['batches']} batches, max {run['max_in_flight']} calls in flight, "
                          f"drain {run['drain_s']:.1f} s", flush=True)
                    runs.append(run)
            med = {kind: statistics.median(r["batches_per_s"] for r in runs if r["kind"] == kind)
                   for kind in ("sync", "async")}
            in_flight = {kind: max(r["max_in_flight"] for r in runs if r["kind"] == kind) for kind in ("sync", "async")}
            by_io.append({"io_ms": io_ms, "records": records, "runs": runs, "median_batches_per_s": med,
                          "max_in_flight": in_flight, "ratio": med["async"] / med["sync"]})
    print(f"\n| I/O per batch ({args.shards} shards, batch {args.batch_size}) | sync batches/s | async batches/s "
          "| async / sync | most calls in flight, sync / async |")
    print("|---|---|---|---|---|")
    for r in by_io:
        med, flight = r["median_batches_per_s"], r["max_in_flight"]
        print(f"| {r['io_ms']:g} ms | {med['sync']:.0f} | {med['async']:.0f} | {r['ratio']:.2f} | "
              f"{flight['sync']} / {flight['async']} |")
    overhead = call_overhead_us()
    print(f"\nper call of a handler doing nothing, in-process: sync {overhead['sync']:.1f} us, "
          f"async {overhead['async']:.1f} us (the hop to the event loop thread and back)")
    if args.json:
        write_json(args.json, {"benchmark": "async_handlers", "machine": machine_info(), "args": vars(args),
                               "by_io": by_io, "call_overhead_us": overhead})


if __name__ == "__main__":
    main()
