"""The GetRecords budget (worker.reading.budget) on a fake clock: the share, the bucket, the priority."""

from __future__ import annotations

import heapq
import itertools
import logging

import pytest

from worker.reading.budget import MAX_STRETCH_S, MIN_WAIT_S, STALE_S, ReadBudget

CEILING_S = 4.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def budget(fleet_rate: float, held: int, group_shards: int) -> tuple[ReadBudget, Clock]:
    clock = Clock()
    b = ReadBudget(fleet_rate, quiet_yield_s=CEILING_S, ceiling_s=CEILING_S, clock=clock)
    b.set_share(held, group_shards)
    return b, clock


def simulate(b: ReadBudget, clock: Clock, shards: dict[str, tuple[bool, float]],
             seconds: float) -> dict[str, list[float]]:
    """Consumers asking as the worker's do: ``shards`` maps a key to (busy, seconds from a grant to its next
    ask: 0 for a shard reading a backlog, the ceiling for a quiet one); a refused ask comes back after the
    wait it was given.  Returns the grant times per key."""
    order = itertools.count()
    events = [(0.0, next(order), key) for key in shards]
    heapq.heapify(events)
    grants: dict[str, list[float]] = {key: [] for key in shards}
    while events:
        at, _, key = heapq.heappop(events)
        if at >= seconds:
            break
        clock.now = at
        busy, interval = shards[key]
        wait = b.request(key, busy=busy)
        if wait == 0.0:
            grants[key].append(at)
            heapq.heappush(events, (at + interval, next(order), key))
        else:
            assert wait >= MIN_WAIT_S
            heapq.heappush(events, (at + wait, next(order), key))
    return grants


def test_a_worker_takes_its_share_of_the_fleet_budget_by_shards_held() -> None:
    b, _ = budget(8.0, held=2, group_shards=8)
    assert b.rate == 2.0 and b.capacity == 2.0
    b.set_share(4, 8)
    assert b.rate == 4.0
    b.set_share(3, 0)  # the group's count not known yet: never more than the whole budget
    assert b.rate == 8.0


@pytest.mark.parametrize("shards", [1, 5, 40])
def test_calls_never_exceed_the_rate_plus_the_bucket(shards: int) -> None:
    b, clock = budget(2.0, held=shards, group_shards=shards)
    grants = simulate(b, clock, {f"s{i}": (True, 0.0) for i in range(shards)}, 300.0)
    total = sum(len(g) for g in grants.values())
    assert total <= 2.0 * 300.0 + b.capacity
    assert total >= 2.0 * 300.0 - 2  # the budget is used, not wasted
    for window_start in range(0, 290, 5):
        n = sum(1 for g in grants.values() for t in g if window_start <= t < window_start + 10)
        assert n <= 2.0 * 10 + b.capacity, window_start
    # Shards reading backlogs share it evenly (first come, first served).
    counts = [len(g) for g in grants.values()]
    assert max(counts) - min(counts) <= 1


def test_busy_shards_go_first_and_quiet_ones_still_get_polled() -> None:
    """Two shards reading a backlog would take every token; the quiet ones yield for up to the ceiling, then
    are served within the ceiling plus a round of the worker's shards at its rate."""
    b, clock = budget(2.0, held=8, group_shards=8)
    shards = {f"busy{i}": (True, 0.0) for i in range(2)} | {f"quiet{i}": (False, CEILING_S) for i in range(6)}
    grants = simulate(b, clock, shards, 600.0)
    total = sum(len(g) for g in grants.values())
    assert total <= 2.0 * 600.0 + b.capacity
    busy = sum(len(grants[f"busy{i}"]) for i in range(2))
    assert busy > 0.6 * total  # the busy shards get most of the budget
    bound = CEILING_S + CEILING_S + 8 / b.rate + 1.0  # pacing + yield + a round of the worker's shards + asks
    for i in range(6):
        times = grants[f"quiet{i}"]
        assert times[0] <= bound
        assert max(b - a for a, b in itertools.pairwise(times)) <= bound, i


def test_without_busy_shards_quiet_ones_are_polled_at_their_interval() -> None:
    b, clock = budget(100.0, held=8, group_shards=8)
    grants = simulate(b, clock, {f"q{i}": (False, CEILING_S) for i in range(8)}, 120.0)
    for times in grants.values():
        assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [CEILING_S] * (len(times) - 1)


def test_a_budget_below_one_call_per_shard_per_ceiling_stretches_every_interval_and_warns(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shardlease.budget"):
        b, clock = budget(1.0, held=20, group_shards=40)  # 0.5 call/s for 20 shards: one each per 40 s
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "--max-getrecords-per-second 1" in warnings[0] and "every 40 s" in warnings[0]
    b.set_share(20, 40)  # the same share: no second warning
    assert len(caplog.records) == 1
    grants = simulate(b, clock, {f"q{i}": (False, CEILING_S) for i in range(20)}, 800.0)
    for times in grants.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps and max(gaps) <= 20 / b.rate + CEILING_S + 1.0  # stretched to about held / rate, bounded
        assert min(gaps) >= CEILING_S


def test_no_budget_stretches_a_shards_interval_past_the_floor(caplog: pytest.LogCaptureFixture) -> None:
    """0.01 call/s over 900 shards would poll each shard once a day: records would be trimmed (24 h) before
    they are read, and every iterator would expire (15 min).  The budget yields: at most MAX_STRETCH_S apart."""
    with caplog.at_level(logging.WARNING, logger="shardlease.budget"):
        b, clock = budget(0.01, held=900, group_shards=900)
    assert b.rate == pytest.approx(900 / MAX_STRETCH_S)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert "no shard waits more than 300 s" in warning and "at least 3" in warning
    grants = simulate(b, clock, {f"q{i}": (False, CEILING_S) for i in range(900)}, 3 * MAX_STRETCH_S)
    for times in grants.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps and max(gaps) <= MAX_STRETCH_S + CEILING_S + 1.0


def test_no_warning_when_the_budget_covers_the_ceiling(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="shardlease.budget"):
        budget(10.0, held=20, group_shards=40)
    assert not caplog.records


def test_a_consumer_gone_does_not_hold_the_line() -> None:
    b, clock = budget(1.0, held=2, group_shards=2)
    clock.now = 10.0
    assert b.request("a", busy=True) == 0.0
    assert b.request("a", busy=True) > 0  # "a" waits in line, first
    assert b.request("q", busy=False) > 0  # behind it
    clock.now = 11.5  # a token is back (and more): "a" is ahead of "q"
    assert b.request("q", busy=False) > 0
    b.forget("a")  # its consumer stopped (handoff, shutdown)
    assert b.request("q", busy=False) == 0.0
    # Without forget: a request not renewed STALE_S after its wait is dropped.
    clock.now += 1.0
    assert b.request("c", busy=True) == 0.0
    wait = b.request("c", busy=True)
    assert wait > 0
    clock.now += wait
    assert b.request("q", busy=False) > 0  # "c" is ahead (it asked before q's rank) and may come back
    clock.now += wait + STALE_S + 0.1
    assert b.request("q", busy=False) == 0.0


def test_an_off_budget_is_not_built() -> None:
    with pytest.raises(ValueError):
        ReadBudget(0.0, quiet_yield_s=CEILING_S, ceiling_s=CEILING_S)
