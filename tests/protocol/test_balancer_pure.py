"""The fair-share planner as a pure function: convergence from any start, and stability."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from leaser import fair_share, plan


def simulate(loads: dict[str, int], free: int, rounds: int = 50) -> tuple[dict[str, int], int]:
    """Apply plans in rounds, asks answered in the next round; returns final loads and rounds used."""
    ready = sum(loads.values()) + free
    pending_asks: dict[str, dict[str, int]] = {w: {} for w in loads}
    for r in range(rounds):
        snapshot = dict(loads)
        new_asks: dict[str, dict[str, int]] = {w: {} for w in loads}
        changed = False
        for w in sorted(loads):
            p = plan(w, loads[w], snapshot, ready, free, pending_asks[w])
            took = min(p.take, free)
            loads[w] += took
            free -= took
            for taker, n in p.gives.items():
                loads[w] -= n
                loads[taker] += n
            for owner, n in p.asks.items():
                new_asks[owner][w] = n
            changed |= bool(took or p.gives or p.asks)
        pending_asks = new_asks
        if not changed:
            return loads, r
    return loads, rounds


@settings(max_examples=300, deadline=None)
@given(
    loads=st.lists(st.integers(0, 40), min_size=1, max_size=12),
    free=st.integers(0, 60),
)
def test_any_start_converges_to_max_minus_min_at_most_one(loads: list[int], free: int) -> None:
    start = {f"w{i}": n for i, n in enumerate(loads)}
    final, rounds = simulate(start, free)
    assert sum(final.values()) == sum(loads) + free
    assert max(final.values()) - min(final.values()) <= 1
    assert rounds < 10


@given(ready=st.integers(0, 10_000), workers=st.integers(1, 200))
def test_fair_share_bounds(ready: int, workers: int) -> None:
    share = fair_share(ready, workers)
    assert share.floor * workers <= ready <= share.ceil * workers
    assert share.ceil - share.floor <= 1


def test_a_worker_at_its_floor_never_asks() -> None:
    p = plan("w1", 6, {"w1": 6, "w2": 7, "w3": 7}, 20, 0, {})
    assert p.take == 0 and p.asks == {} and p.gives == {}


def test_a_giver_gives_only_its_excess_and_only_what_takers_lack() -> None:
    # 7 leases over 4 workers: targets 2, 2, 2, 1 (the most loaded keep the extra ones).
    p = plan("w1", 7, {"w1": 7, "w2": 0, "w3": 0, "w4": 0}, 7, 0, {"w2": 5, "w3": 5, "w4": 5})
    assert p.gives == {"w2": 2, "w3": 2, "w4": 1}


def test_asks_spread_over_owners_instead_of_herding() -> None:
    members = {"a": 10, "b": 10, "c": 0, "d": 0}
    asks = {w: plan(w, members[w], members, 20, 0, {}).asks for w in ("c", "d")}
    assert asks == {"c": {"a": 5}, "d": {"b": 5}}


def test_workers_woken_together_take_different_parts_of_the_free_pool() -> None:
    # w1 left: its 2 leases are free; w2 and w3 each need one of them.
    members = {"w2": 2, "w3": 2}
    p2 = plan("w2", 2, members, 6, 2, {})
    p3 = plan("w3", 2, members, 6, 2, {})
    assert (p2.take, p2.take_offset) == (1, 0)
    assert (p3.take, p3.take_offset) == (1, 1)
