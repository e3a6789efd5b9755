"""Drain rate vs ``--processes``: N worker processes in one pod (one supervisor) vs one process.

    .venv/bin/python bench/processes.py [--counts 1,2,<cores>] [--records 12000] [--shards 8]
                                        [--work-us 250] [--reps 5] [--json PATH]

One backlog of ``--records`` realistic MODIFY records (NEW_AND_OLD_IMAGES, ~1.4 KB each, the records of
``bench/worker_throughput.py``) over ``--shards`` shards, in an in-process
:class:`worker.local.LocalStreamsServer`, and a private redis-server (never 6379).  Per repetition and
per count N (order reversed on odd repetitions, so drift hits every count alike): one
``python -m worker run --processes N`` (N = 1 is the plain single process, no supervisor) with a fresh
group drains the whole backlog with batch size 500 and ``--max-shards`` shards/N, so each process takes
its share from the start (without it the first process up takes every shard and hands some over as the
others join, which on a short drain is most of the difference).  The group's shards are registered
before the workers start (:func:`register_shards`), as for every start of a group but its first.  The
handler (:func:`work`) touches every record's keys and images and then spends ``--work-us``
microseconds of CPU per record (a handler that does real work per record, so the worker side, not the
in-process local server, is what has to scale).

Figures per N: records/s from ``Popen`` to the last batch's end (start-up, supervisor, rebalancing
included) and "steady" from the first batch's start to the last batch's end; the speed-up of each over
N = 1 in the same run; CPU seconds of the process tree.  After each drain, N plain CPU-bound Python
processes (sha256 loops, 1.5 s) measure what the machine gives N processes at that moment: on a shared
machine the worker's speed-up can only be read against that ceiling.  The default counts are 1, 2 and the machine's
cores.  The local server shares the machine's cores with the workers: on a machine with few cores it
takes a share of them.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def work(records: Sequence[Any], ctx: Any) -> None:
    """The benchmark's handler: touch every record's images, then ``$BENCH_WORK_US`` µs of CPU per record;
    append ``{t0, t1, n, w}`` for the batch to ``$SHARDLEASE_BENCH_OUT``."""
    from bench.bench_handlers import _append, touch_record_images

    t0 = time.time()
    per_record_s = float(os.environ.get("BENCH_WORK_US") or 0) / 1e6
    acc = 0
    for r in records:
        acc += touch_record_images(r.keys, r.new_image, r.old_image)
        if per_record_s:
            end = time.thread_time() + per_record_s
            while time.thread_time() < end:
                pass
    _append(orjson.dumps({"t0": t0, "t1": time.time(), "n": len(records), "acc": acc, "w": ctx.worker_id}))


def register_shards(endpoint_url: str, redis_url: str, group: str, stream_arn: str) -> None:
    """List the stream's shards into the group, as its leader does at its first start: a drain then
    measures workers taking a registered group's shards (every start but a group's very first), not how
    soon the first leader's listing reaches the others."""
    from leaser import LeaseStore, connect
    from worker.discovery import ShardDiscovery
    from worker.observability import Metrics
    from worker.reading.streams import StreamsClient

    streams = StreamsClient(region_name="us-east-1", endpoint_url=endpoint_url)
    client = connect(redis_url)
    try:
        ShardDiscovery(streams, LeaseStore(client, group), stream_arn, Metrics("bench", group)).sync(full=True)
    finally:
        streams.close()
        client.close()


def drain(processes: int, shards: int, endpoint_url: str, stream_arn: str, redis_url: str, group: str,
          expected: int, work_us: float, tmp: Path, timeout_s: float = 600) -> dict[str, Any]:
    import psutil

    out = tmp / f"{group}.jsonl"
    log_path = tmp / f"{group}.log"
    env = dict(os.environ, **ENV, SHARDLEASE_BENCH_OUT=str(out), BENCH_WORK_US=str(work_us), PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "worker", "run", "--stream-arn", stream_arn, "--endpoint-url", endpoint_url,
            "--redis-url", redis_url, "--group", group, "--worker-id", "bench", "--handler", "bench.processes:work",
            "--batch-size", "500", "--metrics-port", "0", "--processes", str(processes),
            "--max-shards", str(math.ceil(shards / processes))]
    register_shards(endpoint_url, redis_url, group, stream_arn)
    bench_cpu0 = time.process_time()
    with open(log_path, "wb") as log:
        t_wall0 = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        root = psutil.Process(proc.pid)
        cpu: dict[int, float] = {}
        rows: list[dict[str, Any]] = []
        n = 0
        while n < expected:
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited {proc.returncode}; see {log_path}")
            if time.perf_counter() - t0 > timeout_s:
                proc.kill()
                raise RuntimeError(f"timeout: {n}/{expected} handled; see {log_path}")
            time.sleep(0.05)
            for p in [root, *root.children(recursive=True)]:  # the last CPU sample of each process
                try:
                    times = p.cpu_times()
                    cpu[p.pid] = times.user + times.system
                except psutil.Error:
                    pass
            if out.exists():
                rows = [orjson.loads(line) for line in out.read_bytes().splitlines()]
                n = sum(r["n"] for r in rows)
        bench_cpu = time.process_time() - bench_cpu0
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    first, last = min(r["t0"] for r in rows), max(r["t1"] for r in rows)
    return {"processes": processes, "records": n, "exit_code": code, "from_popen_s": last - t_wall0,
            "steady_s": last - first, "startup_s": first - t_wall0, "cpu_s": sum(cpu.values()),
            "server_cpu_s": bench_cpu,
            "workers": sorted({r["w"] for r in rows}), "acc": sum(r["acc"] for r in rows),
            "spans": {w: [min(r["t0"] for r in rows if r["w"] == w) - first,
                          max(r["t1"] for r in rows if r["w"] == w) - first] for w in {r["w"] for r in rows}}}


CAPACITY_LOOP = (
    "import hashlib, sys, time\n"
    "end = time.perf_counter() + float(sys.argv[1]); data = b'x' * 1024; n = 0\n"
    "while time.perf_counter() < end:\n"
    "    hashlib.sha256(data).digest(); n += 1\n"
    "print(n)\n"
)


def capacity(processes: int, seconds: float = 1.5) -> float:
    """Hashes per second of ``processes`` plain CPU-bound Python processes at once: what the machine gives N
    processes right now (on a shared machine, less than N cores' worth)."""
    procs = [subprocess.Popen([sys.executable, "-c", CAPACITY_LOOP, str(seconds)], stdout=subprocess.PIPE)
             for _ in range(processes)]
    return sum(int(p.communicate()[0]) for p in procs) / seconds


def summarize(runs: list[dict[str, Any]], counts: list[int], records: int) -> dict[str, dict[str, float]]:
    """Per count: median records/s (from Popen, steady), speed-up over the first count, median CPU s."""
    out: dict[str, dict[str, float]] = {}
    for n in counts:
        mine = [r for r in runs if r["processes"] == n]
        out[str(n)] = {"rate_from_popen": statistics.median(records / r["from_popen_s"] for r in mine),
                       "rate_steady": statistics.median(records / r["steady_s"] for r in mine),
                       "cpu_s": statistics.median(r["cpu_s"] for r in mine),
                       "startup_s": statistics.median(r["startup_s"] for r in mine),
                       "capacity": statistics.median(r["capacity"] for r in mine)}
    base = out[str(counts[0])]
    for row in out.values():
        row["speedup_from_popen"] = row["rate_from_popen"] / base["rate_from_popen"]
        row["speedup_steady"] = row["rate_steady"] / base["rate_steady"]
        row["capacity_ratio"] = row["capacity"] / base["capacity"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    ap.add_argument("--counts", default=",".join(str(c) for c in sorted({1, 2, cores})))
    ap.add_argument("--records", type=int, default=12000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--work-us", type=float, default=250.0)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    from bench._common import machine_info, write_json
    from bench.worker_throughput import build_backlog
    from leaser.embedded import RedisServer
    from worker.local import LocalStreamsServer

    counts = [int(c) for c in args.counts.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-processes-"))
    runs: list[dict[str, Any]] = []
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        t = time.perf_counter()
        table = build_backlog(server, args.records, args.shards)
        print(f"backlog: {args.records} records over {args.shards} shards in {time.perf_counter() - t:.1f} s; "
              f"{cores} cores; handler work {args.work_us:g} us CPU per record; logs in {tmp}", flush=True)
        for rep in range(args.reps):
            for n in counts if rep % 2 == 0 else list(reversed(counts)):
                r = drain(n, args.shards, server.endpoint_url, table.stream_arn, rs.url, f"pr{rep}n{n}-{os.getpid()}",
                          args.records, args.work_us, tmp)
                assert r["records"] == args.records, r
                r["capacity"] = capacity(n)
                runs.append({"rep": rep, **r})
                print(f"rep {rep} processes {n}: {r['from_popen_s']:.2f} s from Popen "
                      f"({args.records / r['from_popen_s']:,.0f}/s), steady {r['steady_s']:.2f} s "
                      f"({args.records / r['steady_s']:,.0f}/s), start-up {r['startup_s']:.2f} s, CPU "
                      f"{r['cpu_s']:.2f} s (+ server {r['server_cpu_s']:.2f} s), exit {r['exit_code']}, workers "
                      f"{','.join(r['workers'])}; {n} plain CPU-bound "
                      f"processes: {r['capacity']:,.0f} hashes/s", flush=True)
    summary = summarize(runs, counts, args.records)
    print(f"\nmedian of {args.reps}, {args.records} records, {args.shards} shards, {args.work_us:g} us/record:\n")
    print("| processes | records/s from Popen | speed-up | records/s steady | speed-up | CPU s | machine's "
          "capacity for N CPU-bound processes |")
    print("|---|---|---|---|---|---|---|")
    for label, s in summary.items():
        print(f"| {label} | {s['rate_from_popen']:,.0f} | {s['speedup_from_popen']:.2f}x | {s['rate_steady']:,.0f} | "
              f"{s['speedup_steady']:.2f}x | {s['cpu_s']:.2f} | {s['capacity_ratio']:.2f}x |")
    write_json(args.json, {"args": vars(args), "cores": cores, "machine": machine_info(), "runs": runs,
                           "summary": summary})


# -- for bench/report.py ---------------------------------------------------------------------------


def plot(data: dict[str, Any] | None, img: Path) -> dict[str, str]:
    """docs/img/processes.png: records/s vs processes (from Popen and steady) beside linear scaling."""
    if not data:
        return {}
    import matplotlib.pyplot as plt

    counts = [int(n) for n in data["summary"]]
    steady = [data["summary"][str(n)]["rate_steady"] for n in counts]
    popen = [data["summary"][str(n)]["rate_from_popen"] for n in counts]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(counts, steady, "o-", label="steady (first batch -> last)")
    ax.plot(counts, popen, "s-", label="from Popen (start-up incl.)")
    ax.plot(counts, [steady[0] * n / counts[0] for n in counts], ":", color="gray", label="linear from 1 process")
    ceiling = [steady[0] * data["summary"][str(n)]["capacity_ratio"] for n in counts]
    ax.plot(counts, ceiling, "--", color="tab:green", lw=1,
            label="steady x what the machine gave N CPU-bound processes")
    ax.axvline(data["cores"], color="tab:red", lw=0.8, ls="--", label=f"{data['cores']} cores")
    ax.set_xlabel("--processes")
    ax.set_ylabel("records/s")
    ax.set_xticks(counts)
    ax.set_title(f"{data['args']['records']:,} records, {data['args']['work_us']:g} us CPU/record in the handler")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = img / "processes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"processes": f"img/{path.name}"}


def markdown(add: Any, data: dict[str, Any] | None, made: dict[str, str]) -> None:
    """The section of ``docs/benchmarks.md``."""
    if not data:
        return
    a = data["args"]
    add("## Many cores per pod: `--processes` (`bench/processes.py`)")
    add("")
    add(f"One backlog of {a['records']:,} records (~1.4 KB NEW_AND_OLD_IMAGES) over {a['shards']} shards, drained by "
        f"`shardlease run --processes N` (N = 1: the plain single process), batch size 500, `--max-shards` shards/N "
        f"(each process takes its share from the start), the group's shards registered before the start (as for every "
        f"start of a group but its very first); the handler touches "
        f"every record's images and spends {a['work_us']:g} us of CPU per record. Median of {a['reps']} runs per N, "
        f"alternated. The machine has {data['cores']} cores, shared with the in-process local server (and, when "
        f"this ran, other work: load average {data['machine']['loadavg_1m']:.1f}).")
    add("")
    add("| processes | records/s from Popen | speed-up | records/s steady | speed-up | CPU s (all processes) | "
        "what the machine gave N plain CPU-bound processes (vs 1) |")
    add("|---|---|---|---|---|---|---|")
    for n, s in data["summary"].items():
        add(f"| {n} | {s['rate_from_popen']:,.0f} | {s['speedup_from_popen']:.2f}x | {s['rate_steady']:,.0f} | "
            f"{s['speedup_steady']:.2f}x | {s['cpu_s']:.1f} | {s['capacity_ratio']:.2f}x |")
    add("")
    per_run = "; ".join(f"N={r['processes']}: {a['records'] / r['steady_s']:,.0f}/s" for r in data["runs"])
    add(f"Each run, steady: {per_run}. The target (issue 16: a pod with 4 cores drains about 4x as fast as with "
        "one) can only be shown up to this machine's cores; past them processes share cores and the curve "
        "flattens. Processes also share the pod's network and the Redis, which one process at a time does not "
        "saturate here.")
    swings = "; ".join(
        f"N={n}: {min(r['capacity'] for r in data['runs'] if r['processes'] == int(n)):,.0f} to "
        f"{max(r['capacity'] for r in data['runs'] if r['processes'] == int(n)):,.0f} hashes/s"
        for n in data["summary"])
    add("")
    add(f"The last column is a rough ceiling: N plain CPU-bound processes for 1.5 s right after each drain, not "
        f"during it. On this shared machine it swung widely ({swings}), so read each speed-up against it "
        "loosely; the CPU seconds, which other load does not change much, show the work itself: N processes "
        "spend about the same CPU per record as one, plus one interpreter's start-up each.")
    add("")
    startups = ", ".join(f"N={n}: {s['startup_s']:.1f} s" for n, s in data["summary"].items())
    add(f"From Popen counts the supervisor and the N start-ups (Popen to the first batch, median: {startups}); "
        "that includes the one `--renew-interval` (1.5 s) a worker waits between joining a group whose shards "
        "are registered and taking its first leases, and on a loaded machine the imports of N interpreters at "
        "once. The steady rate is the one that scales with the cores.")
    add("")
    if "processes" in made:
        add(f"![records/s vs processes]({made['processes']})")
        add("")


if __name__ == "__main__":
    main()
