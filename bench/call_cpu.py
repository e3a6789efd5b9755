"""Worker CPU per empty GetRecords call: the lean path vs botocore's pipeline vs a plain boto3 client.

    .venv/bin/python bench/call_cpu.py [--shards 100] [--idle-poll-interval 0.25] [--window 30]
                                       [--warmup 8] [--profile DIR] [--json PATH]

One in-process :class:`worker.local.LocalStreamsServer` holds a table of ``--shards`` shards that
never receive a record, and a private redis-server.  In the same run, one after the other:

(a) **plain boto3**: a child process with a plain ``dynamodbstreams`` client (default
    configuration) that polls every shard's iterator round-robin at the worker's rate, with the
    ``TypeDeserializer`` ready (nothing to deserialize on an empty page);
(b) **worker, botocore path** (the path of the seed and of the first wave): one
    ``python -m worker run`` process with ``SHARDLEASE_BENCH_GETRECORDS_PATH=botocore``, which
    sends every GetRecords through botocore's full request pipeline (the page decoder
    behind a before-parse hook, as before);
(c) **worker, lean path** (the default): the same worker, GetRecords sent by
    :mod:`worker.reading.lean`.

For each, after every lease is held (workers) and ``--warmup`` seconds, the process's own CPU time
(user + system, from ``/proc`` via psutil) over ``--window`` seconds is divided by the GetRecords
calls the server counted for it in that window: **CPU ms per empty GetRecords call**, everything
the process does included (scheduler, consumer step, lease heartbeats, metrics, logging).
CPU time, unlike wall time, is not inflated by other load on the machine, only by cache effects.

Each process is also sampled with ``py-spy --gil --nonblocking`` (when installed; ``--profile off``
skips it) for the window: only the thread holding the GIL is sampled, i.e. where the Python CPU
goes (the rest of the CPU is the kernel: sockets, futex wake-ups of the step threads).  The top
functions (self and inclusive share of those samples) go to ``DIR/<variant>.txt`` and the JSON.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench._common import ENV, ROOT, CallCounter, Fleet, all_held, machine_info, wait_until, write_json
from leaser.embedded import RedisServer
from worker.local import LocalStreamsServer

PATH_ENV = "SHARDLEASE_BENCH_GETRECORDS_PATH"  # read by worker.reading.streams; bench-only
TARGET_MS = 0.3

_PLAIN_LOOP = r"""
import sys, time
import boto3
from boto3.dynamodb.types import TypeDeserializer
endpoint, arn, interval = sys.argv[1], sys.argv[2], float(sys.argv[3])
client = boto3.client("dynamodbstreams", endpoint_url=endpoint, region_name="us-east-1")
deser = TypeDeserializer()
shards, kw = [], {"StreamArn": arn}
while True:
    d = client.describe_stream(**kw)["StreamDescription"]
    shards += [s["ShardId"] for s in d["Shards"]]
    if not d.get("LastEvaluatedShardId"):
        break
    kw["ExclusiveStartShardId"] = d["LastEvaluatedShardId"]
its = {s: client.get_shard_iterator(StreamArn=arn, ShardId=s, ShardIteratorType="LATEST")["ShardIterator"]
       for s in shards}
print("ready", flush=True)
gap = interval / len(shards)
nxt = time.monotonic()
while True:
    for s in shards:
        page = client.get_records(ShardIterator=its[s], Limit=1000)
        for r in page["Records"]:
            {k: deser.deserialize(v) for k, v in r["dynamodb"].get("NewImage", {}).items()}
        its[s] = page["NextShardIterator"]
        nxt += gap
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()
"""


def _cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


class _Spy:
    """py-spy sampling one process for the window (``--profile``); summarised by function."""

    def __init__(self, pid: int, seconds: float, out: Path) -> None:
        self.out, self.raw = out, out.with_suffix(".raw")
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = subprocess.Popen(
            [exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "--gil", "--nonblocking",
             "-f", "raw", "-o", str(self.raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self) -> dict[str, Any] | None:
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        if not self.raw.exists():
            return None
        text = self.raw.read_text()
        self.out.write_text(summarise_collapsed(text))
        return top_functions(text)


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` -> ``func (file.py)``."""
    func, _, where = frame.partition(" (")
    return f"{func} ({where.split(':')[0].rsplit('/', 1)[-1]})"


def _count(text: str) -> tuple[Counter[str], Counter[str], int]:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_frame_name(f) for f in stack.split(";")[1:]]
        if not frames:
            continue
        total += count
        self_c[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    return self_c, incl, total


def top_functions(text: str, top: int = 12) -> dict[str, Any]:
    """The profile for the JSON: samples, and the top functions by self and inclusive share (%)."""
    self_c, incl, total = _count(text)
    return {"samples": total,
            "self": [(f, round(100 * c / total, 1)) for f, c in self_c.most_common(top)] if total else [],
            "inclusive": [(f, round(100 * c / total, 1)) for f, c in incl.most_common(top * 3)] if total else []}


def summarise_collapsed(text: str, top: int = 30) -> str:
    """Top functions by self and inclusive samples from py-spy collapsed stacks (GIL-holding samples only)."""
    self_c, incl, total = _count(text)
    lines = [f"{total} samples holding the GIL", "", "self %  function"]
    lines += [f"{100 * c / total:6.1f}  {f}" for f, c in self_c.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * c / total:6.1f}  {f}" for f, c in incl.most_common(top)]
    return "\n".join(lines) + "\n"


def measure(proc: psutil.Process, counter: CallCounter, window_s: float,
            spy_to: Path | None) -> dict[str, Any]:
    spy = _Spy(proc.pid, window_s, spy_to) if spy_to else None
    cpu0, t0 = _cpu_s(proc), time.time()
    time.sleep(window_s)
    cpu1, t1 = _cpu_s(proc), time.time()
    profile = spy.finish() if spy else None
    calls = len(counter.between(t0, t1, "GetRecords"))
    cpu = cpu1 - cpu0
    return {"window_s": t1 - t0, "cpu_s": cpu, "get_records_calls": calls, "profile": profile,
            "calls_per_s": calls / (t1 - t0), "cpu_ms_per_call": 1000 * cpu / calls if calls else None,
            "cpu_pct": 100 * cpu / (t1 - t0)}


def run_plain(server: LocalStreamsServer, arn: str, interval_s: float, window_s: float,
              warmup_s: float, spy_dir: Path | None) -> dict[str, Any]:
    counter = CallCounter(server, ("GetRecords",))
    env = dict(os.environ, **ENV)
    proc = subprocess.Popen([sys.executable, "-c", _PLAIN_LOOP, server.endpoint_url, arn, str(interval_s)],
                            env=env, stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"the plain boto3 loop exited {proc.wait()}")
        time.sleep(warmup_s)
        return measure(psutil.Process(proc.pid), counter, window_s, spy_dir / "plain.txt" if spy_dir else None)
    finally:
        counter.restore()
        proc.terminate()
        proc.wait(30)


def run_worker(server: LocalStreamsServer, redis_url: str, tmp: Path, shards: int, path: str,
               interval_s: float, window_s: float, warmup_s: float, spy_dir: Path | None) -> dict[str, Any]:
    name = f"cpu-{path}-{os.getpid()}"
    table = server.create_table(f"t-{name}", [("pk", "S")], view_type="NEW_AND_OLD_IMAGES", shards=shards)
    counter = CallCounter(server, ("GetRecords",))
    fleet = Fleet(tmp, server.endpoint_url, table.stream_arn, redis_url, name,
                  flags={"idle-poll-interval": f"{interval_s:g}"})
    os.environ[PATH_ENV] = path
    try:
        fleet.start("w0")
        wait_until(lambda: all_held(redis_url, name, shards), 120, "every lease held", fleet)
        time.sleep(warmup_s)
        r = measure(psutil.Process(fleet.procs["w0"].pid), counter, window_s,
                    spy_dir / f"worker-{path}.txt" if spy_dir else None)
        fleet.check_alive()
        log = fleet.log_text("w0")
        r["fast_path_error_logged"] = "fast path failed" in log or "lean GetRecords path off" in log
        return r
    finally:
        os.environ.pop(PATH_ENV, None)
        counter.restore()
        fleet.stop_all()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=100)
    ap.add_argument("--idle-poll-interval", type=float, default=0.25,
                    help="seconds between polls of one idle shard (the worker's --idle-poll-interval)")
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--variants", default="plain,botocore,lean")
    ap.add_argument("--profile", metavar="DIR", help="sample each process with py-spy (default: a temporary "
                    "directory when py-spy is installed; 'off' to skip)")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    has_spy = bool(shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists())
    if args.profile == "off" or (not args.profile and not has_spy):
        spy_dir = None
    else:
        spy_dir = Path(args.profile or tempfile.mkdtemp(prefix="bench-callcpu-profile-"))
        spy_dir.mkdir(parents=True, exist_ok=True)
        print(f"py-spy profiles in {spy_dir}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-callcpu-"))
    print(f"worker logs in {tmp}", flush=True)
    points: dict[str, Any] = {}
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        for variant in args.variants.split(","):
            if variant == "plain":
                table = server.create_table(f"t-plain-{os.getpid()}", [("pk", "S")], shards=args.shards)
                r = run_plain(server, table.stream_arn, args.idle_poll_interval, args.window, args.warmup, spy_dir)
            else:
                r = run_worker(server, rs.url, tmp, args.shards, variant, args.idle_poll_interval, args.window,
                               args.warmup, spy_dir)
            points[variant] = r
            print(f"{variant:9s}: {r['get_records_calls']} GetRecords in {r['window_s']:.0f} s "
                  f"({r['calls_per_s']:.0f}/s), CPU {r['cpu_s']:.2f} s ({r['cpu_pct']:.1f}% of a core) -> "
                  f"{r['cpu_ms_per_call']:.3f} ms per call", flush=True)
    label = {"plain": "(a) plain boto3 client", "botocore": "(b) worker, botocore path (before)",
             "lean": "(c) worker, lean path (default)"}
    print(f"\n{args.shards} idle shards polled every {args.idle_poll_interval:g} s, {args.window:g} s window:\n")
    print("| | GetRecords/s | CPU % of a core | CPU ms per call | 1,000 idle shards at 1 call/s |")
    print("|---|---|---|---|---|")
    for v, r in points.items():
        ms = r["cpu_ms_per_call"]
        print(f"| {label.get(v, v)} | {r['calls_per_s']:.0f} | {r['cpu_pct']:.1f} | {ms:.3f} "
              f"| {ms * 100:.0f}% of a core |")
    print(f"\ntarget: at most {TARGET_MS} ms per call (1,000 idle shards at 1 call/s in at most 20% of a core)")
    write_json(args.json, {"benchmark": "call_cpu", "shards": args.shards,
                           "idle_poll_interval_s": args.idle_poll_interval, "target_ms": TARGET_MS,
                           "points": points, "machine": machine_info()})


if __name__ == "__main__":
    main()
