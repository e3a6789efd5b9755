"""Processing pause when a shard's lease moves: planned restart (SIGTERM), crash (SIGKILL), join.

    .venv/bin/python bench/handoff_pause.py [--reps 2] [--scenario term,kill,join] [--json PATH]

Workers run with DEFAULT lease settings (lease TTL 5 s, renew interval 1.5 s, batch size 100,
idle poll 1 s; only --metrics-port 0 is passed) against an in-process
:class:`worker.local.LocalStreamsServer` and a private redis-server.  Per scenario and repetition,
a fresh table of 6 shards and a fresh group; a writer thread puts 20 records/s per shard (one
record per shard every 50 ms, keys chosen per shard), each carrying its wall write time ``wt``.
The handler (:func:`bench.bench_handlers.record_seqs`) appends one line per batch: wall time,
worker, shard, lease token, sequence numbers and ``wt`` values.  A thread samples the leases'
owners from Redis every 0.1 s.

Scenarios (after the fleet is balanced and owners were stable for ``--steady`` seconds):

- term: SIGTERM one of 3 workers (releases its leases after its final checkpoint; the others are
  woken by pub/sub);
- kill: SIGKILL one of 3 workers (its leases expire after the TTL);
- join: a third worker joins a balanced fleet of 2 (handoff: the owner finishes its batch,
  checkpoints, releases the lease reserved for the taker).

Per moved shard: **pause** = first batch handled by the new owner - last batch handled by the
old owner (handler wall times); **data pause** = max(first handling - write) over records of
that shard written from 2 s before the event on, minus the shard's steady-state median latency
(records written 8..1 s before the event).  Also: duplicates (records handled more than once),
missing records, and for join the time from the new worker's Popen until it holds its fair share.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from leaser import LeaseStore, connect  # noqa: E402
from leaser.embedded import RedisServer  # noqa: E402
from worker.local import LocalStreamsServer  # noqa: E402

ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}
SHARDS = 6
RATE_PER_SHARD = 20.0


class Writer(threading.Thread):
    """One record per shard every 1/RATE_PER_SHARD s, each item's ``wt`` = wall time at put."""

    def __init__(self, server: LocalStreamsServer, table: Any) -> None:
        super().__init__(daemon=True)
        self.table = table
        per_shard: dict[str, list[str]] = defaultdict(list)
        i = 0
        while min((len(per_shard[s]) for s in server.model.shard_ids(table)), default=0) < 5:
            key = f"k{i}"
            per_shard[server.model.shard_for_key(table, {"S": key})].append(key)
            i += 1
        self.keys = [keys[:5] for keys in per_shard.values()]
        self.stop_event = threading.Event()
        self.written: dict[str, float] = {}

    def run(self) -> None:
        n = 0
        period = 1.0 / RATE_PER_SHARD
        next_t = time.monotonic()
        while not self.stop_event.is_set():
            for keys in self.keys:
                wt = time.time()
                seq = self.table.put_item({"pk": keys[n % len(keys)], "n": n, "wt": repr(wt)})
                self.written[seq] = wt
            n += 1
            next_t += period
            time.sleep(max(0.0, next_t - time.monotonic()))


class OwnerSampler(threading.Thread):
    """Samples ``{shard: owner}`` from Redis every 0.1 s."""

    def __init__(self, redis_url: str, group: str) -> None:
        super().__init__(daemon=True)
        self.store = LeaseStore(connect(redis_url), group)
        self.samples: list[tuple[float, dict[str, str]]] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            owners = {lease.shard_id: lease.owner for lease in self.store.leases()}
            self.samples.append((time.time(), owners))
            time.sleep(0.1)

    def latest(self) -> dict[str, str]:
        return self.samples[-1][1] if self.samples else {}

    def at(self, t: float) -> dict[str, str]:
        before = [owners for ts, owners in self.samples if ts <= t]
        return before[-1] if before else {}


class Fleet:
    def __init__(self, tmp: Path, endpoint_url: str, stream_arn: str, redis_url: str, group: str,
                 log_level: str) -> None:
        self.tmp, self.out = tmp, tmp / f"{group}.jsonl"
        self.endpoint_url, self.stream_arn, self.redis_url, self.group = endpoint_url, stream_arn, redis_url, group
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started: dict[str, float] = {}

    def start(self, name: str) -> None:
        env = dict(os.environ, **ENV, SHARDLEASE_BENCH_OUT=str(self.out), PYTHONPATH=str(ROOT))
        args = [sys.executable, "-m", "worker", "run", "--stream-arn", self.stream_arn, "--endpoint-url",
                self.endpoint_url, "--redis-url", self.redis_url, "--group", self.group, "--worker-id", name,
                "--handler", "bench.bench_handlers:record_seqs", "--metrics-port", "0",
                "--log-level", self.log_level]
        log = open(self.tmp / f"{self.group}-{name}.log", "ab")  # noqa: SIM115 (the child's lifetime)
        self.started[name] = time.time()
        self.procs[name] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def batches(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [orjson.loads(line) for line in self.out.read_bytes().splitlines()]


def wait_until(cond: Any, timeout_s: float, what: str, fleet: Fleet | None = None) -> float:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for name, proc in (fleet.procs.items() if fleet else ()):
            if proc.poll() not in (None, -signal.SIGKILL, 0):
                log = (fleet.tmp / f"{fleet.group}-{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {name} exited {proc.returncode} while waiting for {what}:\n{log}")
        if cond():
            return time.time()
        time.sleep(0.05)
    raise RuntimeError(f"timeout waiting for {what}")


def balanced(owners: dict[str, str], workers: list[str]) -> bool:
    if len(owners) < SHARDS or any(o not in workers for o in owners.values()):
        return False
    counts = Counter(owners.values())
    return len(counts) == len(workers) and max(counts.values()) - min(counts.values()) <= 1


def run_scenario(kind: str, rep: int, server: LocalStreamsServer, redis_url: str, tmp: Path, steady_s: float,
                 log_level: str) -> dict[str, Any]:
    name = f"{kind}{rep}"
    table = server.create_table(f"t-{name}", [("pk", "S")], view_type="NEW_IMAGE", shards=SHARDS)
    group = f"{name}-{os.getpid()}"
    writer = Writer(server, table)
    sampler = OwnerSampler(redis_url, group)
    fleet = Fleet(tmp, server.endpoint_url, table.stream_arn, redis_url, group, log_level)
    writer.start()
    sampler.start()
    first = ["w1", "w2"] if kind == "join" else ["w1", "w2", "w3"]
    result: dict[str, Any] = {"scenario": kind, "rep": rep, "group": group}
    try:
        for w in first:
            fleet.start(w)
        wait_until(lambda: balanced(sampler.latest(), first), 60, "a balanced fleet", fleet)
        # Owners unchanged for steady_s seconds.
        stable_since, last = time.time(), dict(sampler.latest())
        while time.time() - stable_since < steady_s:
            time.sleep(0.1)
            now = dict(sampler.latest())
            if now != last:
                stable_since, last = time.time(), now
        before = dict(sampler.latest())
        victim = "w1"
        t_event = time.time()
        if kind == "term":
            fleet.procs[victim].send_signal(signal.SIGTERM)
        elif kind == "kill":
            fleet.procs[victim].send_signal(signal.SIGKILL)
        else:
            fleet.start("w3")
        live = ["w1", "w2", "w3"] if kind == "join" else ["w2", "w3"]
        t_settled = wait_until(lambda: balanced(sampler.latest(), live), 60, "the fleet to rebalance", fleet)
        result["event_to_balanced_s"] = t_settled - t_event
        if kind == "term":
            fleet.procs[victim].wait(30)
            result["victim_exit_s"] = time.time() - t_event  # upper bound (polled after rebalance)
        time.sleep(6)
        after = dict(sampler.latest())
        writer.stop_event.set()
        writer.join()
        written = dict(writer.written)
        wait_until(lambda: set(written) <= {s for b in fleet.batches() for s in b["seqs"]}, 30,
                   "every written record to be handled")
    finally:
        writer.stop_event.set()
        fleet.stop_all()
        sampler.stop_event.set()
        sampler.join()
    batches = fleet.batches()
    result.update(analyse(batches, written, before, after, t_event))
    if kind == "join":
        fair = SHARDS // 3
        t_fair = next(ts for ts, owners in sampler.samples
                      if ts >= t_event and Counter(owners.values())["w3"] >= fair)
        result["join_fair_share_s"] = t_fair - fleet.started["w3"]
        w3_batches = [b["t"] for b in batches if b["w"] == "w3"]
        result["join_first_batch_s"] = min(w3_batches) - fleet.started["w3"] if w3_batches else None
        result["join_log_joining_s"] = log_time(tmp / f"{group}-w3.log", "joining group") - fleet.started["w3"]
    result["owners_before"], result["owners_after"] = before, after
    # Per-batch timeline for plots (bench/report.py): handler wall time, worker, shard, write times.
    result["t_event"] = t_event
    result["batches"] = [{"t": round(b["t"], 4), "w": b["w"], "shard": b["shard"],
                          "wts": [round(x, 4) for x in b["wts"] if x is not None]} for b in batches]
    return result


def log_time(path: Path, needle: str) -> float:
    """Wall time of the first text-format log line containing ``needle`` (``2026-01-01T00:00:00.000Z ...``)."""
    for line in path.read_text(errors="replace").splitlines():
        if needle in line:
            stamp = line.split(" ", 1)[0].replace("Z", "+00:00")
            return datetime.fromisoformat(stamp).timestamp()
    return float("nan")


def analyse(batches: list[dict[str, Any]], written: dict[str, float], before: dict[str, str],
            after: dict[str, str], t_event: float) -> dict[str, Any]:
    handled = Counter(s for b in batches for s in b["seqs"])
    duplicates = sum(c - 1 for c in handled.values() if c > 1)
    dup_by_shard: dict[str, int] = defaultdict(int)
    first_t: dict[str, float] = {}
    shard_of: dict[str, str] = {}
    seen: set[str] = set()
    for b in sorted(batches, key=lambda b: b["t"]):
        for s in b["seqs"]:
            if s in seen:
                dup_by_shard[b["shard"]] += 1
            else:
                seen.add(s)
                first_t[s] = b["t"]
                shard_of[s] = b["shard"]
    moved = []
    for shard, old in sorted(before.items()):
        if after.get(shard) == old:
            continue
        by_old = [b["t"] for b in batches if b["shard"] == shard and b["w"] == old]
        by_new = [b["t"] for b in batches if b["shard"] == shard and b["w"] != old and b["t"] > t_event]
        last_old, first_new = max(by_old), min(by_new)
        lat_steady = [first_t[s] - written[s] for s in written
                      if shard_of.get(s) == shard and t_event - 8 <= written[s] <= t_event - 1]
        lat_move = [first_t[s] - written[s] for s in written
                    if shard_of.get(s) == shard and written[s] >= t_event - 2]
        steady = statistics.median(lat_steady)
        moved.append({
            "shard": shard, "from": old, "to": after.get(shard), "pause_s": first_new - last_old,
            "event_to_new_owner_s": first_new - t_event, "old_last_after_event_s": last_old - t_event,
            "steady_latency_s": steady, "max_latency_s": max(lat_move), "data_pause_s": max(lat_move) - steady,
            "duplicates": dup_by_shard.get(shard, 0),
        })
    return {"moved": moved, "duplicates": duplicates, "handled_unique": len(handled), "written": len(written),
            "missing": len(set(written) - set(handled))}


def summarize(results: list[dict[str, Any]]) -> None:
    print("\n| scenario | moved shards | pause median / max (s) | data pause median / max (s) | "
          "steady latency median (s) | event -> new owner median / max (s) | duplicates (per rep) | missing |"
          " other |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in ("term", "kill", "join"):
        rs = [r for r in results if r["scenario"] == kind]
        if not rs:
            continue
        moved = [m for r in rs for m in r["moved"]]
        if not moved:
            print(f"| {kind} | 0 | | | | | | | |")
            continue

        def mm(key: str, moved: list[dict[str, Any]] = moved) -> str:
            vals = [m[key] for m in moved]
            return f"{statistics.median(vals):.2f} / {max(vals):.2f}"

        other = ""
        if kind == "join":
            fair = [r["join_fair_share_s"] for r in rs]
            joining = [r["join_log_joining_s"] for r in rs]
            other = (f"fair share after Popen: median {statistics.median(fair):.2f} s, max {max(fair):.2f} s "
                     f"(Popen -> 'joining group' log: median {statistics.median(joining):.2f} s)")
        else:
            other = "event->balanced median " + f"{statistics.median(r['event_to_balanced_s'] for r in rs):.2f} s"
        print(f"| {kind} | {len(moved)} | {mm('pause_s')} | {mm('data_pause_s')} | "
              f"{statistics.median(m['steady_latency_s'] for m in moved):.2f} | {mm('event_to_new_owner_s')} | "
              f"{', '.join(str(r['duplicates']) for r in rs)} | {sum(r['missing'] for r in rs)} | {other} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--scenario", default="term,kill,join")
    ap.add_argument("--steady", type=float, default=8.0, help="seconds of stable owners before the event")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()
    for k, v in ENV.items():
        os.environ.setdefault(k, v)
    tmp = Path(tempfile.mkdtemp(prefix="bench-handoff-"))
    print(f"worker logs and handler output in {tmp}")
    results = []
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server, RedisServer() as rs:
        for rep in range(args.reps):
            for kind in args.scenario.split(","):
                r = run_scenario(kind, rep, server, rs.url, tmp, args.steady, args.log_level)
                results.append(r)
                moved = ", ".join(f"{m['shard'][-8:]} {m['from']}->{m['to']} pause {m['pause_s']:.2f} s "
                                  f"data {m['data_pause_s']:.2f} s dup {m['duplicates']}" for m in r["moved"])
                extra = f" fair share {r['join_fair_share_s']:.2f} s" if kind == "join" else ""
                print(f"{kind} rep {rep}: {moved}; duplicates {r['duplicates']} missing {r['missing']}{extra}",
                      flush=True)
    summarize(results)
    if args.json:
        Path(args.json).write_text(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
