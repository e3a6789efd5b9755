"""Poll pacing (worker.polling) on a fake clock, and the scheduler's pull_forward."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, cast

import pytest

from worker.polling import FIRST_IDLE_DELAY_S, PollPacer, PollPolicy, QuietWaker
from worker.scheduler import Scheduler

DEFAULT = PollPolicy()


def simulate(policy: PollPolicy, seconds: float, records_at: tuple[float, ...] = (),
             spread: float = 1.0) -> list[float]:
    """Times of the polls of one shard over ``seconds`` on a fake clock; a poll at or after each time in
    ``records_at`` finds records (the consumer reads at once after a page with records).  ``spread``: what
    the random draw of the first quiet wait returns (0 = the active interval, 1 = the ceiling)."""
    pacer = PollPacer(policy, 0.0, rng=lambda: spread)
    pending = sorted(records_at)
    now, polls = 0.0, []
    while now < seconds:
        polls.append(now)
        got = bool(pending) and pending[0] <= now
        if got:
            pending.pop(0)
        pacer.polled(now, got)
        now += 0.0 if got else pacer.empty_delay(now)
    return polls


def per_minute(polls: list[float], start: float) -> int:
    return sum(1 for t in polls if start <= t < start + 60)


def test_an_active_shard_is_polled_as_before() -> None:
    pacer = PollPacer(DEFAULT, 0.0)
    delays = [pacer.empty_delay(0.1 * i) for i in range(1, 8)]
    assert delays == [FIRST_IDLE_DELAY_S, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    polls = simulate(DEFAULT, 60.0)
    assert 60 <= per_minute(polls, 0.0) <= 65  # the back-off's first steps, then once a second


@pytest.mark.parametrize("spread", [0.0, 0.37, 1.0])
def test_a_quiet_shard_costs_a_quarter_and_never_waits_longer_than_the_ceiling(spread: float) -> None:
    polls = simulate(DEFAULT, 600.0, spread=spread)
    for start in range(61, 540, 7):
        assert per_minute(polls, float(start)) <= 15, start
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert max(gaps) == pytest.approx(DEFAULT.ceiling_s)
    # The wait grows from 1 s (active) to the 4 s ceiling; the first quiet wait is drawn in between.
    quiet = [g for a, g in zip(polls, gaps, strict=False) if a >= 60.0]
    assert quiet[:3] == pytest.approx([1.0 + 3.0 * spread, 4.0, 4.0])


def test_records_make_a_quiet_shard_active_again() -> None:
    polls = simulate(DEFAULT, 300.0, records_at=(120.0,))
    assert per_minute(polls, 125.0) >= 55  # polled as an active shard for a minute after its records
    assert per_minute(polls, 185.0) <= 15  # and quiet again after a minute without


def test_the_old_fixed_interval_is_reachable() -> None:
    baseline = PollPolicy(ceiling_s=1.0)
    polls = simulate(baseline, 600.0)
    assert all(59 <= per_minute(polls, 60.0 * m + 1) <= 61 for m in range(1, 9))
    # A ceiling below the active interval clamps it (an --idle-poll-interval 0.5 set before keeps working).
    assert PollPolicy(ceiling_s=0.5).active_s == 0.5
    assert max(PollPolicy(ceiling_s=0.5).delay(n, q) for n in range(1, 20) for q in (False, True)) == 0.5


def test_a_wake_pulls_the_next_poll_forward_and_the_one_after_stays_on_the_grid() -> None:
    draws = iter([0.5])
    pacer = PollPacer(DEFAULT, 0.0, rng=lambda: next(draws))
    assert not pacer.wake(30.0)  # active
    pacer.polled(61.0, False)
    assert pacer.empty_delay(61.0) == 2.5  # the first quiet wait, spread: slot 63.5
    pacer.polled(63.5, False)
    assert pacer.empty_delay(63.5) == 4.0  # slot 67.5
    assert not pacer.wake(65.0)  # quiet, but its slot is more than the wake gap (2 s) away
    assert pacer.wake(65.5)  # 2 s before its slot: polled now, taking that slot
    assert not pacer.wake(66.0)  # a woken shard is not woken again for the same slot
    pacer.polled(65.6, False)
    assert pacer.empty_delay(65.6) == pytest.approx(71.5 - 65.6)  # the next slot stays on the grid: 67.5 + 4
    assert not pacer.wake(68.0)  # polled 2.4 s ago, but its slot (71.5) is 3.5 s away
    assert not pacer.wake(69.0)  # 2.5 s away
    pacer.polled(71.5, False)
    assert pacer.empty_delay(71.5) == 4.0  # not woken: the ceiling, as without wakes
    assert pacer.wake(73.5)
    assert pacer.polled(73.6, True)  # records after quiet: a wake trigger
    assert not pacer.wake(100.0)  # active again
    assert not pacer.polled(101.0, True)  # records on an active shard wake nobody


@pytest.mark.parametrize("spread", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("phase", [0.0, 0.13, 0.37])
def test_wakes_that_keep_coming_never_raise_a_quiet_shard_above_one_poll_per_ceiling(
        spread: float, phase: float) -> None:
    """A wake every 0.5 s (more often than a worker's waker allows: one per wake gap) for 10 minutes of a
    quiet shard: it is polled at most 15 times in any 58 s window and 16 in any 60 s one (module docstring),
    150 (+1) in the 10 minutes, as without wakes.  Before the grid was kept, each woken poll restarted the
    ceiling from itself: 30 a minute."""
    policy = DEFAULT
    pacer = PollPacer(policy, -100.0, rng=lambda: spread)
    pacer.polled(-100.0, True)  # records long ago: quiet from t=0
    tick = 0.01
    pacer.polled(0.0, False)
    due = pacer.empty_delay(0.0)
    polls, woken = [0.0], 0
    for i in range(1, int(600 / tick)):
        now = round(i * tick, 2)
        if round((now - phase) / 0.5, 6).is_integer() and pacer.wake(now):
            woken += 1
            due = min(due, now)
        if now >= due:
            polls.append(now)
            pacer.polled(now, False)
            due = now + pacer.empty_delay(now)
    assert woken > 100  # the wakes did pull polls forward (nearly every poll is woken)
    per_ceiling = 60 / policy.ceiling_s
    # From the end of its first quiet wait (drawn shorter than the ceiling after the active polls before it).
    for start in (polls[1] + x * 0.01 for x in range(0, 53000, 7)):
        assert sum(1 for t in polls if start <= t < start + 60 - policy.wake_gap_s) <= per_ceiling, start
        assert sum(1 for t in polls if start <= t < start + 60) <= per_ceiling + 1, start
    assert len([t for t in polls if t >= polls[1]]) <= 600 / policy.ceiling_s + 1
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert min(gaps[1:]) >= policy.wake_gap_s - 1e-9
    assert max(gaps) <= policy.ceiling_s + policy.wake_gap_s + 1e-9


def test_the_waker_wakes_at_most_once_per_gap() -> None:
    clock = [0.0]
    woken: list[float] = []
    waker = QuietWaker(2.0, lambda now: woken.append(now) or 3, lambda: clock[0])
    assert waker.activity() == 3
    clock[0] = 1.9
    assert waker.activity() == 0
    clock[0] = 2.0
    assert waker.activity() == 3
    assert woken == [0.0, 2.0] and waker.wakes == 2


class FakeConsumer:
    """Duck-typed ShardConsumer for the scheduler: each step is recorded and asks for a long wait."""

    def __init__(self, shard_id: str) -> None:
        self.shard_id = shard_id
        self.finished = False
        self.stop_reason = None
        self.steps = 0
        self.stepped = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def step(self) -> float:
        self.release.wait(10)
        self.steps += 1
        self.stepped.set()
        return 1000.0

    def request_stop(self, *args: Any) -> None:
        self.finished = True


@pytest.fixture
def scheduler() -> Any:
    s = Scheduler(threads=4)
    yield s
    s.close(wait=True)


def wait_steps(c: FakeConsumer, n: int, scheduler: Scheduler | None = None) -> None:
    """Wait until ``c`` has taken ``n`` steps (and, given the scheduler, is waiting again: its step returned and
    the scheduler pushed its next one, so that a pull_forward or stop_consumer finds it waiting)."""
    for _ in range(100):
        if c.steps >= n and (scheduler is None or c.shard_id not in scheduler.in_flight()):
            return
        c.stepped.wait(0.1)
        c.stepped.clear()
    raise AssertionError(f"{c.shard_id}: {c.steps} steps, expected {n}")


def test_pull_forward_runs_the_chosen_waiting_consumers_now(scheduler: Scheduler) -> None:
    a, b = FakeConsumer("a"), FakeConsumer("b")
    for c in (a, b):
        scheduler.add(cast(Any, c))
        wait_steps(c, 1, scheduler)
    assert scheduler.pull_forward(time.monotonic(), lambda c: c.shard_id == "a") == 1
    wait_steps(a, 2)  # without the pull it would wait 1,000 s
    assert b.steps == 1
    # Never later: a due time beyond the current one moves nothing.
    assert scheduler.pull_forward(time.monotonic() + 5000, lambda c: True) == 0


def test_pull_forward_leaves_a_running_step_alone(scheduler: Scheduler) -> None:
    a = FakeConsumer("a")
    a.release.clear()
    scheduler.add(cast(Any, a))
    for _ in range(50):
        if scheduler.in_flight():
            break
        time.sleep(0.05)
    assert scheduler.in_flight() == {"a"}
    assert scheduler.pull_forward(time.monotonic(), lambda c: True) == 0
    a.release.set()
    wait_steps(a, 1)


def test_a_consumer_stopped_by_reconcile_stops_now_not_at_its_next_poll(scheduler: Scheduler) -> None:
    """The runtime's reconcile stops a consumer whose lease is no longer held; it used to wait for its next poll
    (up to the idle ceiling) before its stopping step ran, widening the window in which a re-acquired lease's
    new consumer ran its hooks before the old one's on_lease_lost."""
    a = FakeConsumer("a")
    scheduler.add(cast(Any, a))
    wait_steps(a, 1, scheduler)  # now waiting 1,000 s for its next step
    scheduler.stop_consumer(cast(Any, a), "lost", detail="token is stale")
    wait_steps(a, 2)
    assert a.finished


def test_a_stopping_consumer_keeps_its_retry_delay(scheduler: Scheduler) -> None:
    """A stopping step that must retry (a release refused by a Redis error, renewals late) waits the delay it
    returns instead of being run again at once."""

    class Retrying(FakeConsumer):
        def step(self) -> float:
            self.steps += 1
            self.stepped.set()
            return 0.5

    c = Retrying("a")
    c.stop_reason = "handoff"  # type: ignore[assignment]
    scheduler.add(cast(Any, c))
    time.sleep(1.0)
    assert 1 <= c.steps <= 4, c.steps  # a busy loop would run it thousands of times
