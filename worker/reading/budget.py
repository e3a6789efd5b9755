"""A fleet-wide GetRecords budget (``--max-getrecords-per-second``): one token bucket per worker.

Units: rates in GetRecords calls per second, times in monotonic seconds.  Off (``None`` in the worker)
unless the setting is above 0: then no consumer asks for a token and pacing is worker.polling's alone.

Share: a worker holding ``held`` of the group's ``group_shards`` readable shards (the heartbeat's
``ready``, no extra Redis call) takes ``fleet_rate * held / group_shards`` calls per second, so the whole
fleet makes at most ``fleet_rate`` calls per second on average: less while shards are unowned, and up to
the handed-over shards' share more for at most one heartbeat after a handoff (the taker counts a shard as
soon as it gains it, between heartbeats too; the giver's share shrinks at its next heartbeat).

Bucket: tokens refill at the worker's rate up to ``capacity = max(1, rate * BURST_S)``; one GetRecords
takes one token, so over any ``T`` seconds a worker makes at most ``rate * T + capacity`` calls.

Priority: a consumer asks (:meth:`ReadBudget.request`) before each GetRecords and, when refused, waits the
seconds it is given and asks again (a waiting shard is just a consumer waiting in the scheduler, so a
stop, handoff or shutdown still runs at once).  Requests are served in order of *rank*: when the request
was first made, plus ``quiet_yield_s`` for a quiet shard (no records for ``--quiet-after``).  A request is
granted when the tokens cover it and every waiting request ranked before it.  So busy shards go first,
and a quiet shard yields to them for at most ``quiet_yield_s`` (the worker's ``--idle-poll-interval``):
after that, only requests made before its rank are ahead, at most one per shard.  No shard starves: a
request waits at most about ``quiet_yield_s + held / rate`` seconds.

A budget below one call per shard per ``--idle-poll-interval`` (``fleet_rate * ceiling_s <
group_shards``) cannot keep the quiet interval: every shard's interval stretches to about
``held / rate`` seconds (the first record on a quiet shard waits up to that long), busy shards still
first.  A WARNING naming the setting is logged when this worker's share changes to such a rate.

Floor: a worker's rate is never below ``held / MAX_STRETCH_S``: no shard's interval is stretched past
:data:`MAX_STRETCH_S` (300 s, the longest ``--idle-poll-interval``), whatever the budget, so a shard is
always read long before the stream trims its records (24 h) and before its iterator expires (15 min).
Records are not lost to a budget: where the floor applies, the fleet makes more calls than the budget
says, and the WARNING says so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

log = logging.getLogger("shardlease.budget")

MAX_STRETCH_S = 300.0
"""Longest interval the budget may stretch a shard's polls to (seconds; see the module docstring's Floor)."""
BURST_S = 1.0
"""Seconds of calls the bucket holds at most (and at least one call)."""
MIN_WAIT_S = 0.02
"""Least wait handed to a refused request (no busy loop of asks)."""
STALE_S = 2.0
"""A waiting request not asked again this long after the wait it was given is dropped (its consumer went
away without :meth:`ReadBudget.forget`)."""


@dataclass(slots=True)
class _Waiting:
    rank: float
    retry_at: float


class ReadBudget:
    """One worker's share of the fleet's GetRecords budget; thread-safe (asked from the step threads)."""

    def __init__(self, fleet_rate: float, *, quiet_yield_s: float, ceiling_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if fleet_rate <= 0:
            raise ValueError("fleet_rate must be > 0 (no budget: no ReadBudget)")
        self.fleet_rate = fleet_rate
        self.quiet_yield_s = quiet_yield_s
        self.ceiling_s = ceiling_s
        self._clock = clock
        self._lock = threading.Lock()
        self.rate = 0.0
        """This worker's calls per second (0 until :meth:`set_share` gives it shards)."""
        self._tokens = 0.0
        self._updated = clock()
        self._waiting: dict[Hashable, _Waiting] = {}
        self._share: tuple[int, int] = (0, 0)
        self.granted = 0
        """Tokens handed out so far (for tests and metrics)."""

    @property
    def capacity(self) -> float:
        return max(1.0, self.rate * BURST_S)

    def set_share(self, held: int, group_shards: int) -> None:
        """This worker holds ``held`` of the group's ``group_shards`` readable shards (at each heartbeat)."""
        total = max(group_shards, held, 1)
        with self._lock:
            self._refill(self._clock())
            first = self.rate == 0
            self.rate = max(self.fleet_rate * held / total, held / MAX_STRETCH_S)
            floored = self.rate > self.fleet_rate * held / total
            self._tokens = min(self._tokens if not first else self.capacity, self.capacity)
            changed = (held, total) != self._share
            self._share = (held, total)
        if changed and floored:
            log.warning(
                "--max-getrecords-per-second %g would give this worker %.3g GetRecords calls/s for its %d of the "
                "group's %d shards: one call per shard every %.0f s; it makes %.3g calls/s instead so that no shard "
                "waits more than %g s between polls (a stream trims records after 24 h, an iterator expires after "
                "15 min): raise --max-getrecords-per-second to at least %g to keep within it",
                self.fleet_rate, self.fleet_rate * held / total, held, total, total / self.fleet_rate, self.rate,
                MAX_STRETCH_S, total / MAX_STRETCH_S)
        elif changed and held and self.rate * self.ceiling_s < held:
            log.warning(
                "--max-getrecords-per-second %g gives this worker %.3g GetRecords calls/s for its %d of the group's "
                "%d shards: less than one call per shard per --idle-poll-interval (%g s); each shard is polled about "
                "every %.0f s instead (busy shards first): raise --max-getrecords-per-second to at least %g to keep "
                "the interval", self.fleet_rate, self.rate, held, total, self.ceiling_s, held / self.rate,
                total / self.ceiling_s)

    def request(self, key: Hashable, *, busy: bool) -> float:
        """0.0: a token was taken, call GetRecords now.  Else the seconds to wait before asking again (the
        request keeps its place in line).  ``key``: one per consumer; ``busy``: records within --quiet-after."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            waiting = self._waiting.get(key)
            rank = now if busy else now + self.quiet_yield_s
            if waiting is None:
                waiting = self._waiting[key] = _Waiting(rank, now)
            else:
                waiting.rank = min(waiting.rank, rank)  # a quiet shard that got busy moves up, never down
            stale = [k for k, w in self._waiting.items() if now > w.retry_at + STALE_S]
            for k in stale:
                del self._waiting[k]
            self._waiting[key] = waiting
            ahead = sum(1 for k, w in self._waiting.items() if k != key and w.rank < waiting.rank)
            if self.rate > 0 and self._tokens - ahead >= 1.0:
                self._tokens -= 1.0
                del self._waiting[key]
                self.granted += 1
                return 0.0
            wait = (ahead + 1.0 - self._tokens) / self.rate if self.rate > 0 else 1.0
            wait = max(wait, MIN_WAIT_S)
            waiting.retry_at = now + wait
            return wait

    def forget(self, key: Hashable) -> None:
        """The consumer of ``key`` is done: it no longer waits in line."""
        with self._lock:
            self._waiting.pop(key, None)

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
