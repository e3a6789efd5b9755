"""The stream side of the snapshot's bracketing (docs/snapshot.md, "The one rule").

A consumer calls :meth:`StreamGate.tag` after every GetRecords call that returned records and before
it keeps them; records tagged ``v > 0`` wait until :meth:`StreamGate.clear` says no page announced at
or before ``v`` is in flight.  A tag of 0 means they may be handed over at once.  Once clear, a tag
stays clear: every page announced later has a larger ticket.

The gate's cost ("The gate's cost" in docs/snapshot.md).  Asking Redis after every page would cost each busy
shard a script call per batch, snapshot or not.  A snapshot's first page is announced no sooner than
``notice_s`` (Redis time) after its start, so an answer "no snapshot runs and no page is in flight" to a gate
call *sent* at monotonic time ``s`` stays good for every record read (its GetRecords returned) before
``s + quiet_s``, ``quiet_s`` = :data:`~leaser.snapshot.QUIET_GATE_FRACTION` of the notice: such a record
was read before any page of a snapshot started after that call could be announced.  One gate object serves
every consumer of a worker, so an idle fleet asks once per ``quiet_s`` per worker.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from leaser.snapshot import NOTICE_S, QUIET_GATE_FRACTION, SnapshotStore

HOLD_POLL_S = 0.05
"""Seconds between checks while records wait for a snapshot page in flight."""


def notice_s() -> float:
    """The snapshot notice every worker and command of a group uses (:data:`leaser.snapshot.NOTICE_S`;
    SHARDLEASE_TEST_SNAPSHOT_NOTICE_S shortens it in tests: a test hook, not a setting)."""
    return float(os.environ.get("SHARDLEASE_TEST_SNAPSHOT_NOTICE_S") or NOTICE_S)


class StreamGate:
    def __init__(self, store: SnapshotStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self.quiet_s = store.notice_s * QUIET_GATE_FRACTION
        """How long a "no snapshot runs" answer stays good for records read after its call was sent."""
        self._lock = threading.Lock()
        self._quiet_since: float | None = None
        """When (monotonic, before sending) the last gate call that heard "no snapshot, no page" was sent."""
        self.calls = 0
        """Gate calls made (for tests and benchmarks)."""

    def tag(self, read_at: float | None = None) -> int:
        """The clock now if a page announced at or before now is in flight (records read before this call
        must wait for it), else 0.  ``read_at``: when the GetRecords call that returned the records came back
        (monotonic; None: now).  Raises CoordinationUnavailable (the caller re-reads the page)."""
        read_at = self._clock() if read_at is None else read_at
        with self._lock:
            quiet_since = self._quiet_since
        if quiet_since is not None and read_at < quiet_since + self.quiet_s:
            return 0
        sent = self._clock()
        self.calls += 1
        clock, smallest, running = self._store.gate()
        with self._lock:
            if not running and smallest == 0:
                if self._quiet_since is None or sent > self._quiet_since:
                    self._quiet_since = sent
            else:
                self._quiet_since = None
        return 0 if smallest == 0 or smallest > clock else clock

    def clear(self, tag: int) -> bool:
        """True once no page with a ticket <= ``tag`` is in flight."""
        self.calls += 1
        _clock, smallest, _running = self._store.gate()
        return smallest == 0 or smallest > tag
