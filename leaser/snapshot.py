"""The snapshot's coordination in Redis: segment leases, pages in flight and the snapshot clock.

One snapshot per consumer group.  Its keys live in the group's slot (built by
:meth:`leaser.keys.GroupKeys.namespaced`)::

    snapshot               HASH   status (running|done), segments, run, started_ms, done_ms, items, bytes,
                                  pages, segments_done, note
    snapshot.token         STRING fencing-token counter of segment leases (never decreases)
    snapshot.clock         HASH   field t: the snapshot clock, page tickets (never decreases, never deleted;
                                  a hash, not a string: the worker's ACL grants HGET/HINCRBY, not GET)
    snapshot.free          ZSET   segments neither held nor done -> segment
    snapshot.leases        ZSET   held segments -> lease expiry (Redis ms)
    snapshot.owners        HASH   held segment -> "<worker>|<token>"
    snapshot.checkpoints   HASH   segment -> the next ExclusiveStartKey (JSON), or END
    snapshot.pages         ZSET   segments with a page in flight -> the page's ticket
    snapshot.page_expiry   ZSET   segments with a page in flight -> expiry (= the lease's, Redis ms)
    snapshot.bucket        HASH   the fleet's read-unit bucket: units, ms

Every change is one Lua script (``leaser/lua/snapshot_*.lua``).  The protocol and why it makes an
upserting sink converge: docs/snapshot.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from leaser.keys import GroupKeys
from leaser.scripts import source
from leaser.store import RedisClient, translate_redis_errors

SCRIPTS = ("start", "claim", "renew", "announce", "page_done", "release", "gate", "spend")
END = "END"
"""The checkpoint of a finished segment."""
MAX_SEGMENTS = 1_000_000
"""DynamoDB's limit on TotalSegments."""


@dataclass(frozen=True, slots=True)
class Claimed:
    """A segment lease this worker took: resume the segment's Scan after ``checkpoint`` ('' = start).
    ``segments`` is the snapshot's segment count when it was claimed (the Scan's TotalSegments)."""

    segment: int
    token: int
    checkpoint: str
    segments: int


@dataclass(frozen=True, slots=True)
class SnapshotState:
    """The group's snapshot as status tools show it (``status`` '' = never started)."""

    status: str
    segments: int
    segments_done: int
    segments_held: int
    items: int
    bytes: int
    pages: int
    started_ms: int
    done_ms: int
    run: int


NOTICE_S = 10.0
"""Seconds between a snapshot's start (or restart) and its first page, on Redis time: a consumer that asked the
gate and heard that no snapshot runs may hand over the records it reads for :data:`QUIET_GATE_FRACTION` of
this without asking again (docs/snapshot.md, "The gate's cost")."""
QUIET_GATE_FRACTION = 0.4
"""How long, as a fraction of the notice, a "no snapshot runs" answer of the gate stays good for records read
after the call was sent: well under the notice, so that a worker clock running up to 2x fast, or a Redis
clock running that much slow, still keeps every such record before the first page's announce."""


class SnapshotStore:
    """The snapshot protocol of one group (see the module docstring for the keys).  ``notice_s``: see
    :data:`NOTICE_S` (tests shorten it; every worker and command of a group must use the same)."""

    def __init__(self, client: RedisClient, group: str, *, notice_s: float = NOTICE_S) -> None:
        self.client = client
        self.notice_s = notice_s
        keys = GroupKeys.for_group(group)
        names = ("snapshot", "snapshot.token", "snapshot.clock", "snapshot.free", "snapshot.leases",
                 "snapshot.owners", "snapshot.checkpoints", "snapshot.pages", "snapshot.page_expiry",
                 "snapshot.bucket")
        self.keys = [keys.namespaced(name) for name in names]
        self._scripts = {name: client.register_script(source(f"snapshot_{name}")) for name in SCRIPTS}

    def _run(self, name: str, *args: Any) -> Any:
        with translate_redis_errors():
            return self._scripts[name](keys=self.keys, args=list(args))

    # -- the snapshot -------------------------------------------------------------------------

    def start(self, segments: int, *, restart: bool = False, note: str = "") -> tuple[str, int]:
        """Start the group's snapshot with ``segments`` segments unless one runs or is done (``restart``
        starts a new one regardless).  Returns (started|running|done, the snapshot's segment count)."""
        if not 1 <= segments <= MAX_SEGMENTS:
            raise ValueError(f"segments must be 1..{MAX_SEGMENTS}")
        status, n = self._run("start", segments, "1" if restart else "0", note)
        return str(status), int(n)

    def state(self) -> SnapshotState:
        with translate_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.keys[0])
            pipe.zcard(self.keys[4])
            raw, held = pipe.execute()

        def num(name: str) -> int:
            return int(raw.get(name) or 0)

        return SnapshotState(status=raw.get("status", ""), segments=num("segments"),
                             segments_done=num("segments_done"), segments_held=int(held), items=num("items"),
                             bytes=num("bytes"), pages=num("pages"), started_ms=num("started_ms"),
                             done_ms=num("done_ms"), run=num("run"))

    # -- segment leases -----------------------------------------------------------------------

    def claim(self, worker_id: str, ttl_ms: int) -> Claimed | None:
        """Take a free segment (or one whose lease expired), or None."""
        answer = self._run("claim", worker_id, ttl_ms)
        if not answer:
            return None
        segment, token, checkpoint, segments = answer
        return Claimed(int(segment), int(token), str(checkpoint), int(segments))

    def renew(self, worker_id: str, ttl_ms: int, held: dict[int, int]) -> set[int]:
        """Renew the leases of ``held`` (segment -> token); returns the segments no longer held."""
        if not held:
            return set()
        args: list[Any] = [worker_id, ttl_ms]
        for segment, token in held.items():
            args += [segment, token]
        return {int(s) for s in self._run("renew", *args)}

    def release(self, segment: int, worker_id: str, token: int, *, keep_lease: bool = False) -> bool:
        """Take the segment's page out of flight and (unless ``keep_lease``) free the segment."""
        return bool(self._run("release", segment, worker_id, token, "1" if keep_lease else "0") == "ok")

    # -- pages --------------------------------------------------------------------------------

    def announce(self, segment: int, worker_id: str, token: int) -> int | float | None:
        """Put the segment's next page in flight before it is read: its ticket (an int); or None (the lease
        is lost); or, during the notice after the snapshot's start, the seconds to wait (a float)."""
        answer = self._run("announce", segment, worker_id, token, int(self.notice_s * 1000))
        if answer[0] == "wait":
            return max(int(answer[1]), 1) / 1000.0
        return int(answer[1]) if answer[0] == "ok" else None

    def page_done(self, segment: int, worker_id: str, token: int, ticket: int, next_key: str,
                  items: int, size_bytes: int) -> str:
        """The page was handled in full: checkpoint ``next_key`` ('' = the segment ended).  Returns ok,
        segment_done, snapshot_done or lost."""
        answer = self._run("page_done", segment, worker_id, token, ticket, next_key, items, size_bytes)
        return str(answer[0])

    def gate(self) -> tuple[int, int, bool]:
        """(the clock now, the smallest ticket of a page in flight or 0, whether a snapshot runs).  Records
        read before this call may be handed over once no page with a ticket <= the clock is in flight."""
        clock, smallest, running = self._run("gate")
        return int(clock), int(smallest), bool(int(running))

    def spend(self, units_per_s: float, units: float) -> float:
        """Debit ``units`` read units from the fleet's bucket; seconds to wait before the next read."""
        return int(self._run("spend", repr(float(units_per_s)), repr(float(units)))) / 1000.0
