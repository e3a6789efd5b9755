"""Shared pieces of the report benchmarks: worker processes, server-side call counting, waits.

Worker processes are real ``python -m worker run`` processes (cwd and PYTHONPATH at the repository
root, handlers from :mod:`bench.bench_handlers`) against an in-process
:class:`worker.local.LocalStreamsServer` and a private redis-server (never 6379).
"""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from leaser import LeaseStore, connect  # noqa: E402

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
STREAMS = "DynamoDBStreams_20120810."


class CallCounter:
    """Wraps ``server._ops`` entries to log (wall time, op, shard or None) for every call, server-side."""

    def __init__(self, server: Any, ops: tuple[str, ...] = ("DescribeStream", "GetRecords", "GetShardIterator")):
        self.server = server
        self.calls: list[tuple[float, str, str | None]] = []
        self.errors: list[tuple[float, str, str]] = []
        self._orig: dict[str, Any] = {}
        for op in ops:
            target = STREAMS + op
            orig = server._ops[target]
            self._orig[target] = orig
            server._ops[target] = self._wrap(op, orig)

    def _wrap(self, op: str, orig: Any) -> Any:
        model = self.server.model

        def counted(params: Any) -> Any:
            shard = params.get("ShardId") if isinstance(params, dict) else None
            if op == "GetRecords":
                try:
                    shard = model._decode_iterator(params.get("ShardIterator"))[1]
                except Exception:
                    shard = None
            self.calls.append((time.time(), op, shard))
            try:
                return orig(params)
            except Exception as exc:
                self.errors.append((time.time(), op, getattr(exc, "code", type(exc).__name__)))
                raise

        return counted

    def restore(self) -> None:
        for target, orig in self._orig.items():
            self.server._ops[target] = orig

    def between(self, t0: float, t1: float, op: str | None = None) -> list[tuple[float, str, str | None]]:
        return [c for c in list(self.calls) if t0 <= c[0] < t1 and (op is None or c[1] == op)]

    def peak_per_s(self, op: str, t0: float, t1: float) -> int:
        """Most calls of ``op`` in any 1-second window starting at a call."""
        ts = sorted(c[0] for c in self.between(t0, t1, op))
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] < t - 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best


class Fleet:
    """Worker processes of one group; handlers append one JSON line per batch to ``out``."""

    def __init__(self, tmp: Path, endpoint_url: str, stream_arn: str, redis_url: str, group: str,
                 handler: str = "bench.bench_handlers:record_seqs", flags: dict[str, str] | None = None) -> None:
        self.tmp, self.out = tmp, tmp / f"{group}.jsonl"
        self.endpoint_url, self.stream_arn, self.redis_url, self.group = endpoint_url, stream_arn, redis_url, group
        self.handler = handler
        self.flags = {"metrics-port": "0", **(flags or {})}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: dict[str, float] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ, **ENV, SHARDLEASE_BENCH_OUT=str(self.out), PYTHONPATH=str(ROOT))
        args = [sys.executable, "-m", "worker", "run", "--stream-arn", self.stream_arn, "--endpoint-url",
                self.endpoint_url, "--redis-url", self.redis_url, "--group", self.group, "--worker-id", name,
                "--handler", self.handler]
        for flag, value in self.flags.items():
            args += [f"--{flag}", value]
        log = open(self.log_path(name), "ab")  # noqa: SIM115 (the child's lifetime)
        self.started[name] = time.time()
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        return self.tmp / f"{self.group}-{name}.log"

    def log_text(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() not in (None, -signal.SIGKILL, 0):
                raise RuntimeError(f"worker {name} exited {proc.returncode}:\n{self.log_text(name)[-2000:]}")

    def stop_all(self, timeout_s: float = 60) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.time() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def batches(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [orjson.loads(line) for line in self.out.read_bytes().splitlines()]


def owners(redis_url: str, group: str) -> dict[str, str]:
    store = LeaseStore(connect(redis_url), group)
    return {lease.shard_id: lease.owner for lease in store.leases() if lease.owner}


def wait_until(cond: Any, timeout_s: float, what: str, fleet: Fleet | None = None, poll_s: float = 0.5) -> float:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if fleet is not None:
            fleet.check_alive()
        if cond():
            return time.time()
        time.sleep(poll_s)
    raise RuntimeError(f"timeout ({timeout_s:.0f} s) waiting for {what}")


def all_held(redis_url: str, group: str, shards: int, workers: list[str] | None = None) -> bool:
    held = owners(redis_url, group)
    if len(held) < shards:
        return False
    if workers is None:
        return True
    counts = Counter(held.values())
    return set(counts) == set(workers) and max(counts.values()) - min(counts.values()) <= 1


class CpuSampler(threading.Thread):
    """Samples RSS (MB) and CPU (% of one core) of some processes every ``period_s``."""

    def __init__(self, pids: dict[str, int], period_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        import psutil

        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        for p in self.procs.values():
            p.cpu_percent(None)
        self.period_s = period_s
        self.samples: list[dict[str, Any]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.wait(self.period_s):
            row: dict[str, Any] = {"t": time.time()}
            for name, p in self.procs.items():
                try:
                    row[name] = {"rss_mb": p.memory_info().rss / 2**20, "cpu_pct": p.cpu_percent(None)}
                except Exception:
                    row[name] = None
            self.samples.append(row)


def machine_info() -> dict[str, Any]:
    import psutil

    try:
        redis_v = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
        redis_v = next((p.split("=", 1)[1] for p in redis_v.split() if p.startswith("v=")), redis_v.strip())
    except Exception:
        redis_v = "?"
    try:
        cpu_model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("model name"))
    except Exception:
        cpu_model = platform.processor() or "?"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                timeout=10).stdout.strip()
    except Exception:
        commit = "?"
    return {"cpus": os.cpu_count(), "cpu_model": cpu_model, "python": platform.python_version(),
            "platform": platform.platform(), "redis": redis_v,
            "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "loadavg_1m": os.getloadavg()[0], "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def write_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
