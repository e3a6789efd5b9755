"""The stream side of the snapshot's bracketing (docs/snapshot.md, "The one rule").

A consumer calls :meth:`StreamGate.tag` after every GetRecords call that returned records and before
it keeps them; records tagged ``v > 0`` wait until :meth:`StreamGate.clear` says no page announced at
or before ``v`` is in flight.  A tag of 0 means they may be handed over at once.  Once clear, a tag
stays clear: every page announced later has a larger ticket.
"""

from __future__ import annotations

from leaser.snapshot import SnapshotStore

HOLD_POLL_S = 0.05
"""Seconds between checks while records wait for a snapshot page in flight."""


class StreamGate:
    def __init__(self, store: SnapshotStore) -> None:
        self._store = store

    def tag(self) -> int:
        """The clock now if a page announced at or before now is in flight (records read before this call
        must wait for it), else 0.  Raises CoordinationUnavailable (the caller re-reads the page)."""
        clock, smallest = self._store.gate()
        return 0 if smallest == 0 or smallest > clock else clock

    def clear(self, tag: int) -> bool:
        """True once no page with a ticket <= ``tag`` is in flight."""
        _clock, smallest = self._store.gate()
        return smallest == 0 or smallest > tag
