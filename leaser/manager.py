"""LeaseManager: one worker's side of the protocol (the leases it holds, and its heartbeat).

The worker's coordinator thread calls :meth:`LeaseManager.tick` every
``renew_interval_s`` (sooner when woken by a release).  Shard threads call the
fenced writes (:meth:`checkpoint`, :meth:`end_shard`, :meth:`release`) with the
token of the acquisition they serve, and ask :meth:`may_act` right before every
handler call.  All methods are thread-safe.

A handoff, seen from both sides::

    taker (below its share)                 owner (above it)
    tick: ask(owner, n)  ------------------>  tick: heartbeat reports the ask
                                              -> TickResult.give [(shard, taker)]
                                              worker stops the shard after its batch,
                                              checkpoints, then release(shard, to=taker)
    poll_grants(): acquire the reserved  <--  (lease reserved for the taker; wake published)
    shard and resume after the checkpoint

The owner marks each lease it gives as offered to the taker (a fenced write) before it
stops the shard.  If the owner has not handed over within ``handoff_timeout_s``, the
taker takes exactly the leases offered to it by force; the new token fences the old
owner's writes, and the owner's late release is refused by the same token, so a give
is settled one way only.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from leaser.balancer import plan
from leaser.errors import LeaseLostError, RetryableError
from leaser.lease import Acquired
from leaser.store import Heartbeat, LeaseStore

log = logging.getLogger("shardlease.leaser")


def boot_clock() -> float:
    """Seconds since boot, counting through a system suspend (CLOCK_BOOTTIME, Linux); elsewhere
    ``time.monotonic()``, which may stop while the machine sleeps."""
    return time.clock_gettime(_BOOT_CLOCK)


_BOOT_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


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
    error: str = ""
    """Why the tick stopped part-way ('' if it completed).  What it did before that is in the other
    fields all the same: leases in ``gained`` are held and renewed from now on, so act on them."""


class LeaseManager:
    def __init__(
        self, store: LeaseStore, worker_id: str, *, clock: Callable[[], float] = boot_clock
    ) -> None:
        """``clock`` is seconds that only move forward and keep counting while the process is paused
        or the machine suspended (:func:`boot_clock`), so a worker sees on waking that its leases may
        have expired."""
        self.store = store
        self.worker_id = worker_id
        self.config = store.config
        self._clock = clock
        self._lock = threading.RLock()
        self._held: dict[str, Acquired] = {}
        self._giving: dict[str, str] = {}
        self._asked: dict[str, float] = {}
        self._leaving = False
        self._left_to_expire = False
        """Set by :meth:`leave_leases_to_expire` (the process exits at once): :meth:`release` and
        :meth:`end_shard` write nothing."""
        self._created_ms = 0
        self._joined = False
        self._renewed_at = clock()
        self._uncertain: set[str] = set()
        """Shards whose acquire call failed: acquired or not, the next heartbeat tells (``unclaimed``)."""
        self._uncertain_offers: dict[str, int] = {}
        """Offers whose call failed (shard -> token): withdrawn at the next tick unless being given."""
        self._reported_foreign: set[str] = set()

    # -- what the worker holds ------------------------------------------------------------------

    def held(self) -> dict[str, Acquired]:
        with self._lock:
            return dict(self._held)

    def giving(self) -> dict[str, str]:
        """Leases being handed over: shard id -> taker (offered; released once the batch is done)."""
        with self._lock:
            return dict(self._giving)

    def token(self, shard_id: str) -> int:
        """The caller's token for ``shard_id``; raises LeaseLostError if it no longer holds it."""
        with self._lock:
            acquired = self._held.get(shard_id)
        if acquired is None:
            raise LeaseLostError(shard_id, 0, "not held by this worker")
        return acquired.token

    def _token_for(self, shard_id: str, token: int | None) -> int:
        """``token`` if given (a consumer's own), else the current one; LeaseLostError if not held."""
        held = self.token(shard_id)
        return held if token is None else token

    def _forget(self, shard_id: str, token: int | None = None) -> None:
        """Forget a lease; with ``token``, only if it is still the held acquisition (a newer one stays)."""
        with self._lock:
            acquired = self._held.get(shard_id)
            if acquired is None or (token is not None and acquired.token != token):
                return
            del self._held[shard_id]
            self._giving.pop(shard_id, None)

    @property
    def safety_margin_s(self) -> float:
        """Seconds kept between the last renewal and the lease's expiry: a worker stops acting on a
        lease once its last renewal is older than ``lease_ttl_s - safety_margin_s``."""
        return min(1.0, 0.2 * self.config.lease_ttl_s)

    def why_not_held(self, shard_id: str, token: int) -> str | None:
        """Why this worker no longer holds the lease with ``token`` (lost, ended, released, or acquired
        again with a newer token), or None while it does."""
        with self._lock:
            acquired = self._held.get(shard_id)
        if acquired is None:
            return "lease not held by this worker"
        if acquired.token != token:
            return f"token {token} superseded by {acquired.token}"
        return None

    def may_act(self, shard_id: str, token: int) -> str | None:
        """Why the holder of ``token`` must not call its handler or checkpoint now, or None if it may.

        It may while this worker still holds the lease with that very token (not a newer
        acquisition of the same shard) and its last renewal was sent less than
        ``lease_ttl_s - safety_margin_s`` ago on the monotonic clock.  Check it immediately before
        acting: a process paused in between (GC, SIGSTOP, a frozen VM) finds out here on waking.
        """
        why = self.why_not_held(shard_id, token)
        if why is not None:
            return why
        age = self.renewal_age_s()
        limit = self.config.lease_ttl_s - self.safety_margin_s
        if age >= limit:
            return f"last renewal {age:.1f} s ago (limit {limit:.1f} s): the lease may have expired"
        return None

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

    def checkpoint(self, shard_id: str, sequence_number: str, *, token: int | None = None) -> bool:
        """Checkpoint, fenced by ``token`` (the caller's acquisition; default: the current one).

        LeaseLostError forgets that acquisition; CoordinationUnavailable changes nothing here.
        """
        token = self._token_for(shard_id, token)
        try:
            return self.store.checkpoint(self.worker_id, shard_id, token, sequence_number)
        except LeaseLostError:
            self._forget(shard_id, token)
            raise

    def end_shard(self, shard_id: str, *, token: int | None = None) -> list[str] | None:
        """Checkpoint SHARD_END and let go of the lease; returns the children now acquirable, or None when
        nothing was written because the leases are left to expire (:meth:`leave_leases_to_expire`): ending
        the shard lets the children start elsewhere at once, which must wait until the process is gone
        too.  The lease then expires; its next owner reads to the end again and ends the shard.

        On CoordinationUnavailable the lease stays held (and renewed): call again.  A call that ran
        in Redis but whose reply was lost answers ``[]`` when repeated.
        """
        token = self._token_for(shard_id, token)
        if self._left_to_expire:  # checked right before the write, as in release()
            return None
        try:
            children = self.store.end_shard(self.worker_id, shard_id, token)
        except LeaseLostError:
            self._forget(shard_id, token)
            raise
        self._forget(shard_id, token)
        return children

    def begin(self, shard_id: str, *, token: int) -> tuple[int, bool]:
        """Record when reading the shard from its start position began (first call wins); see
        :meth:`LeaseStore.begin`.  LeaseLostError forgets that acquisition."""
        try:
            return self.store.begin(self.worker_id, shard_id, token)
        except LeaseLostError:
            self._forget(shard_id, token)
            raise

    def release(self, shard_id: str, *, to: str = "", token: int | None = None) -> bool:
        """Release after the final checkpoint; with ``to``, hand it to that worker.  False when nothing
        was written because the leases are left to expire (:meth:`leave_leases_to_expire`), else True.

        A lease no longer held is nothing to release.  On CoordinationUnavailable the lease stays
        held (and renewed): call again, or let it expire.
        """
        if self._left_to_expire:  # checked right before the write: the process may be exiting meanwhile
            return False
        try:
            token = self._token_for(shard_id, token)
        except LeaseLostError:
            return True
        with contextlib.suppress(LeaseLostError):  # someone else holds it: nothing left to release
            self.store.release(self.worker_id, shard_id, token, to=to)
        self._forget(shard_id, token)
        return True

    def leave_leases_to_expire(self) -> None:
        """The process is about to exit at once: from now on :meth:`release` and :meth:`end_shard` write
        nothing, so every lease still held expires ``lease_ttl_s`` after its last renewal (and no shard's
        children become acquirable).  Whatever the process started and cannot stop (a thread a handler or a
        hook started) may run until the exit; no next owner starts before then.

        Safe to call from a signal handler (it takes no lock); cannot be undone.  A release or shard end already
        under way in another thread still completes: it began before this call.
        """
        self._left_to_expire = True

    # -- the heartbeat ----------------------------------------------------------------------------

    def leave(self) -> None:
        """Stop counting as a member: later ticks renew what is left but take nothing."""
        with self._lock:
            self._leaving = True

    def tick(self) -> TickResult:
        """One heartbeat: renew, learn what was lost, then balance (take, ask, give).

        Raises CoordinationUnavailable only when the heartbeat itself failed (nothing changed).
        A later call that fails leaves the result partial, with ``error`` set: every lease in
        ``gained`` is held all the same, and ``give`` lists the offers made.
        """
        with self._lock:
            tokens = {s: a.token for s, a in self._held.items()}
            leaving = self._leaving
        sent_at = self._clock()
        hb = self.store.heartbeat(self.worker_id, tokens, leaving=leaving)
        with self._lock:
            # Forget the lost leases before the renewal time moves on, so no check in between
            # finds a lost lease freshly renewed.
            for shard, token in tokens.items():
                if shard in hb.lost:
                    self._forget(shard, token)
            self._renewed_at = sent_at
        result = TickResult(heartbeat=hb, lost=dict(hb.lost), is_leader=hb.leader == self.worker_id)
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
        try:
            self._balance(hb, result)
        except RetryableError as exc:
            result.error = str(exc)
        return result

    def _balance(self, hb: Heartbeat, result: TickResult) -> None:
        """The tick after the heartbeat; adds to ``result`` as it goes, so a failure keeps what was done."""
        self._reclaim(hb.unclaimed, result)
        self._withdraw_uncertain_offers()
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
            result.gained += gained
            if len(gained) < moves.take:
                # Raced with another worker for some of them: try the rest of the pool once more.
                result.gained += self._acquire(self.store.candidates(moves.take - len(gained)))
        self._send_asks(moves.asks, result)
        self._choose_gives(moves.gives, result)

    def poll_grants(self) -> list[Acquired]:
        """Acquire leases handed over to this worker (cheap: call often while asks are out)."""
        grants = self.store.grants(self.worker_id)
        return self._acquire(grants) if grants else []

    def _reclaim(self, unclaimed: list[str], result: TickResult) -> None:
        """Acquire again (new token) the leases this worker acquired without seeing the reply.

        Only shards whose acquire call failed are reclaimed: others in the held index belong to
        another process using this worker id (a misconfiguration, reported once), never taken from it.
        """
        with self._lock:
            uncertain, self._uncertain = self._uncertain, set()
        mine = [s for s in unclaimed if s in uncertain]
        foreign = sorted(set(unclaimed) - uncertain - self._reported_foreign)
        if foreign:
            self._reported_foreign.update(foreign)
            log.warning("worker id %r holds leases this process did not acquire (%s): a previous process with this "
                        "id (restarted) or another process using the same --worker-id; they are left to expire",
                        self.worker_id, ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else ""))
        if mine:
            result.gained += self._acquire(mine)

    def _withdraw_uncertain_offers(self) -> None:
        """Withdraw offers whose call failed (it may have run): an offer left standing for a lease this
        worker goes on reading would let the taker take it by force while its handler runs."""
        with self._lock:
            pending, self._uncertain_offers = self._uncertain_offers, {}
            pending = {s: t for s, t in pending.items()
                       if s not in self._giving and s in self._held and self._held[s].token == t}
        for shard, token in pending.items():
            try:
                self.store.offer(self.worker_id, shard, token, "")
            except LeaseLostError:
                continue
            except RetryableError:
                with self._lock:
                    self._uncertain_offers[shard] = token
                raise

    def _acquire(self, shard_ids: list[str], take_from: str = "") -> list[Acquired]:
        with self._lock:
            wanted = [s for s in shard_ids if s not in self._held]
        if not wanted:
            return []
        try:
            acquired, _refused = self.store.acquire(self.worker_id, wanted, take_from=take_from)
        except RetryableError:
            # The scripts may have run with the reply lost: the next heartbeat names the ones that did.
            with self._lock:
                self._uncertain.update(wanted)
            raise
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
            self.store.ask(self.worker_id, owner, count)
            if now - first >= self.config.handoff_timeout_s:
                # The owner had its time: take by force exactly what it offered to this worker, once
                # the offer itself is handoff_timeout_s old (acquire.lua checks, on Redis time); nothing
                # if it offered nothing (it does not see itself above its share yet).
                offered = self.store.offered(owner, self.worker_id)[:count]
                taken = self._acquire(offered, take_from=owner)
                result.gained += taken
                if taken:
                    with self._lock:
                        self._asked[owner] = now

    def _choose_gives(self, gives: dict[str, int], result: TickResult) -> None:
        """Offer leases to each taker, the most recently acquired first, and add them to ``result.give``.

        Each offer is marked in Redis (fenced) before the worker stops the shard, so a forced
        take-over after ``handoff_timeout_s`` takes exactly these leases.
        """
        with self._lock:
            spare = [(s, a.token) for s, a in reversed(self._held.items()) if s not in self._giving]
        for taker, count in gives.items():
            chosen, spare = spare[:count], spare[count:]
            for shard, token in chosen:
                try:
                    self.store.offer(self.worker_id, shard, token, taker)
                except LeaseLostError:
                    self._forget(shard, token)
                    continue
                except RetryableError:
                    with self._lock:
                        self._uncertain_offers[shard] = token
                    raise
                with self._lock:
                    if shard not in self._held or self._held[shard].token != token:
                        continue
                    self._giving[shard] = taker
                result.give.append((shard, taker))
