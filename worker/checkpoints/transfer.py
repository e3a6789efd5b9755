"""Position files (``checkpoint export`` / ``import``): the group's positions as JSON, and back.

The file names the stream it was taken from; an import checks each position against the stream's
current shards (a shard no longer listed is skipped: trimmed; a checkpoint outside its shard's
sequence numbers is refused), and shards the file does not know (created since) start at their trim
horizon, so nothing is skipped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from leaser import SHARD_END, ConfigError, Lease, LeaseState, Position
from worker.checkpoints.plan import Step, describe_lease, shard_created_ms
from worker.consumer import LATEST_MARGIN_S

if TYPE_CHECKING:
    from worker.reading.streams import Shard

FORMAT = "shardlease-positions/1"


def export_document(group: str, stream_arn: str | None, leases: list[Lease], *, now_ms: int,
                    epoch: int) -> dict[str, Any]:
    """The group's positions as a JSON-ready document."""
    return {
        "format": FORMAT,
        "group": group,
        "stream_arn": stream_arn,
        "exported_at_ms": now_ms,
        "epoch": epoch,
        "shards": [_entry(lease) for lease in leases],
    }


def _entry(lease: Lease) -> dict[str, Any]:
    read_from_start, skip = lease.read_from_start, lease.skip_before_ms
    if not lease.checkpoint and not read_from_start and lease.began_ms:
        # First read at LATEST but nothing checkpointed yet: keep where that read began, as a later owner would.
        read_from_start, skip = True, lease.began_ms - int(LATEST_MARGIN_S * 1000)
    return {
        "shard_id": lease.shard_id,
        "parents": list(lease.parent_ids),
        "order": lease.order,
        "checkpoint": SHARD_END if lease.state == LeaseState.ENDED else lease.checkpoint,
        "read_from_start": read_from_start,
        "skip_before_ms": skip,
    }


def parse_document(text: str, source: str) -> dict[str, Any]:
    """A position file's document; ConfigError (one line) unless it is one."""
    setting = "input (--input)"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(setting, f"{source} is not JSON ({exc.msg} at line {exc.lineno})",
                          "give a file written by `shardlease checkpoint export`") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("shards"), list):
        raise ConfigError(setting, f"{source} is not a shardlease position file (format {FORMAT})",
                          "give a file written by `shardlease checkpoint export`")
    for entry in doc["shards"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("shard_id"), str):
            raise ConfigError(setting, f"{source} has a shard entry without a shard_id", "export the file again")
    return doc


def checkpoint_fits(shard: Shard, checkpoint: str) -> bool:
    """Whether ``checkpoint`` (a sequence number) lies within the shard's sequence numbers."""
    number = int(checkpoint)
    if shard.starting_sequence_number is not None and number < int(shard.starting_sequence_number):
        return False
    return shard.ending_sequence_number is None or number <= int(shard.ending_sequence_number)


def _check_of_this_stream(entries: dict[str, Any], listed: set[str], source: str) -> None:
    """Refuse positions none of which names a listed shard, unless all of them were trimmed since (each
    created before the oldest listed shard): they belong to another stream, and imported they would
    send every shard of this one to its trim horizon."""
    if not entries or not listed or set(entries) & listed:
        return
    listed_ms = [ms for ms in map(shard_created_ms, listed) if ms is not None]
    if not listed_ms:
        return  # shard ids without creation times: nothing to judge by
    created = [shard_created_ms(s) for s in entries]
    if all(ms is not None and ms < min(listed_ms) for ms in created):
        return
    raise ConfigError("positions (--input / --lease-table)",
                      f"none of the {len(entries)} shards in {source} is a shard of the stream, nor one trimmed "
                      "from it", "give the positions of this stream (check --stream-arn/--table)")


def plan_import(entries: dict[str, dict[str, Any]], leases: list[Lease], shards: list[Shard], *,
                source: str, allow_latest_skip: bool = True) -> list[Step]:
    """Steps setting each listed shard to the position in ``entries`` (shard id -> entry with
    ``checkpoint`` and optionally ``read_from_start``/``skip_before_ms``/``why``).

    A listed shard without an entry starts at its trim horizon (created after the positions were
    taken), unless it is an ancestor of a shard with an entry: then the source had finished it and
    deleted its lease (KCL's cleanup once the children started, or the group's own cleanup), so it is
    ended.  An entry for a shard no longer listed is skipped.  A checkpoint outside its shard's range
    raises ConfigError.
    """
    by_lease = {lease.shard_id: lease for lease in leases}
    listed = {s.shard_id for s in shards}
    _check_of_this_stream(entries, listed, source)
    parent_of = {s.shard_id: s.parent_shard_id for s in shards}
    finished: set[str] = set()
    for shard_id in entries:
        parent = parent_of.get(shard_id)
        while parent in parent_of and parent not in entries and parent not in finished:
            finished.add(parent)
            parent = parent_of[parent]
    steps: list[Step] = []
    for index, shard in enumerate(shards):
        lease = by_lease.get(shard.shard_id)
        parents = (shard.parent_shard_id,) if shard.parent_shard_id else ()
        order = lease.order if lease else float(shard_created_ms(shard.shard_id) or index)
        entry = entries.get(shard.shard_id)
        if entry is None and shard.shard_id in finished:
            steps.append(Step(shard.shard_id, describe_lease(lease), SHARD_END,
                              f"not in {source} but a descendant is: finished there (lease cleaned up)",
                              Position(shard.shard_id, SHARD_END, True, 0, parents, order)))
            continue
        if entry is None:
            steps.append(Step(shard.shard_id, describe_lease(lease), "trim horizon",
                              f"not in {source} (created since): read whole",
                              Position(shard.shard_id, "", True, 0, parents, order)))
            continue
        checkpoint = str(entry.get("checkpoint") or "")
        if checkpoint not in ("", SHARD_END):
            if not checkpoint.isdigit() or len(checkpoint) > 40:
                raise ConfigError("input (--input)", f"{source}: shard {shard.shard_id} has checkpoint {checkpoint!r}",
                                  "a checkpoint is a sequence number, SHARD_END or empty")
            if not checkpoint_fits(shard, checkpoint):
                raise ConfigError("input (--input)",
                                  f"{source}: checkpoint {checkpoint} is outside shard {shard.shard_id} "
                                  f"({shard.starting_sequence_number} to {shard.ending_sequence_number or '(open)'})",
                                  "the positions belong to another stream: check --stream-arn/--table")
        skip = entry.get("skip_before_ms") or 0
        unix_ms = isinstance(skip, int) and not isinstance(skip, bool) and skip >= 0
        if not (unix_ms or (allow_latest_skip and skip == "now")):
            raise ConfigError("input (--input)", f"{source}: shard {shard.shard_id} has skip_before_ms {skip!r}",
                              "a time in Unix ms, or 0")
        position = Position(shard.shard_id, checkpoint, bool(entry.get("read_from_start", True)), skip, parents, order)
        after = SHARD_END if checkpoint == SHARD_END else f"after {checkpoint}" if checkpoint else "start"
        steps.append(Step(shard.shard_id, describe_lease(lease), after, str(entry.get("why") or f"from {source}"),
                          position))
    for shard_id in sorted(set(entries) - listed):
        steps.append(Step(shard_id, describe_lease(by_lease.get(shard_id)), "-",
                          "no longer in the stream (trimmed): skipped", None))
    return steps
