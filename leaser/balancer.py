"""Fair share: how many leases a worker should take, ask for, or give away.  Pure functions.

With ``T`` leases ready and ``W`` live workers, every worker ends up holding
``floor = T // W`` or ``ceil = floor + 1`` of them (``max - min <= 1``):

* a worker below ``ceil`` takes free or expired leases, up to ``ceil``;
* a worker below ``floor`` with nothing left to take asks the most loaded
  workers above ``floor`` for the difference; a worker below ``ceil`` asks only
  workers above ``ceil``;
* a worker that is asked gives, in total, no more than it holds above ``floor``.

No worker at or above ``floor`` ever asks, and nobody gives below ``floor``, so
a stable assignment is never disturbed: no oscillation.  If some worker is above
``ceil`` then some worker is below ``ceil`` (the sum is ``T``) and asks it; if
some worker is below ``floor``, some worker is above ``floor`` and is asked; so
every imbalance is repaired.  Loads are as reported at each worker's last
heartbeat; a giver checks its own current count, so stale loads cannot make it
give too much.
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
    share = fair_share(ready, len(loads), max_leases)
    take = min(max(share.ceil - held, 0), takeable)
    after = held + take

    asks: dict[str, int] = {}
    others = sorted(((n, w) for w, n in loads.items() if w != me), reverse=True)
    if after < share.floor:
        need = share.floor - after
        for load, owner in others:
            if need <= 0 or load <= share.floor:
                break
            n = min(need, load - share.floor)
            asks[owner] = n
            need -= n
    elif after < share.ceil:
        need = share.ceil - after
        for load, owner in others:
            if need <= 0 or load <= share.ceil:
                break
            n = min(need, load - share.ceil)
            asks[owner] = n
            need -= n

    gives: dict[str, int] = {}
    spare = held - share.floor
    for taker, count in sorted(asks_to_me.items(), key=lambda kv: (loads.get(kv[0], 0), kv[0])):
        if spare <= 0:
            break
        if loads.get(taker, held) >= held - 1:
            continue  # a stale ask: moving a lease would not improve the balance
        n = min(count, spare)
        gives[taker] = n
        spare -= n
    return Plan(take=take, asks=asks, gives=gives)
