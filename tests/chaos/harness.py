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
    leader_token: int = 0
    """The leader lease's token (0: none)."""
    counter: int = 0
    """The group's fencing-token counter (0: not set)."""


@dataclass
class Failover:
    """A Redis replica detached (it stops receiving writes), then promoted: the proxy retargeted at it,
    every connection cut, the old primary killed."""

    detached_at: float
    """Wall time of ``REPLICAOF NO ONE`` on the replica."""
    at: float
    """Wall time the proxy was retargeted at the replica and every connection cut."""
    primary_counter: int
    """The old primary's token counter when it was killed: at least every token it ever issued."""
    primary_leases: dict[str, tuple[str, str, int, str]]
    """shard -> (checkpoint, owner, token, state) on the old primary when it was killed."""
    primary_leader_token: int
    primary_observations: list[Observation]
    replica_at_promotion: Observation
    """The replica's state when it was detached (nothing wrote to it until the failover)."""
    missed_acquisitions: set[tuple[str, str, int]]
    """(shard, owner, token) of the acquisitions the old primary's poller saw after the detach."""
    # Filled in by Chaos.check_failover:
    max_before: dict[str, int] = field(default_factory=dict)
    """shard -> the largest token any handler saw for it before the failover."""
    min_after: dict[str, int] = field(default_factory=dict)
    """shard -> the smallest token the promoted replica issued that a handler saw for it after the failover."""
    replica_tokens: set[int] = field(default_factory=set)
    """Tokens the promoted replica issued (leases and the leader lease, as its poller saw them)."""
    stale_rows: int = 0
    """Records handled after the failover with a token of the old primary (before the worker learned)."""
    stale_calls: int = 0
    overlaps: int = 0
    replayed: int = 0
    """Records handled before the failover and again, with a token of the promoted replica, after it."""
    checkpoints_behind: dict[str, tuple[str, str]] = field(default_factory=dict)
    """shard -> (checkpoint on the old primary, on the replica) where the replica's was behind."""
    converged_s: float = 0.0
    """Seconds from the failover until the replica showed every ready shard owned with a token of its own."""


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
    """Reads every lease (and the leader lease's token and the token counter) from Redis every
    ``interval_s`` (directly, not through the proxy)."""

    def __init__(self, url: str, group: str, interval_s: float = 0.1) -> None:
        self.client = connect(url, socket_timeout_s=1.0)
        self.store = LeaseStore(self.client, group)
        keys = GroupKeys.for_group(group)
        self.meta_key, self.leader_key, self.counter_key = keys.meta, keys.leader, keys.token
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
                leader_token = self.client.hget(self.leader_key, "token") or 0
                counter = self.client.get(self.counter_key) or 0
                self.observations.append(Observation(time.time(), str(created), {
                    lease.shard_id: (lease.checkpoint, lease.owner, lease.token, str(lease.state))
                    for lease in leases}, int(leader_token), int(counter)))
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
                 endpoint_faults: dict[str, Any] | None = None, replica: bool = False) -> None:
        """``handler``, ``worker_settings`` (extra ``shardlease run`` flags without the ``--``, e.g.
        ``{"initial-position": "LATEST"}``, overriding the harness's) and ``endpoint_faults``
        (replacing :data:`ENDPOINT_FAULTS`) default to the setup every chaos scenario uses.

        ``replica``: a second redis-server (no persistence) replicating the first, for
        :meth:`detach_replica` and :meth:`fail_over`; needs ``proxy`` (the workers reach Redis
        only through it)."""
        self.tmp, self.seed, self.name = tmp, seed, name
        self.rng = random.Random(seed)
        self.group = f"chaos-{name}"
        # A replica's first sync at once, not after the default 5 s wait for more replicas.
        primary_args = ("--repl-diskless-sync-delay", "0") if replica else ()
        self.redis = RedisServer(tmp / "redis", port=free_port(), persistent=persistent, extra_args=primary_args)
        self.proxy: CuttableProxy | None = None
        self.use_proxy = proxy
        assert proxy or not replica, "a failover needs the workers behind the proxy"
        self.replica: RedisServer | None = None
        if replica:
            self.replica = RedisServer(tmp / "replica", port=free_port(), persistent=False,
                                       extra_args=("--replicaof", "127.0.0.1", str(self.redis.port)))
        self.replica_poller: CheckpointPoller | None = None
        self.failover: Failover | None = None
        self._detached_at = 0.0
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
        if self.replica is not None:
            self.replica.start()
            admin = connect(self.replica.url, socket_timeout_s=1.0)
            try:
                linked = wait_until(lambda: admin.info("replication").get("master_link_status") == "up", 10)
            finally:
                admin.close()
            assert linked, f"the replica on port {self.replica.port} never linked to the primary"
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
        started = [self.start_worker() for _ in range(self.initial_workers)]
        # The timeline of faults starts once the fleet runs (start-up is slow when tests run 4 at a time).
        self.fleet.wait_joined(started, redis_url=self.redis.url)
        self.started_at, self.started_wall = time.monotonic(), time.time()
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
        for poller in {id(p): p for p in (self.poller, self.replica_poller) if p is not None}.values():
            with contextlib.suppress(Exception):
                poller.stop()
        self.server.__exit__(None, None, None)
        if self.proxy:
            self.proxy.stop()
        self.redis.stop()
        if self.replica is not None:
            self.replica.stop()

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

    def detach_replica(self) -> None:
        """``REPLICAOF NO ONE`` on the replica: it stops receiving the primary's writes (lease
        acquisitions, renewals, checkpoints, token draws) from now on; a poller starts reading it."""
        assert self.replica is not None
        admin = connect(self.replica.url, socket_timeout_s=1.0)
        try:
            offset = admin.info("replication").get("master_repl_offset")
            admin.replicaof("NO", "ONE")
            role = admin.info("replication").get("role")
        finally:
            admin.close()
        assert role == "master", role
        self._detached_at = time.time()
        self.replica_poller = CheckpointPoller(self.replica.url, self.group).start()
        self.note("replica-detached", f"port {self.replica.port} at replication offset {offset}")

    def missed_acquisitions(self) -> set[tuple[str, str, int]]:
        """(shard, owner, token) of every lease acquisition the primary's poller saw since the replica was
        detached (tokens the replica does not have)."""
        assert self.replica_poller is not None
        snapshot = next(iter(self.replica_poller.observations), None)
        if snapshot is None:
            return set()
        known = _tokens(snapshot)
        return {(shard, owner, token) for o in list(self.poller.observations) if o.t > self._detached_at
                for shard, (_cp, owner, token, _state) in o.leases.items() if owner and token not in known}

    def fail_over(self) -> None:
        """Promote the detached replica: retarget the proxy at it, cut every connection, read what the
        old primary issued, kill it; from now on ``self.poller`` reads the replica."""
        assert self.replica is not None and self.proxy is not None and self.replica_poller is not None
        self.proxy.retarget(self.replica.port)
        at = time.time()
        cut = self.proxy.cut()
        time.sleep(0.2)  # commands the primary had received before the cut are done
        store = self.poller.store
        primary_counter = int(store.client.get(store.keys.token) or 0)
        primary_leases = {lease.shard_id: (lease.checkpoint, lease.owner, lease.token, str(lease.state))
                          for lease in store.leases()}
        primary_leader_token = int(store.client.hget(store.keys.leader, "token") or 0)
        self.poller.stop()
        self.redis.kill()
        replica_obs = [o for o in self.replica_poller.observations if o.t < at]
        assert replica_obs, "the replica's poller saw nothing before the failover"
        self.failover = Failover(self._detached_at, at, primary_counter, primary_leases, primary_leader_token,
                                 self.poller.observations, replica_obs[0], self.missed_acquisitions())
        self.poller = self.replica_poller
        self.note("failover", f"proxy -> replica port {self.replica.port}, {cut} connections cut, primary "
                              f"killed (its token counter {primary_counter}, the replica's "
                              f"{replica_obs[0].counter})")

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
        if self.failover is not None:
            self.check_failover(rows, parent_of)
        elif not group_reset:
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

    def check_failover(self, rows: list[Row], parent_of: dict[str, str | None]) -> None:
        """The failover invariants (see docs/chaos.md)."""
        f = self.failover
        assert f is not None
        # The replica was frozen from the detach to the failover (nothing reached it early) ...
        for obs in self.poller.observations:
            if obs.t < f.at:
                assert obs.leases == f.replica_at_promotion.leases and obs.counter == f.replica_at_promotion.counter
        # ... it had replicated the group's state until then ...
        assert f.replica_at_promotion.leases and f.replica_at_promotion.counter > 0, "the replica had no group state"
        # ... and it really lost writes: lease acquisitions (token draws), and checkpoints (the replay).
        assert f.missed_acquisitions, "the primary made no lease acquisition after the replica was detached"
        assert f.replica_at_promotion.counter < f.primary_counter
        for shard, (cp, *_) in f.primary_leases.items():
            replica_cp = f.replica_at_promotion.leases.get(shard, ("",))[0]
            if _seq_behind(replica_cp, cp):
                f.checkpoints_behind[shard] = (cp, replica_cp)
        assert f.checkpoints_behind, "no checkpoint on the replica was behind the primary's"
        # Checkpoints never moved backwards on the old primary either (on the replica: checked by finish()).
        check_checkpoints_monotonic(f.primary_observations)

        # Tokens the old primary issued are at most its counter; every token the promoted replica issued is above.
        primary_tokens = set().union(*(_tokens(o) for o in f.primary_observations))
        primary_tokens |= {token for *_, token, _state in f.primary_leases.values()} | {f.primary_leader_token}
        assert max(primary_tokens) <= f.primary_counter
        inherited = _tokens(f.replica_at_promotion)
        f.replica_tokens = set().union(*(_tokens(o) for o in self.poller.observations if o.t >= f.at)) - inherited
        f.replica_tokens.discard(0)
        assert f.replica_tokens, "the promoted replica issued no token"
        assert min(f.replica_tokens) > f.primary_counter, (
            f"the promoted replica issued {sorted(t for t in f.replica_tokens if t <= f.primary_counter)[:5]}, "
            f"not above the old primary's counter {f.primary_counter}")
        # The fleet converged on the replica: at some point every shard ready was owned with one of its tokens.
        converged = [o.t for o in self.poller.observations if o.t > f.at and all(
            state != "ready" or (owner and token in f.replica_tokens) for _, owner, token, state in o.leases.values())]
        assert converged, "the fleet never held every shard on the promoted replica"
        f.converged_s = converged[0] - f.at

        # Handler calls: before the failover, and after it with a token of either server.
        calls_path = self.handler_env.get("CHAOS_CALLS")
        assert calls_path, "a failover scenario logs every handler call: set CHAOS_CALLS in handler_env"
        calls = read_calls(Path(calls_path))[0]
        for r in rows:
            if r.t <= f.at:
                f.max_before[r.shard] = max(f.max_before.get(r.shard, 0), r.token)
        for k in calls:
            if k.start <= f.at:
                f.max_before[k.shard] = max(f.max_before.get(k.shard, 0), k.token)

        def issued_by_replica(token: int) -> bool:
            return token in f.replica_tokens or token > f.primary_counter

        stale: set[int] = set()
        handled_before = {r.seq for r in rows if r.t <= f.at}
        for r in rows:
            if r.t <= f.at:
                continue
            if issued_by_replica(r.token):
                assert r.token > f.max_before.get(r.shard, 0), (
                    f"{r.shard}: handled with token {r.token} after the failover, not above "
                    f"{f.max_before[r.shard]} seen before it")
                f.min_after[r.shard] = min(f.min_after.get(r.shard, r.token), r.token)
                f.replayed += r.seq in handled_before
            else:
                stale.add(r.index)
        f.stale_rows = len(stale)
        # Every handling, duplicates included, puts parents before children on each server; not across the
        # failover: the promoted replica lost parents' ends (and children's progress) and replays them.
        check_parents_before_children_strict([r for r in rows if r.t <= f.at], parent_of)
        check_parents_before_children_strict([r for r in rows if r.t > f.at and r.index not in stale], parent_of)
        # A call with an old primary's token after the failover: started before that worker's own lease
        # clock ran out (last renewal, on the old primary, + TTL) and before it logged the lease lost.
        lost_at: dict[tuple[str, str], float] = {}
        for name in self.fleet.procs:
            for d in self.log_lines(name):
                ts = parse_ts(d["ts"])
                if d.get("msg", "").startswith("lease lost") and ts > f.at and "shard_id" in d:
                    lost_at.setdefault((name, d["shard_id"]), ts)
        for k in calls:
            if k.start > f.at and issued_by_replica(k.token):
                assert k.token > f.max_before.get(k.shard, 0), (
                    f"{k.shard}: a call with token {k.token} after the failover, not above {f.max_before[k.shard]}")
        stale_calls = [k for k in calls if k.start > f.at and not issued_by_replica(k.token)]
        for k in stale_calls:
            assert k.start < f.at + LEASE_TTL_S, f"{k.worker} called its handler on {k.shard} with an old " \
                                                 f"token {k.start - f.at:.2f} s after the failover"
            # may_act() is asked just before a call: a tick forgetting the lease can land in between.
            lost = lost_at.get((k.worker, k.shard), float("inf"))
            assert k.start <= lost + 0.05, (f"{k.worker} called its handler on {k.shard} with the old token "
                                            f"{k.start - lost:.3f} s after it logged the lease lost")
        f.stale_calls = len(stale_calls)
        for k in stale_calls:
            told = lost_at.get((k.worker, k.shard))
            print(f"  {k.worker} called its handler on {k.shard} with the old primary's token {k.token} "
                  f"{k.start - f.at:.2f} s after the failover"
                  + (f", {told - k.start:.3f} s before it logged the lease lost" if told else ""))
        # Two processes on one shard at once only while an owner of the old primary had not heard yet.
        old_running = {id(k) for k in calls if not issued_by_replica(k.token) and (k.end is None or k.end > f.at)}
        pairs = overlapping_calls(calls)
        unexplained = [(a, b) for a, b in pairs if id(a) not in old_running and id(b) not in old_running]
        assert not unexplained, f"{len(unexplained)} overlapping calls not explained by the failover: " + "; ".join(
            f"{a.shard} {a.worker}/{a.token} and {b.worker}/{b.token}" for a, b in unexplained[:3])
        f.overlaps = len(pairs)
        for a, b in pairs:
            print(f"  overlap on {a.shard}: {a.worker}/{a.token} {a.start - f.at:+.2f}..{(a.end or 0) - f.at:+.2f} s "
                  f"and {b.worker}/{b.token} {b.start - f.at:+.2f}..{(b.end or 0) - f.at:+.2f} s from the failover")

        for shard in sorted(set(f.max_before) | set(f.min_after) | set(f.primary_leases)):
            before, after = f.max_before.get(shard), f.min_after.get(shard)
            gap = f"(+{(after - before) / 1e6:.3f} s)" if before and after else ""
            p_cp, _, _, p_state = f.primary_leases.get(shard, ("-", "", 0, "-"))
            r_cp, _, _, r_state = f.replica_at_promotion.leases.get(shard, ("-", "", 0, "-"))
            print(f"  {shard}: primary {p_state} cp {p_cp[-5:] or '-'}, replica {r_state} cp {r_cp[-5:] or '-'}; "
                  f"max token handled before {before}, min after {after} {gap}")
        print(f"  failover: old primary's counter {f.primary_counter}, replica's at promotion "
              f"{f.replica_at_promotion.counter} ({f.primary_counter - f.replica_at_promotion.counter} us behind), "
              f"replica's tokens {min(f.replica_tokens)}..{max(f.replica_tokens)} ({len(f.replica_tokens)}); "
              f"{len(f.missed_acquisitions)} acquisitions missed; converged {f.converged_s:.2f} s after the failover; "
              f"{len(f.checkpoints_behind)} checkpoints behind on the replica; {f.replayed} records replayed; "
              f"{f.stale_rows} records in {f.stale_calls} calls after the failover with an old token; "
              f"{f.overlaps} overlapping call pairs")

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


def _tokens(obs: Observation) -> set[int]:
    return {token for _cp, _owner, token, _state in obs.leases.values()} | {obs.leader_token}


def _seq_behind(a: str, b: str) -> bool:
    """Checkpoint ``a`` is behind ``b`` ('' is behind everything, SHARD_END after everything)."""
    if a == b or b == "":
        return False
    if a == "" or b == SHARD_END:
        return True
    return a != SHARD_END and int(a) < int(b)


def assert_duplicates_bounded(report: Report, faults: int) -> None:
    """At most one batch per shard per fault is handled again."""
    over = {s: d for s, d in report.dup_per_shard.items() if d > BATCH_SIZE * faults}
    assert not over, f"more than {faults} batch(es) of duplicates on {over} (seed {report.seed})"


@contextlib.contextmanager
def chaos(tmp: Path, name: str, **kwargs: Any) -> Iterator[Chaos]:
    seed = chaos_seed()
    with Chaos(tmp, seed, name, **kwargs) as c:
        yield c
