"""What a lease is: the state of one shard as the group sees it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

SHARD_END = "SHARD_END"
"""The checkpoint of a shard whose every record has been handled."""

MAX_SEQUENCE_DIGITS = 40
_SEQ_RE = re.compile(r"^[0-9]{1,40}$")


class LeaseState(StrEnum):
    BLOCKED = "blocked"
    """Registered, but a parent has not ended yet: nobody may acquire it."""
    READY = "ready"
    """Every parent has ended (or is unknown to the group): free to acquire, or owned."""
    ENDED = "ended"
    """Checkpointed SHARD_END: finished for good."""


def validate_sequence_number(value: str) -> str:
    """Return ``value`` if it is a sequence number (1 to 40 decimal digits), else raise ValueError."""
    if not isinstance(value, str) or not _SEQ_RE.match(value):
        raise ValueError(f"sequence number must be 1 to 40 decimal digits, got {value!r}")
    return value


def sequence_key(value: str) -> int:
    """Sort key of a sequence number: its integer value (never compare them as strings)."""
    return int(validate_sequence_number(value))


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """A shard to register: its id, its parents, and where it sorts among the group's shards.

    ``order`` sorts free leases for acquisition (lower first, so older shards first); the
    caller derives it from the shard's creation time or listing position.
    """

    shard_id: str
    parent_ids: tuple[str, ...] = ()
    order: float = 0.0
    read_from_start: bool | None = None
    """Where the shard starts while it has no checkpoint: True, from its first record (it was created
    after the group started); False, from the group's initial position; None (the default) decides
    at registration: the initial position until :meth:`LeaseStore.mark_listed` was called once for
    the group, from the start after that."""


@dataclass(frozen=True, slots=True)
class Lease:
    """One shard's lease, as stored in Redis (``shardlease:{group}:lease:<shard>``).

    Times are Redis server time in milliseconds since the epoch; 0 means never.
    """

    shard_id: str
    parent_ids: tuple[str, ...]
    """Parents given at registration; fixed for the life of the lease."""
    child_ids: tuple[str, ...]
    """Children registered so far (a split has two, a rollover one)."""
    order: float
    state: LeaseState
    owner: str
    """Worker holding the lease, '' when free (or ended)."""
    token: int
    """Fencing token of the latest acquisition; grows on every acquisition in the group."""
    expires_ms: int
    checkpoint: str
    """Last checkpointed sequence number, '' if none yet, or SHARD_END."""
    owner_switches: int
    """Acquisitions by a new owner since the last checkpoint (a shard that keeps moving without progress)."""
    reserved_for: str
    """Worker a handoff reserved this lease for, until ``reserved_until_ms``."""
    reserved_until_ms: int
    offered_to: str
    """Taker its owner is handing it over to ('' if none): only an offered lease can be taken by force."""
    read_from_start: bool
    """Without a checkpoint, read the shard from its first record, not the group's initial position."""
    skip_before_ms: int
    """Set by a reposition (rewind, import): while it has no checkpoint, its reader skips records created
    before this time (Unix ms); 0 = none.  Opaque to the lease protocol."""
    began_ms: int
    """When its first owner began reading it from its start position (0: not yet); see ``LeaseStore.begin``."""
    created_ms: int
    acquired_ms: int
    checkpoint_ms: int
    ended_ms: int

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> Lease:
        def csv(name: str) -> tuple[str, ...]:
            raw = fields.get(name, "")
            return tuple(raw.split(",")) if raw else ()

        def num(name: str) -> int:
            return int(fields.get(name) or 0)

        return cls(
            shard_id=fields["shard"],
            parent_ids=csv("parents"),
            child_ids=csv("children"),
            order=float(fields.get("order") or 0),
            state=LeaseState(fields["state"]),
            owner=fields.get("owner", ""),
            token=num("token"),
            expires_ms=num("expires_ms"),
            checkpoint=fields.get("checkpoint", ""),
            owner_switches=num("switches"),
            reserved_for=fields.get("reserved_for", ""),
            reserved_until_ms=num("reserved_until_ms"),
            offered_to=fields.get("offered_to", ""),
            read_from_start=fields.get("start") == "beginning",
            skip_before_ms=num("skip_before_ms"),
            began_ms=num("began_ms"),
            created_ms=num("created_ms"),
            acquired_ms=num("acquired_ms"),
            checkpoint_ms=num("checkpoint_ms"),
            ended_ms=num("ended_ms"),
        )


@dataclass(frozen=True, slots=True)
class Acquired:
    """A lease the caller now holds: use ``token`` for every fenced write."""

    shard_id: str
    token: int
    checkpoint: str
    """Where to resume: after this sequence number; '' means the initial position."""
    previous_owner: str
    how: str
    """free | expired | handoff | takeover | reclaimed (already the caller's: an acquire whose reply was
    lost; the new token fences writes still using the old one)"""
    read_from_start: bool = False
    """With no checkpoint: read from the shard's first record (it was created after the group started),
    not from the group's initial position."""
    skip_before_ms: int = 0
    """With no checkpoint: records created before this time (Unix ms) are to be skipped, not handled (set by a
    rewind to a time); 0 = none."""
