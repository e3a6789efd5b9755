"""LeaseStore: the lease protocol's operations, each one round trip to Redis.

Every change of lease state is one Lua script (see ``leaser/lua/``): all keys go
through KEYS, all of them under the group's hash tag, and every expiry is judged
on Redis server time.  Reads that prepare a script (a lease's children, a
victim's leases) are checked again inside the script; when they no longer hold,
the script answers 'retry' and the read is repeated.

Redis errors are translated here: connection failures and timeouts become
:class:`CoordinationUnavailable`; a stale token becomes :class:`LeaseLostError`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.cluster

from leaser.config import LeaseConfig
from leaser.errors import ConcurrentUpdate, ConfigError, CoordinationUnavailable, LeaseLostError
from leaser.keys import META_KEY_PATTERN, GroupKeys, group_of_meta_key, validate_id
from leaser.lease import Acquired, Lease, ShardSpec, validate_sequence_number
from leaser.positions import HISTORY_KEPT, SKIP_BEFORE_NOW, SKIP_BEFORE_NOW_MARGIN_MS, Position, Repositioned
from leaser.scripts import Scripts

_REGISTER_CHUNK = 500
_RETRIES_ON_CONCURRENT_UPDATE = 20


RedisClient = redis.Redis | redis.cluster.RedisCluster
"""What :func:`connect` returns and :class:`LeaseStore` takes: one server, or a Redis Cluster."""

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

# redis-py strips the error code from these (ClusterDownError's text is "The cluster is down"), so they are
# matched by class; all of them mean "the slot's primary is changing or unreachable: try again later".
_CLUSTER_TRANSIENT: tuple[type[BaseException], ...] = (
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN, and MASTERDOWN (a subclass)
    redis.exceptions.TryAgainError,  # TRYAGAIN: a multi-key command during resharding
    redis.exceptions.AskError,  # ASK/MOVED (MovedError is a subclass) left after redis-py's redirects
    redis.exceptions.ClusterError,  # redis-py gave up after RedisClusterRequestTTL redirects/retries
    redis.exceptions.SlotNotCoveredError,  # no node serves the slot (yet)
)
# The base RedisClusterException is also raised for misuse (a blocked pipeline command, a bad argument):
# only these messages mean the cluster is unreachable or its slot map is incomplete right now.
_CLUSTER_UNREACHABLE_TEXT = (
    "Redis Cluster cannot be connected", "All slots are not covered", "has no redis_connection",
)


_REFUSING = ("OOM", "BUSY", "MISCONF", "NOPERM", "NOAUTH", "WRONGPASS", "NOREPLICAS", "UNBLOCKED")
"""Errors of a server that is up but refuses commands until an operator or time fixes it (out of memory,
a long script, a failed snapshot, an ACL changed under a running worker): retried, never fatal."""


@contextlib.contextmanager
def translate_redis_errors() -> Iterator[None]:
    """Turn redis-py's transient errors into CoordinationUnavailable (retryable)."""
    try:
        yield
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise CoordinationUnavailable(f"Redis unavailable: {type(exc).__name__}: {exc}") from exc
    except redis.exceptions.BusyLoadingError as exc:
        raise CoordinationUnavailable(f"Redis is loading its data: {exc}") from exc
    except _CLUSTER_TRANSIENT as exc:
        raise CoordinationUnavailable(f"Redis Cluster is failing over: {type(exc).__name__}: {exc}") from exc
    except redis.exceptions.RedisClusterException as exc:
        if any(text in str(exc) for text in _CLUSTER_UNREACHABLE_TEXT):
            raise CoordinationUnavailable(f"Redis Cluster unavailable: {exc}") from exc
        raise
    except redis.exceptions.ReadOnlyError as exc:
        raise CoordinationUnavailable(f"Redis is failing over (a replica answered): {exc}") from exc
    except (redis.exceptions.OutOfMemoryError, redis.exceptions.NoPermissionError) as exc:  # the code is stripped
        raise CoordinationUnavailable(f"Redis refuses commands for now: {type(exc).__name__}: {exc}") from exc
    except redis.exceptions.ResponseError as exc:
        text = str(exc)
        if text.startswith(("TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "LOADING", "READONLY")):
            raise CoordinationUnavailable(f"Redis is failing over: {text}") from exc
        if text.startswith(_REFUSING):
            raise CoordinationUnavailable(f"Redis refuses commands for now: {text}") from exc
        raise


def _start(spec: ShardSpec) -> str:
    """register.lua's ARGV[4]: where the shard starts while it has no checkpoint."""
    if spec.read_from_start is None:
        return "auto"
    return "beginning" if spec.read_from_start else "initial"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[Any]) -> list[tuple[str, str]]:
    return [(_s(flat[i]), _s(flat[i + 1])) for i in range(0, len(flat), 2)]


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What one heartbeat reports (all times Redis server ms)."""

    now_ms: int
    lost: dict[str, str]
    """Leases the caller named but no longer holds: shard id -> reason."""
    members: dict[str, int]
    """Live workers -> leases each renewed at its last heartbeat."""
    ready: int
    """Leases not ended whose parents have ended: the pool the fair share divides."""
    free: int
    expired: int
    asks: dict[str, int]
    """Takers asking the caller for leases -> how many."""
    grants: list[str]
    """Shards handed over to the caller and reserved for it."""
    created_ms: int
    """When the group's state was first written; a change means Redis lost it."""
    leader: str
    """The worker holding the leader lease ('' if none); members run for it at each heartbeat."""
    leader_token: int
    unclaimed: list[str] = field(default_factory=list)
    """Shards in the caller's held index it did not name: acquired, but the reply was lost.  Reclaim
    them (acquire again: a new token) or they stay unrenewed until they expire."""


@dataclass(frozen=True, slots=True)
class Leader:
    owner: str
    token: int
    expires_ms: int


def _parents_first(parents: Mapping[str, list[str]]) -> list[str]:
    """The shards of ``parents`` (shard -> its parent ids), each after those of its parents that are in it."""
    done: set[str] = set()
    out: list[str] = []

    def visit(shard: str, path: set[str]) -> None:
        if shard in done or shard in path:
            return
        path.add(shard)
        for parent in parents[shard]:
            if parent in parents:
                visit(parent, path)
        done.add(shard)
        out.append(shard)

    for shard in sorted(parents):
        visit(shard, set())
    return out


def order_for_registration(specs: Iterable[ShardSpec]) -> list[ShardSpec]:
    """Parents before children within one batch (a parent's state decides its child's)."""
    pending = {s.shard_id: s for s in specs}
    done: set[str] = set()
    out: list[ShardSpec] = []

    def visit(spec: ShardSpec, path: set[str]) -> None:
        if spec.shard_id in done or spec.shard_id in path:
            return
        path.add(spec.shard_id)
        for parent in spec.parent_ids:
            if parent in pending:
                visit(pending[parent], path)
        done.add(spec.shard_id)
        out.append(spec)

    for spec in sorted(pending.values(), key=lambda s: (s.order, s.shard_id)):
        visit(spec, set())
    return out


class LeaseStore:
    """The lease protocol of one consumer group on one Redis (or Redis Cluster slot).

    The client (``redis.Redis`` or ``redis.cluster.RedisCluster``) must decode responses
    (``decode_responses=True``); see :func:`leaser.connect`.
    """

    def __init__(self, client: RedisClient, group: str, config: LeaseConfig | None = None) -> None:
        self.client = client
        self.keys = GroupKeys.for_group(group)
        self.config = config or LeaseConfig()
        self._scripts = Scripts(client)
        self._cluster = isinstance(client, redis.cluster.RedisCluster)

    def _pipelined(self, name: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run script ``name`` once per (keys, args) in one pipelined round trip; answers in order.

        redis-py's cluster pipeline neither offers ``evalsha`` nor loads scripts first (a plain pipeline
        does), so EVALSHA is sent as a raw command, and after a
        failover or restart the slot's primary may answer NOSCRIPT to every call: then the script is
        loaded and the pipeline sent again.  Every call went to the same node with the same script,
        so NOSCRIPT means none of them ran.
        """
        for attempt in (1, 2):
            with translate_redis_errors():
                pipe = self.client.pipeline(transaction=False)
                script = self._scripts[name]
                for keys, args in calls:
                    if self._cluster:  # the cluster pipeline blocks evalsha(); the raw command routes by KEYS
                        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
                    else:
                        script(keys=keys, args=args, client=pipe)
                try:
                    return list(pipe.execute())
                except redis.exceptions.NoScriptError:
                    if attempt == 2:
                        raise
                    self.client.script_load(script.script)
        raise AssertionError("unreachable")

    @property
    def group(self) -> str:
        return self.keys.group

    def _run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        with translate_redis_errors():
            return self._scripts[name](keys=list(keys), args=list(args))

    # -- shards -------------------------------------------------------------------------------

    def register_shards(self, specs: Iterable[ShardSpec]) -> dict[str, str]:
        """Register shards with their lineage; returns shard id -> ready|blocked|exists|tombstoned.

        Idempotent: a shard registered before keeps its state.  Parents in the same batch are
        registered before their children.  A parent unknown to the group does not block its child.
        Each shard's start (see :attr:`ShardSpec.read_from_start`) is fixed at its registration.
        """
        k = self.keys
        ordered = order_for_registration(specs)
        result: dict[str, str] = {}
        for start in range(0, len(ordered), _REGISTER_CHUNK):
            chunk = ordered[start : start + _REGISTER_CHUNK]
            for spec in chunk:
                validate_id("shard_id", spec.shard_id)
                for parent in spec.parent_ids:
                    validate_id("shard_id", parent)
            answers = self._pipelined("register", [
                ([k.lease(spec.shard_id), k.shards, k.free, k.tombstones, k.meta]
                 + [k.lease(p) for p in spec.parent_ids],
                 [spec.shard_id, repr(float(spec.order)), ",".join(spec.parent_ids), _start(spec)])
                for spec in chunk
            ])
            for spec, answer in zip(chunk, answers, strict=True):
                result[spec.shard_id] = _s(answer)
        return result

    def lease(self, shard_id: str) -> Lease | None:
        """The lease of one shard, or None if it is not registered."""
        with translate_redis_errors():
            fields = self.client.hgetall(self.keys.lease(shard_id))
        return Lease.from_hash({_s(a): _s(b) for a, b in fields.items()}) if fields else None

    def leases(self) -> list[Lease]:
        """Every registered lease, in registration order (for status and tests; O(shards))."""
        with translate_redis_errors():
            ids = [_s(x) for x in self.client.zrange(self.keys.shards, 0, -1)]
            pipe = self.client.pipeline(transaction=False)
            for shard in ids:
                pipe.hgetall(self.keys.lease(shard))
            rows = pipe.execute()
        return [Lease.from_hash({_s(a): _s(b) for a, b in row.items()}) for row in rows if row]

    def mark_listed(self) -> bool:
        """Record that the group's first complete listing is registered; True the first time.

        From then on a shard registered with ``read_from_start=None`` was created after the group
        started, so it is read from its first record whatever the group's initial position.
        """
        with translate_redis_errors():
            return bool(self.client.hsetnx(self.keys.meta, "listed_ms", self.server_time_ms()))

    def shard_ids(self) -> list[str]:
        """Every registered shard id, oldest first."""
        with translate_redis_errors():
            return [_s(x) for x in self.client.zrange(self.keys.shards, 0, -1)]

    def candidates(self, limit: int, offset: int = 0) -> list[str]:
        """Up to ``limit`` leases that can be acquired now, from position ``offset`` of the pool:
        expired ones first, then free ones, oldest first.  One round trip."""
        if limit <= 0:
            return []
        end = offset + limit
        with translate_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            if not self._cluster:  # TIME has no key: a cluster pipeline refuses it (read separately below)
                pipe.time()
            pipe.zrange(self.keys.free, 0, end - 1)
            pipe.zrange(self.keys.owned, 0, end - 1, withscores=True)
            answers = pipe.execute()
        if self._cluster:
            now_ms = self.server_time_ms()
            free, owned = answers
        else:
            (seconds, micros), free, owned = answers
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        pool = [_s(member) for member, expires in owned if expires <= now_ms]
        pool += [_s(x) for x in free]
        return pool[offset:end]

    def held_by(self, worker_id: str) -> list[str]:
        """Shards the worker holds now (its index, checked against each lease's owner)."""
        return [shard for shard, _ in self._held_with(worker_id, "owner")]

    def offered(self, owner: str, taker: str) -> list[str]:
        """Shards ``owner`` holds and has offered to ``taker`` (see :meth:`offer`), by id."""
        return [shard for shard, offered_to in self._held_with(owner, "offered_to") if offered_to == taker]

    def _held_with(self, worker_id: str, field: str) -> list[tuple[str, str]]:
        """(shard, that lease's ``field``) for each shard in the worker's held index it still owns, by id."""
        with translate_redis_errors():
            ids = sorted(_s(x) for x in self.client.smembers(self.keys.held(worker_id)))
            if not ids:
                return []
            pipe = self.client.pipeline(transaction=False)
            for shard in ids:
                pipe.hmget(self.keys.lease(shard), ["owner", field])
            rows = pipe.execute()
        return [(shard, _s(value) if value is not None else "") for shard, (owner, value) in zip(ids, rows, strict=True)
                if owner is not None and _s(owner) == worker_id]

    def begin(self, worker_id: str, shard_id: str, token: int) -> tuple[int, bool]:
        """Record, fenced by ``token``, when reading the shard from its start position began.

        Returns (began_ms, first): Redis time of the first call for this shard, and whether this call
        set it.  A later owner of a shard without a checkpoint uses it to start where the first one did.
        Raises LeaseLostError (nothing changed) when the token is stale or the lease expired.
        """
        answer = self._run("begin", [self.keys.lease(shard_id)], [worker_id, token])
        if _s(answer[0]) == "lost":
            raise LeaseLostError(shard_id, token, _s(answer[1]))
        return int(answer[1]), int(answer[2]) == 1

    def offer(self, worker_id: str, shard_id: str, token: int, taker: str) -> None:
        """Mark a lease the caller is handing over to ``taker`` ('' withdraws), fenced by ``token``.

        Only an offered lease can be taken by force (``acquire(..., take_from=owner)``) when the
        handoff times out, so a forced take-over takes exactly the lease under handoff.
        Raises LeaseLostError (nothing changed) when the token is stale or the lease expired.
        """
        answer = self._run("offer", [self.keys.lease(shard_id)], [worker_id, token, taker])
        if _s(answer[0]) == "lost":
            raise LeaseLostError(shard_id, token, _s(answer[1]))

    # -- repositioning (rewind, import) ----------------------------------------------------------

    def known(self) -> bool:
        """True if the group has written state to this Redis (a heartbeat, a registration or a reposition)."""
        with translate_redis_errors():
            return bool(self.client.exists(self.keys.meta))

    def epoch(self) -> int:
        """The group's epoch: how many repositions it has had.  Plan a reposition from it."""
        with translate_redis_errors():
            return int(self.client.hget(self.keys.meta, "epoch") or 0)

    def reposition(self, positions: Sequence[Position], *, expected_epoch: int, request_id: str,
                   record: Mapping[str, Any]) -> Repositioned:
        """Move the given shards to new positions in one script (see ``lua/reposition.lua``), fenced.

        When it returns, every shard set has no owner and a fresh token: a consumer that held it
        stops at its next heartbeat or fenced write, and none of its writes lands.  States are rebuilt
        from the new checkpoints (parents before children); children of re-opened shards that are not
        set are blocked again until their parents end.  ``record`` (a non-empty JSON object: who, what,
        the plan) is added to the group's history with the Redis time, the new epoch and ``fence_token``: the
        token counter as the change left it (every lease acquired after the change has a larger token).

        ``expected_epoch`` is the epoch the positions were planned from (:meth:`epoch`): if another
        reposition ran since, nothing changes and ConcurrentUpdate is raised.  ``request_id`` (unique
        per request) makes a retry of a call whose reply was lost answer ``repeated=True`` instead of
        applying it twice.
        """
        wanted = {p.shard_id: p for p in positions}
        if not wanted:
            raise ValueError("reposition needs at least one position")
        for shard, position in wanted.items():
            validate_id("shard_id", shard)
            for parent in position.parent_ids:
                validate_id("shard_id", parent)
        if not record:
            raise ValueError("reposition needs a history record")
        body = json.dumps({**record, "request": request_id}, separators=(",", ":"), sort_keys=True)
        k = self.keys
        for _ in range(_RETRIES_ON_CONCURRENT_UPDATE):
            current = self._lineage_rows(list(wanted))
            unknown = [s for s in wanted if s not in current]
            registered_children = self._registered_children(unknown)
            keep: list[str] = []
            for shard in wanted:
                # Re-opened: its children wait again; ended: blocked ones may start.
                children = current[shard]["children"] if shard in current else registered_children[shard]
                keep += [c for c in children if c not in wanted and c not in keep]
            kept_rows = self._lineage_rows(keep)
            parents = {s: (current[s]["parents"] if s in current else list(p.parent_ids)) for s, p in wanted.items()}
            parents.update({s: row["parents"] for s, row in kept_rows.items()})
            new_children = {s: sorted({c for c in wanted if s in parents[c]} | set(registered_children[s]))
                            for s in unknown}
            keys = [k.shards, k.free, k.owned, k.ended, k.tombstones, k.token, k.meta, k.history]
            args: list[Any] = [request_id, expected_epoch, body, HISTORY_KEPT, k.wake_channel, len(parents)]
            for shard in _parents_first(parents):
                row = current.get(shard) or kept_rows.get(shard)
                owner = row["owner"] if row else ""
                keys += [k.lease(shard), k.held(owner) if owner else k.lease(shard)]
                keys += [k.lease(p) for p in parents[shard]]
                children = ",".join(row["children"] if row else new_children[shard])
                wanted_here = wanted.get(shard)
                if wanted_here is None:
                    args += [shard, "keep", owner, children, ",".join(parents[shard]), "0", "", "", "0"]
                else:
                    args += [shard, "set", owner, children, ",".join(parents[shard]),
                             repr(float(wanted_here.order)), wanted_here.checkpoint,
                             "beginning" if wanted_here.read_from_start else "initial",
                             f"now-{SKIP_BEFORE_NOW_MARGIN_MS}" if wanted_here.skip_before_ms == SKIP_BEFORE_NOW
                             else str(wanted_here.skip_before_ms)]
            answer = self._run("reposition", keys, args)
            status = _s(answer[0])
            if status == "ok":
                fenced = _s(answer[2])
                return Repositioned(int(answer[1]), tuple(fenced.split(",")) if fenced else ())
            if status == "done":
                return Repositioned(int(answer[1]), (), repeated=True)
            if status == "conflict":
                raise ConcurrentUpdate(f"group {self.group!r} was repositioned by another operation since this one "
                                       f"was planned (epoch {int(answer[1])}, planned from {expected_epoch}): "
                                       "nothing changed; plan again")
        raise ConcurrentUpdate(f"the leases of group {self.group!r} kept changing while repositioning them")

    def _registered_children(self, shards: list[str]) -> dict[str, list[str]]:
        """For shards the group does not know (cleaned up, or never registered): the registered leases
        naming them as a parent.  Reads every lease's parents (O(shards)): only when there are such shards."""
        if not shards:
            return {}
        found: dict[str, list[str]] = {s: [] for s in shards}
        everyone = self.shard_ids()
        for child, row in self._lineage_rows(everyone).items():
            for parent in row["parents"]:
                if parent in found:
                    found[parent].append(child)
        return found

    def _lineage_rows(self, shards: list[str]) -> dict[str, dict[str, Any]]:
        """owner, children and parents of each registered shard among ``shards`` (one pipeline)."""
        if not shards:
            return {}
        with translate_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for shard in shards:
                pipe.hmget(self.keys.lease(shard), ["state", "owner", "children", "parents"])
            rows = pipe.execute()
        out: dict[str, dict[str, Any]] = {}
        for shard, (state, owner, children, parents) in zip(shards, rows, strict=True):
            if state is not None:
                out[shard] = {"owner": _s(owner or ""), "children": [c for c in _s(children or "").split(",") if c],
                              "parents": [p for p in _s(parents or "").split(",") if p]}
        return out

    def history(self, limit: int = 10) -> list[dict[str, Any]]:
        """The group's last rewinds, imports and exports, newest first (see :meth:`reposition`)."""
        with translate_redis_errors():
            raw = self.client.hgetall(self.keys.history)  # at most HISTORY_KEPT entries
        out = []
        for _, text in sorted(((int(_s(seq)), text) for seq, text in raw.items()), reverse=True)[:max(limit, 1)]:
            try:
                out.append(json.loads(_s(text)))
            except ValueError:
                continue
        return out

    def record_history(self, record: Mapping[str, Any]) -> None:
        """Add an operation that changes no position (an export) to the group's history."""
        entry = {"at_ms": self.server_time_ms(), "epoch": self.epoch(), **dict(record)}
        with translate_redis_errors():
            seq = int(self.client.hincrby(self.keys.meta, "history_seq", 1))
            pipe = self.client.pipeline(transaction=False)  # MULTI is not in the worker's ACL
            pipe.hset(self.keys.history, str(seq), json.dumps(entry, separators=(",", ":"), sort_keys=True))
            pipe.hdel(self.keys.history, str(seq - HISTORY_KEPT))
            pipe.execute()

    def server_time_ms(self) -> int:
        """Redis server time; on a cluster, the clock of the primary serving the group's slot (the scripts' clock)."""
        with translate_redis_errors():
            if isinstance(self.client, redis.cluster.RedisCluster):
                node = self.client.get_node_from_key(self.keys.token)  # type: ignore[no-untyped-call]
                seconds, micros = self.client.execute_command("TIME", target_nodes=node)  # type: ignore[no-untyped-call]
            else:
                seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- leases -------------------------------------------------------------------------------

    def acquire(
        self, worker_id: str, shard_ids: Sequence[str], *, take_from: str = ""
    ) -> tuple[list[Acquired], dict[str, str]]:
        """Try to acquire each shard's lease in one pipelined round trip.

        Returns (acquired, refused) where refused maps shard id -> reason.  A lease is acquired
        only if it is free, expired, reserved for the caller, already the caller's (a retry after a
        lost reply: reacquired with a new token), or (with ``take_from``) still held by that worker
        and offered to the caller at least ``handoff_timeout_s`` ago (Redis time): a hard take-over
        after a handoff timed out.
        """
        k = self.keys
        if not shard_ids:
            return [], {}
        answers = self._pipelined("acquire", [
            ([k.lease(shard), k.free, k.owned, k.token, k.held(worker_id), k.grants(worker_id), k.load],
             [worker_id, self.config.lease_ttl_ms, shard, take_from, int(self.config.handoff_timeout_s * 1000)])
            for shard in shard_ids
        ])
        acquired: list[Acquired] = []
        refused: dict[str, str] = {}
        for shard, answer in zip(shard_ids, answers, strict=True):
            if _s(answer[0]) == "ok":
                acquired.append(Acquired(shard, int(answer[1]), _s(answer[2]), _s(answer[3]), _s(answer[4]),
                                         read_from_start=_s(answer[5]) == "beginning",
                                         skip_before_ms=int(answer[6] or 0)))
            else:
                refused[shard] = _s(answer[1])
        return acquired, refused

    def heartbeat(self, worker_id: str, held: Mapping[str, int], *, leaving: bool = False) -> Heartbeat:
        """Renew membership and every lease in ``held`` (shard id -> token) in one round trip.

        With ``leaving=True`` the worker leaves the group's membership (so others stop counting it
        in the fair share) but still renews the leases it has not released yet.
        """
        k = self.keys
        shards = list(held)
        raw = self._run(
            "heartbeat",
            [k.members, k.load, k.free, k.owned, k.asks(worker_id), k.grants(worker_id), k.held(worker_id), k.meta,
             k.leader, k.token]
            + [k.lease(s) for s in shards],
            [worker_id, self.config.lease_ttl_ms, self.config.member_ttl_ms, "0" if leaving else "1"]
            + [held[s] for s in shards],
        )
        return Heartbeat(
            now_ms=int(raw[0]),
            lost=dict(_pairs(raw[1])),
            members={w: int(n) for w, n in _pairs(raw[2])},
            ready=int(raw[3]),
            free=int(raw[4]),
            expired=int(raw[5]),
            asks={w: int(n) for w, n in _pairs(raw[6])},
            grants=[_s(x) for x in raw[7]],
            created_ms=int(raw[8] or 0),
            leader=_s(raw[9]),
            leader_token=int(raw[10] or 0),
            unclaimed=sorted(_s(x) for x in raw[11]),
        )

    def checkpoint(self, worker_id: str, shard_id: str, token: int, sequence_number: str) -> bool:
        """Record progress, fenced by ``token``.  True if it moved, False if equal or behind.

        Raises LeaseLostError (nothing changed) when the token is stale or the lease expired.
        """
        validate_sequence_number(sequence_number)
        answer = self._run("checkpoint", [self.keys.lease(shard_id)], [worker_id, token, sequence_number])
        status = _s(answer[0])
        if status == "lost":
            raise LeaseLostError(shard_id, token, _s(answer[1]))
        return status == "ok"

    def end_shard(self, worker_id: str, shard_id: str, token: int) -> list[str]:
        """Checkpoint SHARD_END, fenced.  Returns the children that became acquirable."""
        k = self.keys
        for _ in range(_RETRIES_ON_CONCURRENT_UPDATE):
            with translate_redis_errors():
                children_csv = _s(self.client.hget(k.lease(shard_id), "children") or "")
                children = children_csv.split(",") if children_csv else []
                pipe = self.client.pipeline(transaction=False)
                for child in children:
                    pipe.hget(k.lease(child), "parents")
                parents_of = [(_s(p) if p else "").split(",") for p in pipe.execute()] if children else []
            keys = [k.lease(shard_id), k.free, k.owned, k.ended, k.held(worker_id)]
            counts: list[int] = []
            for child, parents in zip(children, parents_of, strict=True):
                others = [p for p in parents if p and p != shard_id]
                keys.append(k.lease(child))
                keys.extend(k.lease(p) for p in others)
                counts.append(len(others))
            answer = self._run("end_shard", keys, [worker_id, token, shard_id, children_csv, k.wake_channel, *counts])
            status = _s(answer[0])
            if status == "lost":
                raise LeaseLostError(shard_id, token, _s(answer[1]))
            if status == "ok":
                ready = _s(answer[1])
                return ready.split(",") if ready else []
        raise ConcurrentUpdate(f"children of shard {shard_id!r} kept changing while ending it")

    def release(self, worker_id: str, shard_id: str, token: int, *, to: str = "") -> None:
        """Give a lease up, fenced; with ``to``, reserve it for that taker (a handoff).

        Raises LeaseLostError when the token is stale (someone else holds it now).
        """
        k = self.keys
        grants = k.grants(to) if to else k.grants(worker_id)
        answer = self._run(
            "release",
            [k.lease(shard_id), k.free, k.owned, k.held(worker_id), grants, k.asks(worker_id), k.load],
            [worker_id, token, shard_id, to, int(self.config.handoff_reserve_s * 1000), k.wake_channel],
        )
        if _s(answer[0]) == "lost":
            raise LeaseLostError(shard_id, token, _s(answer[1]))

    def ask(self, taker: str, owner: str, count: int) -> None:
        """Ask a live ``owner`` to hand ``count`` leases to ``taker`` (0 withdraws the ask)."""
        lifetime_ms = int(self.config.renew_interval_s * 3 * 1000)
        self._run("ask", [self.keys.asks(owner)], [taker, max(count, 0), lifetime_ms])

    def grants(self, worker_id: str) -> list[str]:
        """Shards handed over to ``worker_id`` whose reservation has not run out."""
        with translate_redis_errors():
            t = self.server_time_ms()
            return [_s(x) for x in self.client.zrangebyscore(self.keys.grants(worker_id), t, "+inf")]

    # -- group --------------------------------------------------------------------------------

    def members(self) -> dict[str, int]:
        """Live workers -> leases each renewed at its last heartbeat."""
        with translate_redis_errors():
            t = self.server_time_ms()
            ids = [_s(x) for x in self.client.zrangebyscore(self.keys.members, t, "+inf")]
            loads = self.client.hmget(self.keys.load, ids) if ids else []
        return {w: int(_s(n)) if n is not None else 0 for w, n in zip(ids, loads, strict=True)}

    def report(self, worker_id: str, notes: Mapping[str, Any], *, ttl_s: float) -> None:
        """Replace ``worker_id``'s report: one opaque note per shard it runs, kept ``ttl_s`` seconds.

        Not lease state (nothing is fenced by it): status tools read it with :meth:`reports`.
        """
        fields = [text for k, v in notes.items() for text in (str(k), str(v))]
        self._run("report", [self.keys.report(worker_id)], [int(ttl_s * 1000), *fields])

    def reports(self, worker_ids: Iterable[str]) -> dict[str, dict[str, str]]:
        """The reports of ``worker_ids`` (see :meth:`report`); a worker without one maps to {}."""
        ids = list(worker_ids)
        if not ids:
            return {}
        with translate_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for worker in ids:
                pipe.hgetall(self.keys.report(worker))
            rows = pipe.execute()
        return {w: {_s(a): _s(b) for a, b in row.items()} for w, row in zip(ids, rows, strict=True)}

    def leader(self, worker_id: str, ttl_ms: int) -> Leader:
        """Take or keep the leader lease; the caller leads when ``result.owner == worker_id``."""
        raw = self._run("leader", [self.keys.leader, self.keys.token], [worker_id, ttl_ms])
        return Leader(_s(raw[0]), int(raw[1]), int(raw[2]))

    def resign_leader(self, worker_id: str) -> None:
        self._run("leader", [self.keys.leader, self.keys.token], [worker_id, 0])

    def current_leader(self) -> Leader | None:
        with translate_redis_errors():
            f = self.client.hmget(self.keys.leader, ["owner", "token", "expires_ms"])
        if not f[0] or int(f[2] or 0) <= self.server_time_ms():
            return None
        return Leader(_s(f[0]), int(f[1] or 0), int(f[2] or 0))

    def cleanup(self, limit: int = 100) -> list[str]:
        """Delete up to ``limit`` ended leases that are safe to delete; returns their ids.

        Safe: ended ``ended_retention_s`` ago and every child has progressed past its start (or,
        with no known children, ended ``orphan_retention_s`` ago).  A tombstone keeps a later
        listing from registering the shard again.  Old tombstones are purged.
        """
        k = self.keys
        cfg = self.config
        deleted: list[str] = []
        with translate_redis_errors():
            t = self.server_time_ms()
            self.client.zremrangebyscore(k.tombstones, "-inf", t - int(cfg.tombstone_retention_s * 1000))
            ids = [_s(x) for x in self.client.zrangebyscore(
                k.ended, "-inf", t - int(cfg.ended_retention_s * 1000), start=0, num=limit
            )]
        for shard in ids:
            for _ in range(_RETRIES_ON_CONCURRENT_UPDATE):
                with translate_redis_errors():
                    children_csv = _s(self.client.hget(k.lease(shard), "children") or "")
                children = children_csv.split(",") if children_csv else []
                answer = self._run(
                    "cleanup",
                    [k.lease(shard), k.shards, k.ended, k.tombstones] + [k.lease(c) for c in children],
                    [int(cfg.ended_retention_s * 1000), int(cfg.orphan_retention_s * 1000), shard, children_csv],
                )
                status = _s(answer[0])
                if status == "deleted":
                    deleted.append(shard)
                if status != "retry":
                    break
        return deleted

    def check_connection(self) -> None:
        """Raise CoordinationUnavailable unless Redis answers a PING."""
        with translate_redis_errors():
            self.client.ping()


def list_groups(client: RedisClient, *, limit: int = 1000) -> list[str]:
    """The consumer groups that have used this Redis (at most ``limit``, sorted), found with SCAN (never
    KEYS, which blocks the server) over :data:`~leaser.keys.META_KEY_PATTERN`."""
    found: set[str] = set()
    with translate_redis_errors():
        for key in client.scan_iter(match=META_KEY_PATTERN, count=1000):
            group = group_of_meta_key(_s(key))
            if group is not None:
                found.add(group)
                if len(found) >= limit:
                    break
    return sorted(found)


def connect(
    url: str,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    socket_timeout_s: float = 5.0,
) -> RedisClient:
    """A Redis client for the lease protocol (decoded responses, bounded timeouts, optional TLS).

    ``redis://`` and ``rediss://`` (TLS) name one server (or a cluster's configuration endpoint
    with a proxy in front); ``redis+cluster://`` and ``rediss+cluster://`` name one node of a Redis
    Cluster (more nodes may follow, comma-separated: ``redis+cluster://h1:6379,h2:6379``) and
    return a :class:`redis.cluster.RedisCluster`, which follows the group's slot across failovers.
    A cluster client connects at once: an unreachable cluster raises CoordinationUnavailable.
    ``ca_file``/``cert_file``/``key_file`` apply to ``rediss`` schemes only: the CA to trust
    (else the system's), and a client certificate for mutual TLS.
    """
    if not url.startswith(("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES)):
        raise ConfigError(
            "redis_url",
            "must start with redis://, rediss://, unix://, redis+cluster:// or rediss+cluster://",
            "e.g. redis://host:6379/0",
        )
    kwargs: dict[str, Any] = {
        "decode_responses": True,
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": socket_timeout_s,
        "health_check_interval": 30,
        "retry_on_timeout": False,
    }
    if url.startswith(("rediss://", "rediss+cluster://")):
        if ca_file:
            kwargs["ssl_ca_certs"] = ca_file
        if cert_file:
            kwargs["ssl_certfile"] = cert_file
        if key_file:
            kwargs["ssl_keyfile"] = key_file
    if url.startswith(CLUSTER_SCHEMES):
        return _connect_cluster(url, kwargs)
    try:
        return redis.Redis.from_url(url, **kwargs)
    except ValueError as exc:
        # Never redis-py's text: it may quote part of the password ("... as 'pa'").
        raise ConfigError("redis_url", "the URL does not parse",
                          "percent-encode / ? # @ : in the password (p@ss is written p%40ss)") from exc


def _connect_cluster(url: str, kwargs: dict[str, Any]) -> redis.cluster.RedisCluster:
    scheme, rest = url.split("://", 1)
    plain = "rediss" if scheme.startswith("rediss") else "redis"
    netloc, _, path = rest.partition("/")
    userinfo, _, hosts = netloc.rpartition("@")
    if path.split("?", 1)[0] not in ("", "0"):
        raise ConfigError("redis_url", "a Redis Cluster has only database 0", "drop the /<db> from the URL or use /0")
    nodes: list[redis.cluster.ClusterNode] = []
    for host_port in hosts.split(","):
        host, sep, port = host_port.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError("redis_url", "each cluster node must be host:port", "e.g. redis+cluster://h1:6379,h2:6379")
        nodes.append(redis.cluster.ClusterNode(host.strip("[]"), int(port)))  # type: ignore[no-untyped-call]
    first = f"{plain}://{userinfo + '@' if userinfo else ''}{hosts.split(',')[0]}/0"
    with translate_redis_errors():
        try:
            # from_url parses the credentials and TLS of the first node; startup_nodes adds the rest.
            return redis.cluster.RedisCluster.from_url(
                first, startup_nodes=nodes, **kwargs
            )
        except ValueError as exc:
            raise ConfigError("redis_url", "the URL does not parse",
                              "percent-encode / ? # @ : in the password (p@ss is written p%40ss)") from exc
