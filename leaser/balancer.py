"""Fair share: how many leases a worker should take, ask for, or give away.  Pure functions.

With ``T`` leases ready and ``W`` live workers, every worker ends up holding
``floor = T // W`` or ``ceil = floor + 1`` of them, so ``max - min <= 1``.

Every worker computes the same *targets* from the same reported loads: ``T mod W``
workers are meant to hold ``ceil``, the others ``floor``.  The ``ceil`` targets go
first to the workers holding ``ceil`` or more, then to the others, each group in id
order.  This keeps leases where they are: a balanced fleet has exactly ``T mod W``
workers at ``ceil``, so its targets equal its loads and nothing moves (no
oscillation).  It also keeps targets still while leases move: a worker moving toward
a ``ceil`` target stays in its group, and one moving toward a ``floor`` target never
rises above ``floor``, so no one overtakes it (ranking by raw load would let a taker
overtake and swap targets mid-way, which costs rounds).

* Every worker fills the free or expired leases in id order in its plan; a worker
  below its target takes only its own part (so parts do not overlap, and what it
  takes plus what it asks for is exactly its deficit).
* Deficits the free pool cannot fill are matched, in id order, with the excess
  of workers above their targets; each taker asks its matched owners, so askers
  spread over owners instead of herding onto the most loaded one.
* An asked owner gives, in total, no more than it holds above its own target.

Moving a matched amount (a take of a part, a handover of a matched pair) leaves the
targets, the other parts and the other matched pairs as they were, so workers that
plan at different moments still agree.  Hence the bound stated in
``docs/lease-protocol.md``: at most two rounds with moves (take and ask, then give).

Loads are as reported at each worker's last heartbeat (kept current by acquire
and release); a giver checks its own live count, so stale loads cannot make it
give too much.  When views differ for a moment, the next heartbeat repairs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Share:
    floor: int
    ceil: int


@dataclass(frozen=True, slots=True)
class Plan:
    take: int = 0
    """Free or expired leases to acquire now."""
    take_offset: int = 0
    """Where this worker's part of the takeable pool starts (workers fill it in id order), so
    workers woken together try different leases instead of racing for the oldest one."""
    asks: dict[str, int] = field(default_factory=dict)
    """Owner -> leases to ask it for."""
    gives: dict[str, int] = field(default_factory=dict)
    """Taker -> leases to hand over to it."""


def fair_share(ready: int, workers: int, max_leases: int = 0) -> Share:
    """The fair share of ``ready`` leases among ``workers`` (capped by ``max_leases`` if > 0)."""
    workers = max(workers, 1)
    floor = ready // workers
    ceil = floor + (1 if ready % workers else 0)
    if max_leases > 0:
        floor, ceil = min(floor, max_leases), min(ceil, max_leases)
    return Share(floor, ceil)


def targets(loads: dict[str, int], ready: int, max_leases: int = 0) -> dict[str, int]:
    """How many leases each worker is meant to hold: ``ceil`` for ``T mod W`` of them, else ``floor``.

    ``ceil`` goes first to workers holding ``ceil`` or more, then to the others, each group by id.
    """
    share = fair_share(ready, len(loads), max_leases)
    extra = ready - share.floor * len(loads) if share.ceil > share.floor else 0
    order = sorted(loads, key=lambda w: (loads[w] < share.ceil, w))
    return {w: share.ceil if i < extra else share.floor for i, w in enumerate(order)}


def plan(
    me: str,
    held: int,
    members: dict[str, int],
    ready: int,
    takeable: int,
    asks_to_me: dict[str, int],
    max_leases: int = 0,
) -> Plan:
    """Decide one worker's moves for this heartbeat.

    ``held`` is what the worker holds now; ``members`` are the live workers' reported loads
    (the caller's own entry is replaced by ``held``); ``takeable`` counts free and expired leases.
    """
    loads = dict(members)
    loads[me] = held
    target = targets(loads, ready, max_leases)

    # Deficits the free pool fills first (in id order), then the rest matched with excesses.
    # This worker takes only its own part of the pool: taking more would overlap another
    # worker's part, and on top of the asks for the rest it would overshoot the target.
    pool = takeable
    take = offset = 0
    deficits: list[tuple[str, int]] = []
    for w in sorted(loads):
        need = target[w] - loads[w]
        if need > 0:
            filled = min(need, pool)
            if w == me:
                take, offset = filled, takeable - pool
            pool -= filled
            if need > filled:
                deficits.append((w, need - filled))
    excesses = [(w, loads[w] - target[w]) for w in sorted(loads) if loads[w] > target[w]]
    asks: dict[str, int] = {}
    i = 0
    for taker, need in deficits:
        while need > 0 and i < len(excesses):
            owner, spare = excesses[i]
            n = min(need, spare)
            if taker == me:
                asks[owner] = asks.get(owner, 0) + n
            need -= n
            spare -= n
            if spare == 0:
                i += 1
            else:
                excesses[i] = (owner, spare)

    gives: dict[str, int] = {}
    spare = held - target[me]
    for taker, count in sorted(asks_to_me.items()):
        if spare <= 0:
            break
        if taker not in loads or loads[taker] >= target[taker]:
            continue  # a stale ask: the taker is gone or already has its share
        n = min(count, spare, target[taker] - loads[taker])
        gives[taker] = n
        spare -= n
    return Plan(take=take, take_offset=offset if take else 0, asks=asks, gives=gives)
