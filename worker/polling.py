"""Poll pacing of caught-up shards: how long a shard that returned no records waits before its next GetRecords.

Every empty GetRecords call costs money outside Lambda, so a shard that has been quiet for a while is
polled less often, and activity on one shard of the stream wakes this worker's other quiet shards
(bursts of table writes spread over shards).

The policy (:class:`PollPolicy`, all times in seconds):

* **active** shard (records seen within ``quiet_after_s``, or its consumer started less than
  ``quiet_after_s`` ago): the first re-poll after an empty page waits ``FIRST_IDLE_DELAY_S``, doubling
  up to ``active_interval_s`` (1 s by default: the schedule every version before this one used);
* **quiet** shard (no records for ``quiet_after_s``): the wait is ``ceiling_s`` (``--idle-poll-interval``,
  4 s by default: 15 calls a minute instead of 60).

Invariants: without wakes a wait is never longer than ``ceiling_s`` (no shard starves, and a closed
shard's last page is found at most ``ceiling_s`` after it closed); ``active_interval_s`` is clamped to
``ceiling_s``, so ``--idle-poll-interval 1`` polls every caught-up shard once a second (the old fixed
interval).

Spreading: the first quiet wait after a shard turns quiet is drawn uniformly between ``active_interval_s``
and ``ceiling_s``, so shards that went quiet together (a worker's start) do not poll in step: spread over
the ceiling, the first of them to poll after a burst wakes the others.  The interval thus grows from the
active one to the ceiling in one step drawn at random, not by doubling: a doubling (1, 2, 4 s) would add
polls to the minute after a shard turns quiet, and a shorter first wait followed by ceiling waits keeps
any minute of a quiet shard at ``60 / ceiling_s`` calls.

Waking (:class:`QuietWaker`): when a quiet shard gets records, this worker's other quiet shards are
polled at once, if their next poll (their *slot*) is at most ``wake_gap_s`` (``ceiling_s / 2``) away and
their last poll at least ``wake_gap_s`` old.  A wake moves a poll earlier, it never adds one: the slot
after a woken poll is the woken slot plus ``ceiling_s`` (the shard's grid is kept, so the shards also
stay spread).  Hence, for a quiet shard, however many wakes come (one per ``wake_gap_s`` per worker):

* after its first quiet wait, its slots are at least ``ceiling_s`` apart and no poll is earlier than
  ``wake_gap_s`` before its slot, so any ``n + 1`` consecutive polls span at least
  ``n * ceiling_s - wake_gap_s`` seconds: one poll per ``ceiling_s`` on average, and in any window of
  ``T`` seconds at most ``ceil((T + wake_gap_s) / ceiling_s)`` polls (``ceil(T / ceiling_s)`` without
  wakes).  At the 4 s default: at most 15 in any 58 s window, and 16 only in a 60 s window that starts
  at a poll on its slot and ends just after a poll woken ``wake_gap_s`` early (never two more, never a
  sustained rate above 15 a minute);
* a woken poll is at least ``wake_gap_s`` after the poll before it (two polls that are not woken can be
  closer: the first quiet wait is drawn from ``active_s`` up);
* the wait after a woken poll ends at the shard's next slot: at most ``ceiling_s + wake_gap_s`` (6 s at
  the default; another wake usually comes first).  Every other wait is at most ``ceiling_s``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

FIRST_IDLE_DELAY_S = 0.1
"""Seconds before the first re-poll after an empty page; doubles from there."""
WAKE_GAP_FRACTION = 0.5
"""A wake polls a quiet shard only if its next slot is at most this fraction of ``ceiling_s`` away and its
last poll at least that old; one worker wakes at most once per that many seconds."""


@dataclass(frozen=True, slots=True)
class PollPolicy:
    active_interval_s: float = 1.0
    """Longest wait between polls of an active shard (clamped to ``ceiling_s``)."""
    ceiling_s: float = 4.0
    """Longest wait between polls of any shard (``--idle-poll-interval``)."""
    quiet_after_s: float = 60.0
    """Seconds without records after which a shard counts as quiet."""

    @property
    def active_s(self) -> float:
        return min(self.active_interval_s, self.ceiling_s)

    @property
    def wake_gap_s(self) -> float:
        return self.ceiling_s * WAKE_GAP_FRACTION

    def delay(self, empty_polls: int, quiet: bool) -> float:
        """Seconds before the next poll after ``empty_polls`` empty pages in a row (>= 1), before spreading."""
        if quiet:
            return self.ceiling_s
        return min(FIRST_IDLE_DELAY_S * 2.0 ** (max(empty_polls, 1) - 1), self.active_s)


class PollPacer:
    """One consumer's pacing state; ``now`` is monotonic seconds.  Used from that consumer's steps (one
    at a time) and read by :meth:`wake` from the scheduler while no step of it runs."""

    def __init__(self, policy: PollPolicy, now: float, rng: Callable[[], float] = random.random) -> None:
        self.policy = policy
        self._rng = rng
        self._spread = True
        """The next wait at the ceiling is drawn in [active_s, ceiling_s] (see the module docstring)."""
        self._last_records = now
        """When the shard last had records (or its consumer started)."""
        self.last_poll = now
        self._empty = 0
        self._slot: float | None = None
        """When the next poll of a quiet shard is due on its grid (None: not quiet, or not waiting)."""
        self._woken_slot: float | None = None
        """The slot a wake pulled forward: the slot after the woken poll is this one plus ``ceiling_s``."""

    @property
    def slot(self) -> float | None:
        """When the next poll of this quiet shard is due (monotonic s), if it waits for one."""
        return self._slot

    def quiet(self, now: float) -> bool:
        return now - self._last_records >= self.policy.quiet_after_s

    def polled(self, now: float, got_records: bool) -> bool:
        """Note a GetRecords call; True when records came to a shard that was quiet (wake the others)."""
        self.last_poll = now
        if not got_records:
            return False
        was_quiet = self.quiet(now)
        self._last_records = now
        self._empty = 0
        self._spread = True
        self._slot = self._woken_slot = None
        return was_quiet

    def empty_delay(self, now: float) -> float:
        """Seconds to wait after an empty page (or an empty batch) seen at ``now``."""
        self._empty += 1
        quiet = self.quiet(now)
        delay = self.policy.delay(self._empty, quiet)
        woken, self._woken_slot = self._woken_slot, None
        if not quiet:
            self._slot = None
            return delay
        if woken is not None and woken + self.policy.ceiling_s > now:
            # A woken poll took the slot it was pulled from: the next one stays on the grid.
            self._slot = woken + self.policy.ceiling_s
            return self._slot - now
        if self._spread:
            self._spread = False
            low = self.policy.active_s
            delay = low + (self.policy.ceiling_s - low) * self._rng()
        self._slot = now + delay
        return delay

    def wake(self, now: float) -> bool:
        """True if a wake may poll this shard now: quiet, its next slot at most ``wake_gap_s`` away (and not
        passed) and its last poll at least ``wake_gap_s`` old.  The poll then takes that slot."""
        slot, gap = self._slot, self.policy.wake_gap_s
        if slot is not None and slot - gap <= now < slot and now - self.last_poll >= gap and self.quiet(now):
            self._woken_slot = slot
            self._slot = None
            return True
        return False


class QuietWaker:
    """Wakes a worker's quiet shards when one of them gets records, at most once per ``gap_s``.

    ``wake`` is given the monotonic time of the wake and does the rescheduling (the scheduler's
    :meth:`~worker.scheduler.Scheduler.pull_forward`); it returns how many shards it woke.
    """

    def __init__(self, gap_s: float, wake: Callable[[float], int], clock: Callable[[], float]) -> None:
        self._gap_s = gap_s
        self._wake = wake
        self._clock = clock
        self._last = float("-inf")
        self._lock = threading.Lock()
        self.wakes = 0

    def activity(self) -> int:
        """A quiet shard got records: wake the others (unless a wake ran less than ``gap_s`` ago)."""
        now = self._clock()
        with self._lock:
            if now - self._last < self._gap_s:
                return 0
            self._last = now
            self.wakes += 1
        return self._wake(now)
