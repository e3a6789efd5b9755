"""Positions set from outside the fleet: a rewind, an import (see :meth:`LeaseStore.reposition`).

The lease protocol treats positions as opaque: a checkpoint (a sequence number, ``''`` for none, or
``SHARD_END``), where a shard without a checkpoint starts, and a time before which its reader skips
records.  What they mean for a stream is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from leaser.lease import SHARD_END, validate_sequence_number

SKIP_BEFORE_NOW = "now"
"""``Position.skip_before_ms`` meaning the Redis server time of the reposition itself (``--to-latest``),
less :data:`SKIP_BEFORE_NOW_MARGIN_MS`."""

SKIP_BEFORE_NOW_MARGIN_MS = 2000
"""Milliseconds :data:`SKIP_BEFORE_NOW` reaches back before the reposition's Redis time.  Readers compare
it with the records' creation times, taken on the stream's clock, not Redis's: a few records written just
before the change are handled rather than one written just after it skipped while Redis's clock runs
ahead (the margin a LATEST start resumed by a later owner allows too, ``worker.consumer.LATEST_MARGIN_S``)."""

HISTORY_KEPT = 50
"""Entries kept in the group's history of rewinds, imports and exports (newest first)."""


@dataclass(frozen=True, slots=True)
class Position:
    """Where one shard resumes after a reposition.

    ``checkpoint``: resume after this sequence number; ``''`` = no checkpoint (start as below);
    ``SHARD_END`` = the shard is finished (its children may start).  Without a checkpoint the shard
    is read from its first record when ``read_from_start`` (else from the group's initial position),
    and its reader skips records created before ``skip_before_ms`` (Unix ms; 0 = none;
    :data:`SKIP_BEFORE_NOW` = the Redis time of the reposition, less a margin).  ``parent_ids`` and ``order`` are used
    only for a shard the group does not know yet (never registered, or cleaned up): it is registered
    with them.
    """

    shard_id: str
    checkpoint: str = ""
    read_from_start: bool = True
    skip_before_ms: int | str = 0
    parent_ids: tuple[str, ...] = ()
    order: float = 0.0

    def __post_init__(self) -> None:
        if self.checkpoint not in ("", SHARD_END):
            validate_sequence_number(self.checkpoint)
        if self.skip_before_ms != SKIP_BEFORE_NOW and (not isinstance(self.skip_before_ms, int)
                                                       or isinstance(self.skip_before_ms, bool)
                                                       or self.skip_before_ms < 0):
            raise ValueError(f"skip_before_ms must be a non-negative int or {SKIP_BEFORE_NOW!r}")


@dataclass(frozen=True, slots=True)
class Repositioned:
    """What :meth:`LeaseStore.reposition` did."""

    epoch: int
    """The group's epoch after the change (it counts repositions)."""
    fenced: tuple[str, ...]
    """Shards that had an owner: its consumer is fenced off and stops at its next heartbeat or write."""
    repeated: bool = False
    """The same request had already run (a retry after a lost reply): nothing changed this time."""
