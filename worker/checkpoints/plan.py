"""Plans: where each shard of a group goes for a rewind or an import, and why.

Pure functions of the group's leases, the stream's current shards and the clock, so they are tested
without Redis or AWS.  A plan is shown by ``--dry-run`` and recorded with the change.

DynamoDB Streams has no AT_TIMESTAMP iterator, so "from time T" is: read the shard from its trim
horizon and skip records whose ApproximateCreationDateTime is before T's second (done by the worker,
see ``worker.consumer``).  ApproximateCreationDateTime has whole seconds, so records of T's second
written just before T are handled too; none at or after T is skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from leaser import SHARD_END, SKIP_BEFORE_NOW, ConfigError, Lease, LeaseState, Position, sequence_key

if TYPE_CHECKING:
    from worker.reading.streams import Shard

RETENTION_S = 24 * 3600
"""DynamoDB Streams keeps records 24 hours: a time older than this cannot be replayed."""
FUTURE_TOLERANCE_S = 1.0
"""A --to-time this far ahead of the local clock is still taken as now (clocks differ a little)."""

CLOSED_MARGIN_S = 300.0
"""A closed shard counts as ended before T when its children were created this long before T: DynamoDB
closes a shard when it creates its children, though a listing may briefly show both open."""

_SHARD_TIME = re.compile(r"^shardId-(\d{13,20})-")


def iso(ms: int) -> str:
    """Unix ms as an ISO 8601 UTC time with milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> int:
    """An ISO 8601 time (a zone, else UTC) as Unix ms; ConfigError for anything else."""
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ConfigError("to-time (--to-time)", f"{text!r} is not an ISO 8601 time",
                          "e.g. --to-time 2026-12-01T09:30:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Target:
    """Where to move the group: exactly one of the four ``--to-*`` choices."""

    kind: str
    """time | trim_horizon | latest | sequence"""
    time_ms: int = 0
    shard_id: str = ""
    sequence_number: str = ""

    def describe(self) -> str:
        if self.kind == "time":
            return f"--to-time {iso(self.time_ms)}"
        if self.kind == "sequence":
            return f"--shard {self.shard_id} --to-sequence {self.sequence_number}"
        return "--to-" + self.kind.replace("_", "-")


@dataclass(frozen=True, slots=True)
class Step:
    """One shard's move: from what, to what, why; ``position`` is None when the shard is left as it is."""

    shard_id: str
    before: str
    after: str
    why: str
    position: Position | None

    def to_dict(self) -> dict[str, str]:
        return {"shard": self.shard_id, "from": self.before, "to": self.after, "why": self.why}


def describe_lease(lease: Lease | None) -> str:
    """A lease's position in a few words: 'SHARD_END', 'after 123', 'start'."""
    if lease is None:
        return "(not registered)"
    if lease.checkpoint == SHARD_END:
        return SHARD_END
    if lease.checkpoint:
        return f"after {lease.checkpoint}"
    if lease.skip_before_ms:
        return f"trim horizon, skipping before {iso(lease.skip_before_ms)}"
    return "start (no checkpoint)"


def shard_created_ms(shard_id: str) -> int | None:
    """The creation time DynamoDB embeds in a shard id (Unix ms), or None."""
    match = _SHARD_TIME.match(shard_id)
    return int(match.group(1)) if match else None


def check_time(time_ms: int, now_ms: int) -> None:
    """Refuse a time in the future or older than the stream's retention (ConfigError, one line)."""
    if time_ms > now_ms + FUTURE_TOLERANCE_S * 1000:
        raise ConfigError("to-time (--to-time)", f"{iso(time_ms)} is in the future (now is {iso(now_ms)})",
                          "give a past time, or --to-latest to skip everything written so far")
    oldest = now_ms - RETENTION_S * 1000
    if time_ms < oldest:
        raise ConfigError("to-time (--to-time)",
                          f"{iso(time_ms)} is older than the stream's 24 h retention; the oldest time still "
                          f"available is {iso(oldest)}",
                          f"give {iso(oldest + 60_000)} or later (a minute to spare), or --to-trim-horizon")


def _order(shard: Shard, index: int) -> float:
    created = shard_created_ms(shard.shard_id)
    return float(created) if created is not None else float(index)


def plan_rewind(target: Target, leases: list[Lease], shards: list[Shard], *, now_ms: int) -> list[Step]:
    """The steps of a rewind, one per shard of the group or the stream (parents before children).

    Raises ConfigError for a target that does not fit (a time out of range, an unknown shard, a sequence
    number outside the shard).  Shards the group knows but the stream no longer lists (trimmed) are left
    as they are: nothing of them can be read again.
    """
    by_lease = {lease.shard_id: lease for lease in leases}
    listed = {s.shard_id: s for s in shards}
    if target.kind == "time":
        check_time(target.time_ms, now_ms)
    if target.kind == "sequence":
        return [_plan_sequence(target, by_lease.get(target.shard_id), listed),
                *_descendants_again(target.shard_id, by_lease, shards)]
    children_created: dict[str, int] = {}
    for shard in shards:
        created_ms = shard_created_ms(shard.shard_id)
        if shard.parent_shard_id and created_ms is not None:
            children_created[shard.parent_shard_id] = min(created_ms, children_created.get(shard.parent_shard_id,
                                                                                          created_ms))
    steps: list[Step] = []
    for index, shard in enumerate(shards):
        lease = by_lease.get(shard.shard_id)
        before = describe_lease(lease)
        parents = (shard.parent_shard_id,) if shard.parent_shard_id else ()
        order = lease.order if lease else _order(shard, index)
        ended = lease is not None and lease.state == LeaseState.ENDED

        def move(after: str, why: str, skip: int | str, shard: Shard = shard, parents: tuple[str, ...] = parents,
                 order: float = order, before: str = before) -> Step:
            return Step(shard.shard_id, before, after, why,
                        Position(shard.shard_id, "", True, skip, parents, order))

        if target.kind == "trim_horizon":
            steps.append(move("trim horizon", "every record still in the stream is handled again", 0))
        elif target.kind == "latest":
            if ended:
                steps.append(Step(shard.shard_id, before, before, "ended: nothing left to skip", None))
            elif lease is None and shard.is_closed:  # its lease was cleaned up: it had ended
                steps.append(Step(shard.shard_id, before, before, "closed, its lease cleaned up: nothing left to "
                                  "skip", None))
            else:
                steps.append(move("latest", "records written before the rewind are skipped", SKIP_BEFORE_NOW))
        else:
            t = target.time_ms
            created = shard_created_ms(shard.shard_id)
            closed_ms = children_created.get(shard.shard_id) if shard.is_closed else None
            if ended and lease is not None and 0 < lease.ended_ms < t:
                steps.append(Step(shard.shard_id, before, before,
                                  f"ended at {iso(lease.ended_ms)}, before the time: left ended", None))
            elif (ended or lease is None) and closed_ms is not None and closed_ms < t - CLOSED_MARGIN_S * 1000:
                steps.append(Step(shard.shard_id, before, before, f"closed when its children were created at "
                                  f"{iso(closed_ms)}, before the time: left as it is", None))
            elif created is not None and created >= t:
                steps.append(move("trim horizon", f"created at {iso(created)}, after the time: read whole", t))
            else:
                steps.append(move(f"trim horizon, skipping before {iso(t)}",
                                  "open at the time (or ended after it): records created before it are skipped",
                                  t))
    for lease in leases:
        if lease.shard_id not in listed:
            steps.append(Step(lease.shard_id, describe_lease(lease), describe_lease(lease),
                              "no longer in the stream (trimmed): left as it is", None))
    return steps


def _plan_sequence(target: Target, lease: Lease | None, listed: dict[str, Shard]) -> Step:
    shard = listed.get(target.shard_id)
    if shard is None:
        raise ConfigError("shard (--shard)", f"{target.shard_id!r} is not a shard of the stream now",
                          "pick one from `shardlease checkpoint show`")
    number = sequence_key(target.sequence_number)
    start = int(shard.starting_sequence_number or 0)
    end = int(shard.ending_sequence_number) if shard.ending_sequence_number else None
    if number < start or (end is not None and number > end):
        span = f"{shard.starting_sequence_number} to {shard.ending_sequence_number or '(open)'}"
        raise ConfigError("to-sequence (--to-sequence)",
                          f"{target.sequence_number} is outside shard {shard.shard_id} ({span})",
                          "give a sequence number of that shard")
    parents = (shard.parent_shard_id,) if shard.parent_shard_id else ()
    order = lease.order if lease else float(shard_created_ms(shard.shard_id) or 0)
    return Step(shard.shard_id, describe_lease(lease), f"after {target.sequence_number}",
                "records after this sequence number are handled again; children wait for this shard again",
                Position(shard.shard_id, target.sequence_number, True, 0, parents, order))


def _descendants_again(shard_id: str, by_lease: dict[str, Lease], shards: list[Shard]) -> list[Step]:
    """Steps for the listed descendants of a shard moved by ``--to-sequence``: each one that progressed
    (a checkpoint, ended, skipping up to an earlier rewind's time, or closed with its lease cleaned up)
    is read whole again, after the shard.
    Resuming them at their own checkpoints would handle the shard's records again after their newer
    ones of the same keys (order per key).  One not started yet waits for the shard as it is."""
    children: dict[str, list[Shard]] = {}
    for shard in shards:
        if shard.parent_shard_id:
            children.setdefault(shard.parent_shard_id, []).append(shard)
    steps: list[Step] = []
    todo = list(children.get(shard_id, []))
    while todo:
        shard = todo.pop(0)
        todo += children.get(shard.shard_id, [])
        lease = by_lease.get(shard.shard_id)
        before = describe_lease(lease)
        progressed = (lease.checkpoint != "" or lease.state == LeaseState.ENDED or lease.skip_before_ms > 0
                      if lease else shard.is_closed)
        if not progressed:
            steps.append(Step(shard.shard_id, before, before, f"a descendant of {shard_id} not started yet: waits "
                              "for it", None))
            continue
        order = lease.order if lease else float(shard_created_ms(shard.shard_id) or 0)
        parents = (shard.parent_shard_id,) if shard.parent_shard_id else ()
        steps.append(Step(shard.shard_id, before, "trim horizon", f"a descendant of {shard_id}: read whole again "
                          "after it (order per key)", Position(shard.shard_id, "", True, 0, parents, order)))
    return steps


def positions(steps: list[Step]) -> list[Position]:
    return [s.position for s in steps if s.position is not None]
