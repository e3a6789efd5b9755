"""Lease-protocol scale: many simulated workers sharing many shards on one real Redis.

    .venv/bin/python bench/leaser_scale.py [--quick] [--json PATH] [--scenario 1000x10 ...]

For each scenario (default 1,000 shards x 10 workers, then 10,000 x 100; ``--quick`` runs only
the first) the script starts a private ``redis-server`` on a free port (never 6379), registers
the shards, and runs the workers as :class:`leaser.LeaseManager` objects, each ticking every
``renew_interval_s`` on a staggered schedule, in a few threads that each own a Redis connection.
Gives are honoured at once (``release(shard, to=taker)``) and workers waiting for a handoff
poll their grants every ``renew_interval_s / 10``, like ``tests/protocol/helpers.py``'s Fleet.

It measures, per scenario:

* convergence (every ready lease held by a live worker, max - min <= 1, and still so one renew
  interval later) from a cold start, after a worker joins, and after a worker dies (it stops
  ticking; its leases expire on Redis time after ``lease_ttl_s``), with the leases moved;
* the steady state of a balanced group over ``--steady-intervals`` renew intervals: client round
  trips and script calls per worker per renew interval (counted in the client: EVALSHA is one
  call), Redis ``total_commands_processed`` per second (it counts each EVALSHA *and* every
  command the script runs), calls per second by command from ``INFO commandstats`` (same
  caveat), bytes Redis sent, and Redis CPU as % of one core (``INFO cpu`` deltas / wall time).

The renew interval is compressed (default lease_ttl_s 2, renew_interval_s 0.5): per-interval
numbers carry over to the defaults (5 s / 1.5 s); per-second numbers scale by 0.5 / 1.5.
A table goes to stdout; ``--json PATH`` also writes every number for a report generator.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.client import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from leaser import LeaseConfig, LeaseManager, LeaseStore, RedisServer, ShardSpec
from leaser.scripts import NAMES, source

GROUP = "bench"
SCRIPT_BY_SHA = {hashlib.sha1(source(name).encode()).hexdigest(): name for name in NAMES}


# -- client-side call counting -------------------------------------------------------------------


class CallCounter:
    """Round trips and calls one client made (one thread uses it: no lock)."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.calls: Counter[str] = Counter()

    def add(self, args: tuple[Any, ...]) -> None:
        name = str(args[0]).upper()
        if name == "EVALSHA":
            name = f"EVALSHA {SCRIPT_BY_SHA.get(str(args[1]), '?')}"
        self.calls[name] += 1

    def snapshot(self) -> tuple[int, Counter[str]]:
        return self.round_trips, Counter(self.calls)


class CountingPipeline(Pipeline):
    counter: CallCounter

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.command_stack:
            self.counter.round_trips += 1
            for args, _options in self.command_stack:
                self.counter.add(args)
        return super().execute(raise_on_error)


class CountingRedis(redis.Redis):
    """A redis.Redis that counts what it sends: one round trip per command or pipeline."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.counter = CallCounter()

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.counter.round_trips += 1
        self.counter.add(args)
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Pipeline:
        pipe = CountingPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.counter = self.counter
        return pipe


# -- simulated workers -----------------------------------------------------------------------------


@dataclass
class Slot:
    name: str
    manager: LeaseManager
    due: float
    alive: bool = True


@dataclass
class RunnerStats:
    ticks: int = 0
    acquired: int = 0
    gives: int = 0
    lost: int = 0
    polls: int = 0
    errors: int = 0
    lags: list[float] = field(default_factory=list)
    tick_s: list[float] = field(default_factory=list)


class Runner(threading.Thread):
    """Ticks its workers on schedule; honours gives at once; polls grants while asks are out."""

    def __init__(self, index: int, url: str, config: LeaseConfig) -> None:
        super().__init__(name=f"runner-{index}", daemon=True)
        self.client = CountingRedis.from_url(url, decode_responses=True, socket_timeout=30)
        self.store = LeaseStore(self.client, GROUP, config)
        self.config = config
        self.slots: list[Slot] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.stats = RunnerStats()
        self.poll_s = config.renew_interval_s / 10

    def add(self, name: str, due: float) -> Slot:
        slot = Slot(name, LeaseManager(self.store, name), due)
        with self.lock:
            self.slots.append(slot)
        return slot

    def _tick(self, slot: Slot) -> None:
        started = time.monotonic()
        self.stats.lags.append(started - slot.due)
        result = slot.manager.tick()
        self.stats.acquired += len(result.gained)
        self.stats.lost += len(result.lost)
        for shard, taker in result.give:
            slot.manager.release(shard, to=taker)
            self.stats.gives += 1
        self.stats.ticks += 1
        self.stats.tick_s.append(time.monotonic() - started)

    def run(self) -> None:
        interval = self.config.renew_interval_s
        next_poll = time.monotonic()
        while not self.stopping.is_set():
            with self.lock:
                slots = [s for s in self.slots if s.alive]
            now = time.monotonic()
            for slot in slots:
                if slot.due <= now:
                    try:
                        self._tick(slot)
                    except Exception as exc:  # a benchmark reports, it does not stop
                        self.stats.errors += 1
                        if self.stats.errors <= 3:
                            print(f"  ! {slot.name}: tick failed: {exc!r}", file=sys.stderr)
                    slot.due += interval
                    if slot.due < time.monotonic() - interval:
                        slot.due = time.monotonic()  # fell a whole interval behind: no burst of catch-up ticks
            now = time.monotonic()
            if now >= next_poll:
                for slot in slots:
                    if slot.manager.waiting_for_handoff:
                        try:
                            self.stats.acquired += len(slot.manager.poll_grants())
                        except Exception as exc:
                            self.stats.errors += 1
                            if self.stats.errors <= 3:
                                print(f"  ! {slot.name}: poll failed: {exc!r}", file=sys.stderr)
                        self.stats.polls += 1
                next_poll = now + self.poll_s
            wake = min([s.due for s in slots] + [next_poll])
            delay = wake - time.monotonic()
            if delay > 0:
                self.stopping.wait(delay)


class Fleet:
    def __init__(self, url: str, config: LeaseConfig, threads: int) -> None:
        self.config = config
        self.runners = [Runner(i, url, config) for i in range(threads)]
        self.slots: dict[str, Slot] = {}
        self._next = 0

    def add(self, name: str, due: float) -> Slot:
        runner = self.runners[self._next % len(self.runners)]
        self._next += 1
        slot = runner.add(name, due)
        self.slots[name] = slot
        return slot

    def start(self) -> None:
        for r in self.runners:
            r.start()

    def stop(self) -> None:
        for r in self.runners:
            r.stopping.set()
        for r in self.runners:
            r.join(timeout=30)

    def alive(self) -> list[Slot]:
        return [s for s in self.slots.values() if s.alive]

    def acquired(self) -> int:
        return sum(r.stats.acquired for r in self.runners)

    def gives(self) -> int:
        return sum(r.stats.gives for r in self.runners)

    def errors(self) -> int:
        return sum(r.stats.errors for r in self.runners)

    def client_calls(self) -> tuple[int, Counter[str]]:
        trips, calls = 0, Counter[str]()
        for r in self.runners:
            t, c = r.client.counter.snapshot()
            trips += t
            calls.update(c)
        return trips, calls

    def balanced(self, total: int) -> bool:
        helds = [s.manager.held() for s in self.alive()]
        counts = [len(h) for h in helds]
        if not counts or sum(counts) != total or max(counts) - min(counts) > 1:
            return False
        union: set[str] = set()
        for h in helds:
            union.update(h)
        return len(union) == total

    def counts(self) -> list[int]:
        return sorted(len(s.manager.held()) for s in self.alive())


def converge(fleet: Fleet, total: int, since: float, timeout_s: float) -> dict[str, Any]:
    """Seconds from ``since`` until balanced, and still balanced one renew interval later."""
    interval = fleet.config.renew_interval_s
    moves0 = fleet.acquired()
    trips0, calls0 = fleet.client_calls()
    first_ok: float | None = None
    deadline = since + timeout_s
    while time.monotonic() < deadline:
        now = time.monotonic()
        if fleet.balanced(total):
            if first_ok is None:
                first_ok = now
            elif now - first_ok >= interval:
                seconds = first_ok - since
                trips1, calls1 = fleet.client_calls()
                return {
                    "seconds": round(seconds, 3),
                    "renew_intervals": round(seconds / interval, 2),
                    "moves": fleet.acquired() - moves0,
                    "counts_min_max": [min(fleet.counts()), max(fleet.counts())],
                    "client_round_trips": trips1 - trips0,
                    "client_calls": {
                        k: calls1[k] - calls0.get(k, 0) for k in sorted(calls1) if calls1[k] > calls0.get(k, 0)
                    },
                }
        else:
            first_ok = None
        time.sleep(0.02)
    counts = fleet.counts()
    return {
        "seconds": None,
        "renew_intervals": None,
        "moves": fleet.acquired() - moves0,
        "counts_min_max": [min(counts), max(counts)] if counts else [],
        "timed_out": True,
    }


# -- Redis-side measurements -----------------------------------------------------------------------


def server_snapshot(admin: redis.Redis) -> dict[str, Any]:
    stats = admin.info("stats")
    cpu = admin.info("cpu")
    cmds = admin.info("commandstats")
    return {
        "t": time.monotonic(),
        "commands": int(stats["total_commands_processed"]),
        "net_out": int(stats["total_net_output_bytes"]),
        "net_in": int(stats["total_net_input_bytes"]),
        "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "calls": {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in cmds.items()},
    }


def steady_state(fleet: Fleet, admin: redis.Redis, shards: int, intervals: int) -> dict[str, Any]:
    interval = fleet.config.renew_interval_s
    workers = len(fleet.alive())
    for r in fleet.runners:
        r.stats.lags.clear()
        r.stats.tick_s.clear()
    moves0 = fleet.acquired()
    ticks0 = sum(r.stats.ticks for r in fleet.runners)
    trips0, calls0 = fleet.client_calls()
    proc0 = time.process_time()
    s0 = server_snapshot(admin)
    time.sleep(intervals * interval)
    s1 = server_snapshot(admin)
    proc1 = time.process_time()
    trips1, calls1 = fleet.client_calls()
    ticks1 = sum(r.stats.ticks for r in fleet.runners)
    wall = s1["t"] - s0["t"]
    n_intervals = wall / interval
    per_worker_interval = workers * n_intervals
    by_server = {name: round((s1["calls"].get(name, 0) - s0["calls"].get(name, 0)) / wall, 1) for name in s1["calls"]}
    by_server = {k: v for k, v in sorted(by_server.items(), key=lambda kv: -kv[1]) if v > 0}
    client_calls = {k: round((calls1[k] - calls0.get(k, 0)) / per_worker_interval, 3) for k in calls1}
    lags = sorted(x for r in fleet.runners for x in r.stats.lags)
    tick_s = sorted(x for r in fleet.runners for x in r.stats.tick_s)
    ticks = ticks1 - ticks0
    return {
        "wall_s": round(wall, 2),
        "renew_intervals": round(n_intervals, 2),
        "workers": workers,
        "ticks": ticks,
        "ticks_per_worker_per_interval": round(ticks / per_worker_interval, 3),
        "client_round_trips_per_worker_per_interval": round((trips1 - trips0) / per_worker_interval, 3),
        "client_calls_per_worker_per_interval": {k: v for k, v in sorted(client_calls.items()) if v > 0},
        "redis_total_commands_per_s": round((s1["commands"] - s0["commands"]) / wall, 1),
        "redis_commands_per_lease_per_interval": round((s1["commands"] - s0["commands"]) / (shards * n_intervals), 2),
        "redis_calls_per_s_by_command": by_server,
        "redis_cpu_pct_of_one_core": round(100 * (s1["cpu"] - s0["cpu"]) / wall, 1),
        "redis_bytes_out_per_worker_per_interval": round((s1["net_out"] - s0["net_out"]) / per_worker_interval),
        "redis_bytes_in_per_worker_per_interval": round((s1["net_in"] - s0["net_in"]) / per_worker_interval),
        "python_cpu_pct_of_one_core": round(100 * (proc1 - proc0) / wall, 1),
        "tick_lag_ms_p50_p99_max": [round(1000 * q, 1) for q in _quantiles(lags)],
        "tick_ms_p50_p99_max": [round(1000 * q, 2) for q in _quantiles(tick_s)],
        "moves": fleet.acquired() - moves0,
    }


def _quantiles(values: list[float]) -> list[float]:
    if not values:
        return [0.0, 0.0, 0.0]
    return [statistics.median(values), values[min(len(values) - 1, int(len(values) * 0.99))], values[-1]]


def verify(store: LeaseStore, alive: set[str], total: int) -> dict[str, Any]:
    """Read every lease from Redis: each owned by a live worker, unexpired; tokens unique."""
    now = store.server_time_ms()
    leases = store.leases()
    owners = Counter(lease.owner for lease in leases)
    bad = [lease.shard_id for lease in leases if lease.owner not in alive or lease.expires_ms <= now]
    tokens = [lease.token for lease in leases]
    return {
        "leases": len(leases),
        "all_owned_by_live_workers": not bad and len(leases) == total,
        "not_ok": bad[:5],
        "tokens_unique": len(set(tokens)) == len(tokens),
        "max_token": max(tokens) if tokens else 0,
        "owner_spread": [min(owners.values()), max(owners.values())] if owners else [],
    }


# -- one scenario --------------------------------------------------------------------------------


def run_scenario(shards: int, workers: int, args: argparse.Namespace) -> dict[str, Any]:
    config = LeaseConfig(
        lease_ttl_s=args.lease_ttl,
        renew_interval_s=args.renew_interval,
        handoff_timeout_s=args.handoff_timeout,
        handoff_reserve_s=args.handoff_reserve,
    )
    interval = config.renew_interval_s
    out: dict[str, Any] = {"shards": shards, "workers": workers}
    print(f"\n== {shards} shards x {workers} workers ==", flush=True)
    with RedisServer() as server:
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        out["redis_version"] = admin.info("server")["redis_version"]
        store = LeaseStore(admin, GROUP, config)
        t = time.monotonic()
        states = Counter(store.register_shards([ShardSpec(f"shard-{i:06d}", (), float(i)) for i in range(shards)]))
        out["register_s"] = round(time.monotonic() - t, 3)
        out["registered"] = dict(states)
        print(f"  registered {shards} shards in {out['register_s']} s", flush=True)

        fleet = Fleet(server.url, config, min(args.threads, workers))
        start = time.monotonic() + 0.1
        for i in range(workers):
            fleet.add(f"w{i:04d}", start + i * interval / workers)
        fleet.start()
        try:
            out["cold_start"] = converge(fleet, shards, start, args.timeout)
            print(f"  cold start: {out['cold_start']}", flush=True)

            time.sleep(2 * interval)
            out["steady"] = steady_state(fleet, admin, shards, args.steady_intervals)
            st = out["steady"]
            print(
                f"  steady: {st['client_round_trips_per_worker_per_interval']} round trips/worker/interval, "
                f"redis {st['redis_total_commands_per_s']} cmd/s, cpu {st['redis_cpu_pct_of_one_core']}%",
                flush=True,
            )

            # A worker joins: it should take its share by handoff, and only that many leases move.
            t = time.monotonic()
            newcomer = fleet.add("w-new", t)
            out["join"] = converge(fleet, shards, t, args.timeout)
            out["join"]["ideal_moves"] = shards // (workers + 1)
            out["join"]["newcomer_holds"] = len(newcomer.manager.held())
            out["join"]["gives"] = fleet.gives()
            print(f"  join: {out['join']}", flush=True)
            time.sleep(2 * interval)

            # A worker dies: it stops ticking; its leases expire on Redis time after lease_ttl_s.
            victim = fleet.slots["w0000"]
            held_at_crash = len(victim.manager.held())
            t = time.monotonic()
            victim.alive = False
            out["death"] = converge(fleet, shards, t, args.timeout + config.lease_ttl_s)
            out["death"]["ideal_moves"] = held_at_crash
            out["death"]["lease_ttl_s"] = config.lease_ttl_s
            print(f"  death: {out['death']}", flush=True)
            time.sleep(interval)
            out["verify"] = verify(store, {s.name for s in fleet.alive()}, shards)
            out["errors"] = fleet.errors()
            print(f"  verify: {out['verify']}", flush=True)
        finally:
            fleet.stop()
            for r in fleet.runners:
                r.client.close()
            admin.close()
    return out


# -- report ----------------------------------------------------------------------------------------


def _conv(c: dict[str, Any]) -> str:
    if c.get("seconds") is None:
        return f"TIMED OUT (moves {c['moves']}, counts {c['counts_min_max']})"
    return f"{c['seconds']:.2f} s = {c['renew_intervals']:.1f} iv"


def table(results: list[dict[str, Any]]) -> str:
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, f: Any) -> None:
        cells = []
        for r in results:
            try:
                cells.append(str(f(r)))
            except (KeyError, TypeError):
                cells.append("-")
        rows.append((label, cells))

    row("shards x workers", lambda r: f"{r['shards']:,} x {r['workers']}")
    row("register (s)", lambda r: r["register_s"])
    row("cold start: converge", lambda r: _conv(r["cold_start"]))
    row("cold start: moves (ideal = shards)", lambda r: f"{r['cold_start']['moves']} ({r['shards']})")
    row("steady: round trips /worker /interval", lambda r: r["steady"]["client_round_trips_per_worker_per_interval"])
    row(
        "steady: heartbeat calls /worker /interval",
        lambda r: r["steady"]["client_calls_per_worker_per_interval"].get("EVALSHA heartbeat", 0),
    )
    row(
        "steady: other calls /worker /interval",
        lambda r: round(
            sum(v for k, v in r["steady"]["client_calls_per_worker_per_interval"].items() if k != "EVALSHA heartbeat"),
            3,
        ),
    )
    row("steady: redis total_commands_processed /s", lambda r: f"{r['steady']['redis_total_commands_per_s']:,.0f}")
    row("steady: redis commands /lease /interval", lambda r: r["steady"]["redis_commands_per_lease_per_interval"])
    row("steady: evalsha calls /s", lambda r: r["steady"]["redis_calls_per_s_by_command"].get("evalsha", 0))
    row(
        "steady: top inner commands /s",
        lambda r: ", ".join(f"{k} {v:,.0f}" for k, v in list(r["steady"]["redis_calls_per_s_by_command"].items())[:3]),
    )
    row("steady: redis CPU (% of one core)", lambda r: r["steady"]["redis_cpu_pct_of_one_core"])
    row("steady: bytes out /worker /interval", lambda r: f"{r['steady']['redis_bytes_out_per_worker_per_interval']:,}")
    row("steady: bytes in /worker /interval", lambda r: f"{r['steady']['redis_bytes_in_per_worker_per_interval']:,}")
    row("steady: python CPU (% of one core)", lambda r: r["steady"]["python_cpu_pct_of_one_core"])
    row("steady: tick lag ms p50/p99/max", lambda r: "/".join(map(str, r["steady"]["tick_lag_ms_p50_p99_max"])))
    row("steady: moves", lambda r: r["steady"]["moves"])
    row("join: converge", lambda r: _conv(r["join"]))
    row("join: client round trips (all workers)", lambda r: r["join"]["client_round_trips"])
    row("join: ask calls", lambda r: r["join"]["client_calls"].get("EVALSHA ask", 0))
    row("join: moves (ideal = newcomer share)", lambda r: f"{r['join']['moves']} ({r['join']['ideal_moves']})")
    row("death: converge (lease_ttl_s incl.)", lambda r: _conv(r["death"]))
    row("death: client round trips (all workers)", lambda r: r["death"]["client_round_trips"])
    row("death: moves (ideal = dead worker's)", lambda r: f"{r['death']['moves']} ({r['death']['ideal_moves']})")
    row(
        "verify: all owned by live, tokens unique",
        lambda r: f"{r['verify']['all_owned_by_live_workers']}, {r['verify']['tokens_unique']}",
    )
    row("errors", lambda r: r["errors"])

    width = max(len(label) for label, _ in rows)
    cols = [max(len(cells[i]) for _, cells in rows) for i in range(len(results))]
    lines = []
    for label, cells in rows:
        lines.append(label.ljust(width) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, cols, strict=True)))
    return "\n".join(lines)


def parse_scenario(text: str) -> tuple[int, int]:
    shards, _, workers = text.lower().partition("x")
    return int(shards), int(workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 1,000 shards x 10 workers (CI-sized)")
    parser.add_argument(
        "--scenario",
        action="append",
        type=parse_scenario,
        metavar="SHARDSxWORKERS",
        help="run this scenario instead of the defaults (repeatable), e.g. 5000x50",
    )
    parser.add_argument("--lease-ttl", type=float, default=2.0, help="lease_ttl_s (default 2)")
    parser.add_argument("--renew-interval", type=float, default=0.5, help="renew_interval_s (default 0.5)")
    parser.add_argument("--handoff-timeout", type=float, default=4.0, help="handoff_timeout_s (default 4)")
    parser.add_argument("--handoff-reserve", type=float, default=1.0, help="handoff_reserve_s (default 1)")
    parser.add_argument("--steady-intervals", type=int, default=10, help="renew intervals measured at steady state")
    parser.add_argument("--threads", type=int, default=4, help="threads ticking the workers (default 4)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed for each convergence")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)

    scenarios = args.scenario or ([(1000, 10)] if args.quick else [(1000, 10), (10000, 100)])
    started = time.monotonic()
    results = [run_scenario(shards, workers, args) for shards, workers in scenarios]
    print()
    print(
        f"lease_ttl_s={args.lease_ttl} renew_interval_s={args.renew_interval} "
        f"handoff_timeout_s={args.handoff_timeout} handoff_reserve_s={args.handoff_reserve} "
        f"threads={args.threads} cpus={os.cpu_count()}  (iv = renew intervals)"
    )
    print(table(results))
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if args.json:
        report = {
            "benchmark": "leaser_scale",
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "config": {
                k: getattr(args, k)
                for k in (
                    "lease_ttl",
                    "renew_interval",
                    "handoff_timeout",
                    "handoff_reserve",
                    "steady_intervals",
                    "threads",
                )
            },
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "scenarios": results,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {path}")
    return 1 if any(r.get("errors") or r["verify"].get("all_owned_by_live_workers") is False for r in results) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
