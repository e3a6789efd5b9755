"""Chaos harness: a real Redis (optionally behind a cuttable proxy), the local stream endpoint with
splits, rollovers, throttling, expiring iterators and internal errors, real worker processes under
steady writes, fault injectors, a checkpoint poller and the checkers of the invariants.

Faults are chosen with a seeded RNG: ``CHAOS_SEED`` replays a run (the seed is printed).
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from leaser import LeaseStore, connect
from leaser.embedded import RedisServer, free_port
from leaser.keys import GroupKeys
from leaser.lease import SHARD_END
from tests.chaos.proxy import CuttableProxy
from tests.e2e.fleet import Fleet, Handled, check_order_per_key
from worker.local import LocalStreamsServer

LEASE_TTL_S = 2.0
RENEW_INTERVAL_S = 0.5
BATCH_SIZE = 20
SHARDS = 6
KEYS = 40
WRITES_PER_S = 100
ENDPOINT_FAULTS: dict[str, Any] = {
    "get_records_per_shard_per_s": 4,
    "iterator_ttl_s": 3.0,
    "internal_error_rate": 0.02,
}
DRAIN_TIMEOUT_S = 120.0


def chaos_seed(default_rng: random.Random | None = None) -> int:
    """The run's seed: ``CHAOS_SEED`` if set, else a fresh one (printed so the run can be replayed)."""
    env = os.environ.get("CHAOS_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(1, 2**31)
    print(f"chaos seed: {seed} (replay with CHAOS_SEED={seed})")
    return seed


Row = Handled
"""One record handled (a line of the recording handler's output, with its wall time)."""


@dataclass
class Observation:
    t: float
    created_ms: str
    leases: dict[str, tuple[str, str, int, str]]
    """shard -> (checkpoint, owner, token, state)"""


@dataclass
class Pause:
    worker: str
    stopped_at: float
    continued_at: float
    held_before: dict[str, int]
    """shard -> the paused worker's token, read from Redis just before SIGSTOP"""
    owners_at_cont: dict[str, tuple[str, int, str]]
    """shard -> (owner, token, state) read from Redis just before SIGCONT"""


class CheckpointPoller:
    """Reads every lease from Redis every ``interval_s`` (directly, not through the proxy)."""

    def __init__(self, url: str, group: str, interval_s: float = 0.1) -> None:
        self.client = connect(url, socket_timeout_s=1.0)
        self.store = LeaseStore(self.client, group)
        self.meta_key = GroupKeys.for_group(group).meta
        self.interval_s = interval_s
        self.observations: list[Observation] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="checkpoint-poller", daemon=True)

    def start(self) -> CheckpointPoller:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                created = self.client.hget(self.meta_key, "created_ms") or ""
                leases = self.store.leases()
                self.observations.append(Observation(time.time(), str(created), {
                    lease.shard_id: (lease.checkpoint, lease.owner, lease.token, str(lease.state))
                    for lease in leases}))
            except Exception:
                self.errors += 1
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def check_checkpoints_monotonic(observations: list[Observation]) -> int:
    """No checkpoint ever moved backwards (as ints; SHARD_END is terminal), within one group epoch
    (the meta hash's created_ms: it changes only when Redis lost the group's state).  Returns the
    number of forward moves seen."""
    moves = 0
    last: dict[tuple[str, str], str] = {}
    epoch = ""
    for obs in observations:
        epoch = obs.created_ms or epoch  # '' before the epoch's first heartbeat
        for shard, (cp, _owner, _token, _state) in obs.leases.items():
            key = (epoch, shard)
            prev = last.get(key, "")
            if prev == SHARD_END:
                assert cp == SHARD_END, f"{shard}: checkpoint left SHARD_END for {cp!r} at {obs.t:.3f}"
            elif cp == SHARD_END:
                moves += 1
            elif prev:
                assert cp, f"{shard}: checkpoint {prev} was erased at {obs.t:.3f}"
                assert int(cp) >= int(prev), f"{shard}: checkpoint moved back from {prev} to {cp} at {obs.t:.3f}"
                moves += int(cp) > int(prev)
            elif cp:
                moves += 1
            last[key] = cp
    return moves


def check_parents_before_children_first_handling(rows: list[Row], parent_of: dict[str, str | None]) -> None:
    """In first-handling order, every record of a parent came before any record of its children."""
    seen: set[str] = set()
    first: dict[str, int] = {}
    last: dict[str, int] = collections.defaultdict(lambda: -1)
    for i, r in enumerate(r for r in rows if not (r.seq in seen or seen.add(r.seq))):  # type: ignore[func-returns-value]
        first.setdefault(r.shard, i)
        last[r.shard] = i
    for child, parent in parent_of.items():
        if parent and child in first and parent in last:
            assert last[parent] < first[child], f"child {child} first handled before parent {parent} ended"


def check_parents_before_children_strict(rows: list[Row], parent_of: dict[str, str | None]) -> None:
    """Every handling (duplicates included) of a parent's records came before any of its children's."""
    first: dict[str, int] = {}
    last: dict[str, int] = collections.defaultdict(lambda: -1)
    for r in rows:
        first.setdefault(r.shard, r.index)
        last[r.shard] = r.index
    for child, parent in parent_of.items():
        if parent and child in first and parent in last:
            assert last[parent] < first[child], f"child {child} handled before parent {parent}'s last record"


@dataclass
class Call:
    """One handler call as logged by ``tests/chaos/faulty_handler.py`` ($CHAOS_CALLS)."""

    worker: str
    pid: int
    shard: str
    token: int
    start: float
    end: float | None
    """Wall time the call returned or raised; None if it never did (hung, or its process died)."""
    size: int
    error: str = ""


@dataclass
class Close:
    """One call of the handler's ``close()`` (start and end wall times)."""

    worker: str
    pid: int
    start: float
    end: float | None


def read_calls(path: Path) -> tuple[list[Call], list[Close]]:
    """The handler calls and ``close()`` calls logged in ``path`` (start and end lines paired by id)."""
    calls: dict[str, Call] = {}
    closes: dict[str, Close] = {}
    if not path.exists():
        return [], []
    for line in path.read_bytes().splitlines():
        d = orjson.loads(line)
        ev, cid = d["ev"], d["id"]
        if ev == "start":
            calls[cid] = Call(d["w"], d["pid"], d["shard"], d["token"], d["t"], None, d["size"])
        elif ev == "end":
            calls[cid].end = d["t"]
            calls[cid].error = d.get("error", "")
        elif ev == "close-start":
            closes[cid] = Close(d["w"], d["pid"], d["t"], None)
        elif ev == "close-end":
            closes[cid].end = d["t"]
    return list(calls.values()), list(closes.values())


def overlapping_calls(calls: list[Call], died_at: dict[int, float] | None = None) -> list[tuple[Call, Call]]:
    """Pairs of calls on one shard by two different processes whose [start, end] intervals overlap.

    A call that never ended lasts until its process died (``died_at[pid]``), else for ever."""
    died_at = died_at or {}

    def end(c: Call) -> float:
        return c.end if c.end is not None else died_at.get(c.pid, float("inf"))

    out = []
    by_shard: dict[str, list[Call]] = collections.defaultdict(list)
    for c in calls:
        by_shard[c.shard].append(c)
    for shard_calls in by_shard.values():
        shard_calls.sort(key=lambda c: c.start)
        for i, a in enumerate(shard_calls):
            for b in shard_calls[i + 1:]:
                if b.start >= end(a):
                    break
                if a.pid != b.pid:
                    out.append((a, b))
    return out


def ownership_changes(observations: list[Observation], since: float = 0.0) -> list[tuple[float, str, str, int]]:
    """(time first seen, shard, owner, token) for every (shard, token) pair the poller first saw owned
    after ``since`` (wall time): each is one acquisition (a new owner, or a handoff back)."""
    seen: set[tuple[str, int]] = set()
    out = []
    for obs in observations:
        for shard, (_cp, owner, token, _state) in obs.leases.items():
            if not owner or (shard, token) in seen:
                continue
            seen.add((shard, token))
            if obs.t > since:
                out.append((obs.t, shard, owner, token))
    return out


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``predicate()`` until true (True) or the timeout (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def parse_ts(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


@dataclass
class Report:
    name: str
    seed: int
    written: int
    handled: int
    duplicates: int
    dup_per_shard: dict[str, int]
    faults: list[tuple[float, str, str]]
    checkpoint_moves: int
    runtime_s: float
    endpoint_errors: dict[str, int] = field(default_factory=dict)
    iterator_expiries: int = 0
    stale_after_pause: int = 0

    def line(self) -> str:
        kinds = collections.Counter(k for _, k, _ in self.faults)
        return (f"[{self.name}] seed={self.seed} written={self.written} handled={self.handled} "
                f"duplicates={self.duplicates} (max/shard {max(self.dup_per_shard.values(), default=0)}) "
                f"faults={dict(kinds)} checkpoint_moves={self.checkpoint_moves} "
                f"endpoint_errors={self.endpoint_errors} iterator_expiries={self.iterator_expiries} "
                f"stale_after_pause={self.stale_after_pause} runtime={self.runtime_s:.1f}s")


class Chaos:
    """One scenario: Redis (+proxy), the endpoint, workers, a writer, a poller and the faults."""

    def __init__(self, tmp: Path, seed: int, name: str, *, persistent: bool = True, proxy: bool = False,
                 workers: int = 3, handler_env: dict[str, str] | None = None,
                 writes_per_s: int = WRITES_PER_S, handler: str = "tests.chaos.slow_handler:handle",
                 worker_settings: dict[str, str] | None = None,
                 endpoint_faults: dict[str, Any] | None = None) -> None:
        """``handler``, ``worker_settings`` (extra ``shardlease run`` flags without the ``--``, e.g.
        ``{"initial-position": "LATEST"}``, overriding the harness's) and ``endpoint_faults``
        (replacing :data:`ENDPOINT_FAULTS`) default to the setup every chaos scenario uses."""
        self.tmp, self.seed, self.name = tmp, seed, name
        self.rng = random.Random(seed)
        self.group = f"chaos-{name}"
        self.redis = RedisServer(tmp / "redis", port=free_port(), persistent=persistent)
        self.proxy: CuttableProxy | None = None
        self.use_proxy = proxy
        self.initial_workers = workers
        self.handler_env = handler_env or {}
        self.handler = handler
        self.worker_settings = worker_settings or {}
        self.writes_per_s = writes_per_s
        self.drain_timeout_s = DRAIN_TIMEOUT_S
        self.server = LocalStreamsServer(port=0, seed=seed,
                                         **(ENDPOINT_FAULTS if endpoint_faults is None else endpoint_faults))
        self.faults: list[tuple[float, str, str]] = []
        self.pauses: list[Pause] = []
        self.written: list[str] = []
        self.endpoint_errors: collections.Counter[str] = collections.Counter()
        self._stop_writing = threading.Event()
        self._next_worker = 1
        self.started_at = time.monotonic()
        self.started_wall = time.time()

    # -- setup -----------------------------------------------------------------------------------

    def __enter__(self) -> Chaos:
        self.redis.start()
        if self.use_proxy:
            self.proxy = CuttableProxy(self.redis.port).start()
        self.server.__enter__()
        self._count_endpoint_errors()
        self.table = self.server.create_table("orders", shards=SHARDS)
        worker_url = self.proxy.url if self.proxy else self.redis.url
        self.fleet = Fleet(self.tmp, worker_url, self.server.endpoint_url, self.table.stream_arn, self.group,
                           **{"lease-ttl": str(LEASE_TTL_S), "renew-interval": str(RENEW_INTERVAL_S),
                              "batch-size": str(BATCH_SIZE), "log-format": "json", "idle-poll-interval": "0.3",
                              **self.worker_settings})
        self.poller = CheckpointPoller(self.redis.url, self.group).start()
        for _ in range(self.initial_workers):
            self.start_worker()
        self.writer = threading.Thread(target=self._write, name="writer", daemon=True)
        self.writer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_writing.set()
        with contextlib.suppress(Exception):
            self.fleet.stop_all(timeout_s=10)
        for proc in self.fleet.procs.values():  # a worker still stopped would never exit
            with contextlib.suppress(Exception):
                proc.send_signal(signal.SIGCONT)
                proc.kill()
        with contextlib.suppress(Exception):
            self.poller.stop()
        self.server.__exit__(None, None, None)
        if self.proxy:
            self.proxy.stop()
        self.redis.stop()

    def _count_endpoint_errors(self) -> None:
        """Count the endpoint's error replies by code (evidence that its faults fired)."""
        from worker.local.model import StreamsApiError

        model = self.server.model
        maybe_fail = model.maybe_fail

        def counted_maybe_fail() -> None:
            try:
                maybe_fail()
            except StreamsApiError as exc:
                self.endpoint_errors[exc.code] += 1
                raise

        model.maybe_fail = counted_maybe_fail  # type: ignore[method-assign]
        ops = self.server._ops
        for op, fn in list(ops.items()):
            def wrapped(params: Any, _fn: Any = fn) -> Any:
                try:
                    return _fn(params)
                except StreamsApiError as exc:
                    self.endpoint_errors[exc.code] += 1
                    raise
            ops[op] = wrapped

    def _write(self) -> None:
        n = 0
        period = 10 / self.writes_per_s
        while not self._stop_writing.is_set():
            for _ in range(10):
                seq = self.table.put_item({"pk": f"k{n % KEYS:02d}", "n": n})
                assert seq is not None
                self.written.append(seq)
                n += 1
            time.sleep(period)

    # -- workers and faults --------------------------------------------------------------------

    def t(self) -> float:
        return time.monotonic() - self.started_at

    def note(self, kind: str, detail: str) -> None:
        self.faults.append((round(self.t(), 2), kind, detail))
        print(f"  t={self.t():6.2f}s {kind} {detail}")

    def start_worker(self) -> str:
        name = f"w{self._next_worker}"
        self._next_worker += 1
        self.fleet.start(name, handler=self.handler, CHAOS_HANDLER_SEED=str(self.seed), **self.handler_env)
        return name

    def alive(self) -> list[str]:
        return [n for n, p in self.fleet.procs.items() if p.poll() is None]

    def victim(self) -> str:
        """A running worker that holds leases now (random among those, seeded)."""
        holders = {lease.owner for lease in self.poller.store.leases() if lease.owner}
        candidates = sorted(n for n in self.alive() if n in holders) or sorted(self.alive())
        return self.rng.choice(candidates)

    def sigkill(self) -> None:
        name = self.victim()
        self.fleet.signal(name, signal.SIGKILL)
        self.note("sigkill", f"{name} -> replacement {self.start_worker()}")

    def sigterm(self) -> None:
        name = self.victim()
        self.fleet.signal(name, signal.SIGTERM)
        self.note("sigterm", f"{name} -> replacement {self.start_worker()}")

    def pause(self, for_s: float | None = None) -> None:
        """SIGSTOP a worker holding leases, SIGCONT it ``for_s`` (3 TTLs) later."""
        for_s = for_s or 3 * LEASE_TTL_S
        name = self.victim()
        held = {lease.shard_id: lease.token for lease in self.poller.store.leases() if lease.owner == name}
        stopped = time.time()
        self.fleet.signal(name, signal.SIGSTOP)
        self.note("sigstop", f"{name} holding {sorted(held)}")
        time.sleep(for_s)
        now = {lease.shard_id: (lease.owner, lease.token, str(lease.state)) for lease in self.poller.store.leases()}
        continued = time.time()
        self.fleet.signal(name, signal.SIGCONT)
        self.note("sigcont", f"{name} after {continued - stopped:.1f} s")
        self.pauses.append(Pause(name, stopped, continued, held, {s: now[s] for s in held}))

    def restart_redis(self, down_s: float = 0.5) -> None:
        """kill -9 redis-server, start it again on the same data dir and port."""
        self.redis.kill()
        self.note("redis-kill", f"port {self.redis.port} persistent={self.redis.persistent}")
        time.sleep(down_s)
        self.redis.start()
        self.note("redis-start", f"port {self.redis.port}")

    def cut(self) -> None:
        assert self.proxy is not None
        self.note("proxy-cut", f"{self.proxy.cut()} connections")

    def split(self) -> None:
        shard = self.rng.choice(self.server.model.shard_ids(self.table, open_only=True))
        self.server.model.split_shard(self.table, shard)
        self.note("split", shard)

    def rollover(self) -> None:
        shard = self.rng.choice(self.server.model.shard_ids(self.table, open_only=True))
        self.server.model.rollover_shard(self.table, shard)
        self.note("rollover", shard)

    def sleep_until(self, t: float) -> None:
        time.sleep(max(0.0, t - self.t()))

    # -- the end -------------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        return self.fleet.handled()

    def stop_writing(self) -> None:
        """Stop the background writer (once); :attr:`written` is final afterwards."""
        if not self._stop_writing.is_set():
            self._stop_writing.set()
            self.writer.join()
            self.note("writes-stopped", f"{len(self.written)} records")

    def wait_drained(self, expected: set[str], timeout_s: float) -> list[Row]:
        """Wait until every record of ``expected`` was handled (or the timeout); the rows seen last."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = self.rows()
            if expected <= {r.seq for r in rows} or time.monotonic() > deadline:
                return rows
            time.sleep(0.2)

    def owners(self) -> dict[str, tuple[str, int]]:
        """shard -> (owner, token) of every lease that has an owner, read from Redis now."""
        return {lease.shard_id: (lease.owner, lease.token) for lease in self.poller.store.leases() if lease.owner}

    def wait_exit(self, name: str, timeout_s: float) -> tuple[int | None, float]:
        """Wait for worker ``name`` to exit: (its exit code or None on timeout, wall time it was seen
        gone; polled every 20 ms, so at most that much after the real exit)."""
        proc = self.fleet.procs[name]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = proc.poll()
            if code is not None:
                return code, time.time()
            time.sleep(0.02)
        return None, time.time()

    def slow_get_records(self, shard_id: str, latency_s: float, *, calls: int = 1) -> threading.Event:
        """Make the next ``calls`` GetRecords calls on ``shard_id`` (every one with ``calls=-1``) take
        ``latency_s`` longer: the endpoint sleeps before answering.  The event returned is set when
        the first slowed call arrives (the caller's GetRecords is then in flight for ``latency_s``)."""
        from worker.local.server import STREAMS_PREFIX

        op = STREAMS_PREFIX + "GetRecords"
        inner = self.server._ops[op]
        started = threading.Event()
        lock = threading.Lock()
        left = [calls]

        def slowed(params: Any, _inner: Any = inner) -> Any:
            try:
                shard = self.server.model._decode_iterator(params.get("ShardIterator"))[1]
            except Exception:
                shard = ""
            if shard == shard_id:
                with lock:
                    take = left[0] != 0
                    if left[0] > 0:
                        left[0] -= 1
                if take:
                    if not started.is_set():
                        self.note("slow-get-records", f"{shard_id} +{latency_s:.1f} s")
                    started.set()
                    time.sleep(latency_s)
            return _inner(params)

        self.server._ops[op] = slowed
        return started

    def log_lines(self, name: str) -> list[dict[str, Any]]:
        lines = []
        for raw in self.fleet.log_text(name).splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                doc = orjson.loads(raw)
                if isinstance(doc, dict) and "ts" in doc:
                    lines.append(doc)
        return lines

    def finish(self, *, group_reset: bool = False, expected: set[str] | None = None) -> tuple[Report, list[Row]]:
        """Stop writing, wait until every record is handled, stop the fleet, check the invariants.

        ``expected``: the records that must be handled (default: every record written), e.g. only
        those written after the group started with ``--initial-position LATEST``."""
        self.stop_writing()
        written = set(self.written) if expected is None else expected
        deadline = time.monotonic() + self.drain_timeout_s
        while True:
            rows = self.rows()
            if written <= {r.seq for r in rows} or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        self.note("drained", f"{len(rows)} handlings")
        time.sleep(1.0)  # let the last checkpoints land in the poller's view
        self.fleet.stop_all(timeout_s=20)
        self.poller.stop()
        rows = self.rows()

        missing = written - {r.seq for r in rows}
        assert not missing, f"{len(missing)} of {len(written)} records never handled (seed {self.seed})"
        check_order_per_key(rows)
        parent_of = {sid: s.parent_id for sid, s in self.server.model.stream(self.table.stream_arn).shards.items()}
        check_parents_before_children_first_handling(rows, parent_of)
        zombie = self.check_pauses(rows)
        if not group_reset:
            check_parents_before_children_strict([r for r in rows if r.index not in zombie], parent_of)
        moves = check_checkpoints_monotonic(self.poller.observations)
        assert moves > 0 and len(self.poller.observations) > 50
        if any(kind in ("split", "rollover") for _, kind, _ in self.faults):  # closed shards were ended
            assert any(cp == SHARD_END for cp, *_ in self.poller.observations[-1].leases.values())

        counts = collections.Counter(r.seq for r in rows)
        dup_per_shard: dict[str, int] = collections.Counter()
        shard_of = {r.seq: r.shard for r in rows}
        for seq, c in counts.items():
            if c > 1:
                dup_per_shard[shard_of[seq]] += c - 1
        expiries = sum(1 for name in self.fleet.procs for d in self.log_lines(name)
                       if d.get("msg", "").startswith("iterator expired"))
        report = Report(
            name=self.name, seed=self.seed, written=len(written), handled=len(rows),
            duplicates=sum(dup_per_shard.values()), dup_per_shard=dict(dup_per_shard), faults=self.faults,
            checkpoint_moves=moves, runtime_s=self.t(), endpoint_errors=dict(self.endpoint_errors),
            iterator_expiries=expiries, stale_after_pause=len(zombie),
        )
        print(report.line())
        return report, rows

    def check_pauses(self, rows: list[Row]) -> set[int]:
        """The paused-worker invariants; returns the indexes of rows its in-flight batches wrote late."""
        late: set[int] = set()
        for p in self.pauses:
            # Redis gave every shard it held to another worker (or it ended) while it was stopped.
            for shard, old_token in p.held_before.items():
                owner, token, state = p.owners_at_cont[shard]
                assert state == "ended" or (owner not in ("", p.worker) and token > old_token), (
                    f"{shard} still {owner!r}/{token} at SIGCONT (paused {p.worker} had {old_token})")
            mine = [r for r in rows if r.worker == p.worker]
            # Nothing handled while stopped.
            assert not [r for r in mine if p.stopped_at + 0.2 < r.t < p.continued_at - 0.05]
            # After SIGCONT: with a pre-pause token, at most the batch in flight per shard, written at wake-up.
            stale = [r for r in mine if r.t >= p.continued_at - 0.05 and p.held_before.get(r.shard) == r.token]
            per_shard = collections.Counter(r.shard for r in stale)
            assert all(c <= BATCH_SIZE for c in per_shard.values()), f"stale handlings after SIGCONT: {per_shard}"
            assert all(r.t < p.continued_at + 2.0 for r in stale), "a stale batch was started after the wake-up"
            # Any token it handled with after waking was not a pre-pause token, except those batches.
            late |= {r.index for r in stale}
            # No checkpoint write with a pre-pause token after SIGCONT: Redis shows other owners with
            # higher tokens for those shards (asserted above, so the fence refuses the old token), and the
            # poller never saw the paused worker own them with its old token after SIGCONT.
            for obs in self.poller.observations:
                if obs.t > p.continued_at:
                    for shard, old_token in p.held_before.items():
                        cp_owner_token = obs.leases.get(shard)
                        if cp_owner_token:
                            assert (cp_owner_token[1], cp_owner_token[2]) != (p.worker, old_token)
            # Its log shows "lease lost" within about one renew interval of SIGCONT.
            if p.held_before:
                lost = [parse_ts(d["ts"]) for d in self.log_lines(p.worker)
                        if d.get("msg", "").startswith("lease lost") and parse_ts(d["ts"]) >= p.continued_at - 0.01]
                assert lost, f"{p.worker} never logged 'lease lost' after SIGCONT"
                delay = min(lost) - p.continued_at
                print(f"  {p.worker}: 'lease lost' {delay:.2f} s after SIGCONT; "
                      f"{len(stale)} stale handlings after SIGCONT {dict(per_shard)}")
                assert delay <= RENEW_INTERVAL_S + 1.0, f"'lease lost' only {delay:.2f} s after SIGCONT"
        return late


def assert_duplicates_bounded(report: Report, faults: int) -> None:
    """At most one batch per shard per fault is handled again."""
    over = {s: d for s, d in report.dup_per_shard.items() if d > BATCH_SIZE * faults}
    assert not over, f"more than {faults} batch(es) of duplicates on {over} (seed {report.seed})"


@contextlib.contextmanager
def chaos(tmp: Path, name: str, **kwargs: Any) -> Iterator[Chaos]:
    seed = chaos_seed()
    with Chaos(tmp, seed, name, **kwargs) as c:
        yield c
