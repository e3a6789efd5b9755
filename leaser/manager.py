"""LeaseManager: one worker's side of the protocol (the leases it holds, and its heartbeat).

The worker's coordinator thread calls :meth:`LeaseManager.tick` every
``renew_interval_s`` (sooner when woken by a release).  Shard threads call the
fenced writes (:meth:`checkpoint`, :meth:`end_shard`, :meth:`release`) with the
manager's token for their shard.  All methods are thread-safe.

A handoff, seen from both sides::

    taker (below its share)                 owner (above it)
    tick: ask(owner, n)  ------------------>  tick: heartbeat reports the ask
                                              -> TickResult.give [(shard, taker)]
                                              worker stops the shard after its batch,
                                              checkpoints, then release(shard, to=taker)
    poll_grants(): acquire the reserved  <--  (lease reserved for the taker; wake published)
    shard and resume after the checkpoint

If the owner has not handed over within ``handoff_timeout_s``, the taker takes
leases from it by force; the new token fences the old owner's writes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from leaser.balancer import plan
from leaser.errors import LeaseLostError
from leaser.lease import Acquired
from leaser.store import Heartbeat, LeaseStore


@dataclass(slots=True)
class TickResult:
    """What changed at one heartbeat, for the worker to act on."""

    heartbeat: Heartbeat
    gained: list[Acquired] = field(default_factory=list)
    lost: dict[str, str] = field(default_factory=dict)
    """Leases lost at this heartbeat: shard id -> reason.  Stop those shards at once."""
    give: list[tuple[str, str]] = field(default_factory=list)
    """(shard, taker): finish the batch, checkpoint, then ``release(shard, to=taker)``."""
    is_leader: bool = False
    group_reset: bool = False
    """Redis lost the group's state (restarted empty): the group starts over."""


class LeaseManager:
    def __init__(
        self, store: LeaseStore, worker_id: str, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.config = store.config
        self._clock = clock
        self._lock = threading.RLock()
        self._held: dict[str, Acquired] = {}
        self._giving: dict[str, str] = {}
        self._asked: dict[str, float] = {}
        self._leaving = False
        self._created_ms = 0
        self._joined = False
        self._renewed_at = clock()

    # -- what the worker holds ------------------------------------------------------------------

    def held(self) -> dict[str, Acquired]:
        with self._lock:
            return dict(self._held)

    def token(self, shard_id: str) -> int:
        """The caller's token for ``shard_id``; raises LeaseLostError if it no longer holds it."""
        with self._lock:
            acquired = self._held.get(shard_id)
        if acquired is None:
            raise LeaseLostError(shard_id, 0, "not held by this worker")
        return acquired.token

    def _forget(self, shard_id: str) -> None:
        with self._lock:
            self._held.pop(shard_id, None)
            self._giving.pop(shard_id, None)

    @property
    def waiting_for_handoff(self) -> bool:
        """True while this worker has asks out: poll grants often so handoffs pause shards briefly."""
        with self._lock:
            return bool(self._asked)

    def renewal_age_s(self) -> float:
        """Seconds since the last heartbeat that renewed this worker's leases was sent.

        Redis time is the authority on expiry; this local measure only lets a worker stop
        handing records to its handler as soon as it *may* have lost its leases (for example
        after the process was paused), before Redis can tell it so.
        """
        return self._clock() - self._renewed_at

    # -- fenced writes ----------------------------------------------------------------------------

    def checkpoint(self, shard_id: str, sequence_number: str) -> bool:
        """Checkpoint, fenced by this worker's token; LeaseLostError forgets the lease."""
        token = self.token(shard_id)
        try:
            return self.store.checkpoint(self.worker_id, shard_id, token, sequence_number)
        except LeaseLostError:
            self._forget(shard_id)
            raise

    def end_shard(self, shard_id: str) -> list[str]:
        """Checkpoint SHARD_END and let go of the lease; returns the children now acquirable."""
        token = self.token(shard_id)
        try:
            return self.store.end_shard(self.worker_id, shard_id, token)
        finally:
            self._forget(shard_id)

    def release(self, shard_id: str, *, to: str = "") -> None:
        """Release after the final checkpoint; with ``to``, hand it to that worker."""
        try:
            token = self.token(shard_id)
        except LeaseLostError:
            return
        try:
            self.store.release(self.worker_id, shard_id, token, to=to)
        except LeaseLostError:
            pass
        finally:
            self._forget(shard_id)

    # -- the heartbeat ----------------------------------------------------------------------------

    def leave(self) -> None:
        """Stop counting as a member: later ticks renew what is left but take nothing."""
        with self._lock:
            self._leaving = True

    def tick(self) -> TickResult:
        """One heartbeat: renew, learn what was lost, then balance (take, ask, give)."""
        with self._lock:
            tokens = {s: a.token for s, a in self._held.items()}
            leaving = self._leaving
        sent_at = self._clock()
        hb = self.store.heartbeat(self.worker_id, tokens, leaving=leaving)
        self._renewed_at = sent_at
        result = TickResult(heartbeat=hb, lost=dict(hb.lost), is_leader=hb.leader == self.worker_id)
        for shard in hb.lost:
            self._forget(shard)
        if self._created_ms and hb.created_ms != self._created_ms:
            result.group_reset = True
        self._created_ms = hb.created_ms
        if leaving:
            return result
        if not self._joined:
            # The first heartbeat only joins: workers started together see each other before
            # anyone takes leases, instead of the first one taking everything.
            self._joined = True
            return result

        if hb.grants:
            result.gained += self._acquire(hb.grants)
        with self._lock:
            holding = len(self._held) - len(self._giving)
            pending: dict[str, int] = {}
            for taker in self._giving.values():
                pending[taker] = pending.get(taker, 0) + 1
        asks_to_me = {t: n - pending.get(t, 0) for t, n in hb.asks.items() if n - pending.get(t, 0) > 0}
        moves = plan(
            self.worker_id, holding, hb.members, hb.ready, hb.free + hb.expired, asks_to_me, self.config.max_leases
        )
        if moves.take:
            gained = self._acquire(self.store.candidates(moves.take, moves.take_offset))
            if len(gained) < moves.take:
                # Raced with another worker for some of them: try the rest of the pool once more.
                gained += self._acquire(self.store.candidates(moves.take - len(gained)))
            result.gained += gained
        self._send_asks(moves.asks, result)
        result.give = self._choose_gives(moves.gives)
        return result

    def poll_grants(self) -> list[Acquired]:
        """Acquire leases handed over to this worker (cheap: call often while asks are out)."""
        grants = self.store.grants(self.worker_id)
        return self._acquire(grants) if grants else []

    def _acquire(self, shard_ids: list[str], take_from: str = "") -> list[Acquired]:
        with self._lock:
            wanted = [s for s in shard_ids if s not in self._held]
        acquired, _refused = self.store.acquire(self.worker_id, wanted, take_from=take_from)
        with self._lock:
            for a in acquired:
                self._held[a.shard_id] = a
        return acquired

    def _send_asks(self, asks: dict[str, int], result: TickResult) -> None:
        now = self._clock()
        with self._lock:
            withdrawn = [owner for owner in self._asked if owner not in asks]
            for owner in withdrawn:
                del self._asked[owner]
        for owner in withdrawn:
            self.store.ask(self.worker_id, owner, 0)
        for owner, count in asks.items():
            with self._lock:
                first = self._asked.setdefault(owner, now)
            if now - first >= self.config.handoff_timeout_s:
                taken = self.store.held_by(owner)[:count]
                result.gained += self._acquire(taken, take_from=owner)
                with self._lock:
                    self._asked[owner] = now
            else:
                self.store.ask(self.worker_id, owner, count)

    def _choose_gives(self, gives: dict[str, int]) -> list[tuple[str, str]]:
        """Pick which leases go to each taker: the most recently acquired ones first."""
        out: list[tuple[str, str]] = []
        with self._lock:
            spare = [s for s in reversed(self._held) if s not in self._giving]
            for taker, count in gives.items():
                for shard in spare[:count]:
                    self._giving[shard] = taker
                    out.append((shard, taker))
                spare = spare[count:]
        return out
