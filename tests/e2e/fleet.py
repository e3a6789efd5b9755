"""Real worker processes against a real Redis and the local stream endpoint, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[2]


def wait_until(predicate: Any, timeout_s: float = 30.0, interval_s: float = 0.2) -> bool:
    """Poll ``predicate`` every ``interval_s`` until it is true (True) or ``timeout_s`` passed (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


@dataclass
class Handled:
    """One line of the recording handler's output: a record handled by a worker."""

    index: int
    worker: str
    shard: str
    seq: str
    pk: str
    n: int
    token: int
    t: float
    """Wall time the handler wrote the line (seconds since the epoch)."""


class Fleet:
    """Worker processes of one group; each records what it handled in one shared file."""

    def __init__(self, tmp: Path, redis_url: str, endpoint_url: str, stream_arn: str, group: str,
                 **settings: str) -> None:
        self.out = tmp / "handled.jsonl"
        self.logs = tmp / "logs"
        self.logs.mkdir(exist_ok=True)
        self.redis_url, self.endpoint_url, self.stream_arn, self.group = redis_url, endpoint_url, stream_arn, group
        self.settings = {"lease-ttl": "3", "renew-interval": "1", "metrics-port": "0", "batch-size": "50",
                         "idle-poll-interval": "0.5", **settings}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def env(self, **extra: str) -> dict[str, str]:
        return dict(os.environ, SHARDLEASE_TEST_OUT=str(self.out), AWS_ACCESS_KEY_ID="test",
                    AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1", PYTHONPATH=str(ROOT), **extra)

    def start(self, name: str, handler: str = "tests.e2e.recording_handler:handle",
              **extra_env: str) -> subprocess.Popen[bytes]:
        args = [sys.executable, "-m", "worker", "run", "--stream-arn", self.stream_arn, "--endpoint-url",
                self.endpoint_url, "--redis-url", self.redis_url, "--group", self.group, "--worker-id", name,
                "--handler", handler]
        for flag, value in self.settings.items():
            if value in ("true", "false"):  # a switch: --flag / --no-flag
                args.append(f"--{flag}" if value == "true" else f"--no-{flag}")
            else:
                args += [f"--{flag}", value]
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        proc = subprocess.Popen(args, env=self.env(**extra_env), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        self.procs[name] = proc
        return proc

    def wait_joined(self, names: list[str], timeout_s: float = 60, redis_url: str | None = None) -> None:
        """Wait until each named worker is a member of the group (its first heartbeat went through), so a test's
        timeline of faults starts from a running fleet however slow start-up is on a loaded machine (tests run
        4 at a time).  ``redis_url``: where to look, when the workers reach Redis through a proxy."""
        from leaser import LeaseStore, connect

        client = connect(redis_url or self.redis_url)
        try:
            store = LeaseStore(client, self.group)
            deadline = time.monotonic() + timeout_s
            while set(names) - set(store.members()):
                dead = {n: self.procs[n].poll() for n in names if self.procs[n].poll() is not None}
                assert not dead, f"workers exited before joining the group: {dead}"
                assert time.monotonic() < deadline, f"{set(names) - set(store.members())} never joined"
                time.sleep(0.05)
        finally:
            client.close()

    def signal(self, name: str, signum: int) -> None:
        self.procs[name].send_signal(signum)

    def stop_all(self, timeout_s: float = 30) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = -9
        return codes

    def handled(self) -> list[Handled]:
        if not self.out.exists():
            return []
        rows = []
        for i, line in enumerate(self.out.read_bytes().splitlines()):
            d: dict[str, Any] = orjson.loads(line)
            rows.append(Handled(i, d["w"], d["shard"], d["seq"], d["pk"], d["n"], d["token"], d["t"]))
        return rows

    def wait_for(self, sequence_numbers: set[str], timeout_s: float = 60) -> list[Handled]:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.handled()
            if sequence_numbers <= {r.seq for r in rows} or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)

    def log_text(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


class Writer:
    """Writes items ``{"pk": k<n mod keys>, "n": n}`` in the background, 20 every 0.1 s, until stopped."""

    def __init__(self, table: Any, keys: int) -> None:
        self.table, self.keys = table, keys
        self.written: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="writer")

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            for _ in range(20):
                seq = self.table.put_item({"pk": f"k{n % self.keys:02d}", "n": n})
                assert seq is not None
                self.written.append(str(seq))
                n += 1
            time.sleep(0.1)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def key_for(server: Any, table: Any, shard: str) -> str:
    """A string partition key ``k<i>`` that the local endpoint (a ``LocalStreamsServer``) routes to ``shard``,
    an open shard of ``table``."""
    i = 0
    while server.model.shard_for_key(table, {"S": f"k{i}"}) != shard:
        i += 1
    return f"k{i}"


def check_order_per_key(rows: list[Handled]) -> None:
    """In first-handling order, each key's counter only grows (records of one item stay in order)."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    for r in rows:
        if r.seq in seen:
            continue
        seen.add(r.seq)
        assert r.n > last.get(r.pk, -1), f"key {r.pk}: record {r.n} handled after {last[r.pk]}"
        last[r.pk] = r.n


def check_parents_before_children(rows: list[Handled], parent_of: dict[str, str | None]) -> None:
    """No record of a child shard was handled before the last record of its parent."""
    first: dict[str, int] = {}
    last: dict[str, int] = defaultdict(lambda: -1)
    for r in rows:
        first.setdefault(r.shard, r.index)
        last[r.shard] = r.index
    for child, parent in parent_of.items():
        if parent and child in first and parent in last:
            assert last[parent] < first[child], f"child {child} started before parent {parent} ended"
