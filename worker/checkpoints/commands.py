"""``shardlease checkpoint show | rewind | export | import | import-kcl``.

Every change is planned first (shown by ``--dry-run``), confirmed (``--yes``, or a "yes" typed on a
terminal), then applied by one fenced :meth:`leaser.LeaseStore.reposition` and recorded in the group's
history with who ran it, from where, and the plan.  Bad input is one line and exit 2, nothing changed.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from leaser import ConcurrentUpdate, ConfigError, CoordinationUnavailable, Lease, LeaseStore, Repositioned
from worker.checkpoints.parser import STREAM_SETTINGS
from worker.checkpoints.plan import Step, Target, describe_lease, iso, parse_time, plan_rewind, positions
from worker.config import REDIS_SETTINGS, load_settings

EXIT_OK = 0
EXIT_USAGE = 2
PLAN_KEPT_IN_HISTORY = 500
"""Steps of a plan recorded in the group's history (the rest are counted)."""
REPOSITION_ATTEMPTS = 5
"""Tries of the change while Redis is unreachable (the same request: a lost reply is not applied twice)."""


def run(args: argparse.Namespace) -> int:
    """Dispatch one ``checkpoint`` sub-command."""
    command: Callable[[argparse.Namespace], int] = {
        "show": _show, "rewind": _rewind, "export": _export, "import": _import, "import-kcl": _import_kcl,
    }[args.checkpoint_command]
    return command(args)


# -- opening Redis and the stream ----------------------------------------------------------------


def _store(args: argparse.Namespace, *, must_exist: bool = True) -> tuple[LeaseStore, str]:
    from worker.redis_setup import open_existing_redis

    values = load_settings(REDIS_SETTINGS, args)
    opened = open_existing_redis(values["redis_url"], data_dir=values["data_dir"], ca_file=values["redis_ca_file"],
                                 cert_file=values["redis_cert_file"], key_file=values["redis_key_file"])
    if opened is None:
        raise ConfigError("redis_url (--redis-url / SHARDLEASE_REDIS_URL)",
                          "no --redis-url given and no embedded Redis is running here",
                          "give the group's --redis-url")
    client, shown = opened
    store = LeaseStore(client, values["group"])
    if must_exist and not store.known():
        raise ConfigError("group (--group / SHARDLEASE_GROUP)", f"group {store.group!r} has no state in {shown}",
                          "check --group and --redis-url (`shardlease status` lists the groups)")
    return store, shown


def _streams(args: argparse.Namespace, *, required: bool) -> tuple[Any, str | None]:
    """(StreamsClient, stream ARN) from --stream-arn/--table; (None, None) when not given and not required."""
    values = load_settings(STREAM_SETTINGS, args)
    if not values["stream_arn"] and not values["table"]:
        if required:
            raise ConfigError("stream_arn/table (--stream-arn / SHARDLEASE_STREAM_ARN, --table / SHARDLEASE_TABLE)",
                              "the stream is needed to check the positions against its shards",
                              "give --table TABLE or --stream-arn ARN")
        return None, None
    from worker.reading.streams import StreamsClient

    streams = StreamsClient(region_name=values["region"] or os.environ.get("AWS_REGION"),
                            endpoint_url=values["endpoint_url"])
    arn = values["stream_arn"] or streams.latest_stream_arn(values["table"])
    return streams, arn


# -- show ------------------------------------------------------------------------------------------


def _show(args: argparse.Namespace) -> int:
    store, shown = _store(args)
    streams, arn = _streams(args, required=False)
    now = store.server_time_ms()
    leases = store.leases()
    created = {lease.shard_id: _created_at_checkpoint(streams, arn, lease) for lease in leases} if streams else {}
    rows: list[dict[str, Any]] = [{
        "shard_id": lease.shard_id, "parents": list(lease.parent_ids), "children": list(lease.child_ids),
        "state": _state(lease, now), "checkpoint": lease.checkpoint or None, "position": describe_lease(lease),
        "owner": lease.owner or None, "checkpoint_created_at": created.get(lease.shard_id),
    } for lease in leases]
    if args.json:
        print(json.dumps({"group": store.group, "redis": shown, "epoch": store.epoch(), "shards": rows}, indent=2))
        return EXIT_OK
    print(f"group {store.group!r} on {shown}; epoch {store.epoch()}; {len(rows)} shards")
    _table([("SHARD", "PARENT", "STATE", "POSITION", "OWNER", "CREATED AT CHECKPOINT")] + [
        (r["shard_id"], ",".join(r["parents"]) or "-", r["state"], r["position"], r["owner"] or "-",
         r["checkpoint_created_at"] or "-") for r in rows])
    return EXIT_OK


def _created_at_checkpoint(streams: Any, arn: str | None, lease: Lease) -> str | None:
    """The approximate creation time of the record at the lease's checkpoint, if it is still readable."""
    if not lease.checkpoint.isdigit() or arn is None:
        return None
    try:
        iterator = streams.get_shard_iterator(arn, lease.shard_id, "AT_SEQUENCE_NUMBER", lease.checkpoint)
        page = streams.get_records(iterator, 1, shard_id=lease.shard_id)
    except Exception:  # trimmed, or the stream is gone: unknown, never an error of `show`
        return None
    return page.records[0].approximate_creation_time.isoformat() if page.records else None


def _state(lease: Lease, now_ms: int) -> str:
    if lease.state != "ready":
        return str(lease.state)
    if not lease.owner:
        return "free"
    return "owned" if lease.expires_ms > now_ms else "expired"


# -- rewind, import ----------------------------------------------------------------------------------


def _target(args: argparse.Namespace) -> Target:
    if args.to_sequence is not None:
        if not args.shard:
            raise ConfigError("shard (--shard)", "--to-sequence needs the shard it applies to", "add --shard ID")
        if not args.to_sequence.isdigit() or len(args.to_sequence) > 40:
            raise ConfigError("to-sequence (--to-sequence)", f"{args.to_sequence!r} is not a sequence number",
                              "give the decimal sequence number of a record of that shard")
        return Target("sequence", shard_id=args.shard, sequence_number=args.to_sequence)
    if args.shard:
        raise ConfigError("shard (--shard)", "--shard applies only to --to-sequence",
                          "drop --shard, or use --to-sequence N")
    if args.to_time is not None:
        return Target("time", time_ms=parse_time(args.to_time))
    return Target("trim_horizon" if args.to_trim_horizon else "latest")


def _rewind(args: argparse.Namespace) -> int:
    target = _target(args)
    store, shown = _store(args)
    streams, arn = _streams(args, required=True)
    epoch = store.epoch()

    def plan() -> list[Step]:
        steps = plan_rewind(target, store.leases(), streams.list_shards(arn), now_ms=int(time.time() * 1000))
        if target.kind == "sequence":
            _check_readable_after(streams, arn, target)
        return steps

    return _apply(args, store, shown, f"rewind {target.describe()}", plan, epoch)


def _check_readable_after(streams: Any, arn: str | None, target: Target) -> None:
    """Refuse a sequence number the stream gives no iterator after (beyond an open shard's last record:
    an open shard has no ending sequence number to check it against)."""
    from worker.errors import InvalidRequest, TrimmedData

    try:
        streams.get_shard_iterator(arn, target.shard_id, "AFTER_SEQUENCE_NUMBER", target.sequence_number)
    except TrimmedData:
        pass  # past the retention: the worker reads from the trim horizon, as after any trimmed checkpoint
    except InvalidRequest as exc:
        raise ConfigError("to-sequence (--to-sequence)", f"shard {target.shard_id} cannot be read after "
                          f"{target.sequence_number} ({exc})", "give the sequence number of a record of that "
                          "shard (`checkpoint show` shows each checkpoint)") from None


def _import(args: argparse.Namespace) -> int:
    from worker.checkpoints.transfer import parse_document, plan_import

    source = "stdin" if args.input == "-" else args.input
    try:
        text = sys.stdin.read() if args.input == "-" else Path(args.input).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("input (--input)", f"cannot read {source}: {exc.strerror}", "give a readable file") from None
    doc = parse_document(text, source)
    store, shown = _store(args, must_exist=False)
    streams, arn = _streams(args, required=True)
    if doc.get("stream_arn") and doc["stream_arn"] != arn:
        raise ConfigError("input (--input)", f"{source} holds positions of stream {doc['stream_arn']}, not {arn}",
                          "import it with that stream's --stream-arn/--table")
    epoch = store.epoch()
    entries = {e["shard_id"]: e for e in doc["shards"]}

    def plan() -> list[Step]:
        return plan_import(entries, store.leases(), streams.list_shards(arn), source=source)

    what = f"import {source} (group {doc.get('group')!r}, exported at {iso(int(doc.get('exported_at_ms') or 0))})"
    return _apply(args, store, shown, what, plan, epoch, mark_listed=True)


def _import_kcl(args: argparse.Namespace) -> int:
    from worker.checkpoints.kcl import read_lease_table
    from worker.checkpoints.transfer import plan_import

    store, shown = _store(args, must_exist=False)
    streams, arn = _streams(args, required=True)
    values = load_settings(["region", "endpoint_url"], args)
    entries = read_lease_table(args.lease_table, region=values["region"] or os.environ.get("AWS_REGION"),
                               endpoint_url=values["endpoint_url"])
    epoch = store.epoch()

    def plan() -> list[Step]:
        return plan_import(entries, store.leases(), streams.list_shards(arn), source=f"lease table {args.lease_table}")

    return _apply(args, store, shown, f"import-kcl --lease-table {args.lease_table}", plan, epoch, mark_listed=True)


def _apply(args: argparse.Namespace, store: LeaseStore, shown: str, what: str, plan: Callable[[], list[Step]],
           epoch: int, *, mark_listed: bool = False) -> int:
    steps = plan()
    moving = positions(steps)
    print(f"{what}: plan for group {store.group!r} on {shown} ({len(moving)} of {len(steps)} shards move)")
    _table([("SHARD", "FROM", "TO", "WHY")] + [(s.shard_id, s.before, s.after, s.why) for s in steps])
    if args.dry_run:
        print("dry run: nothing changed")
        return EXIT_OK
    if not moving:
        print("nothing to change")
        return EXIT_OK
    if not args.yes:
        _confirm(store.group)
        # The plan aged while the operator read it: a shard may have split and its child been read since,
        # which a stale plan would leave at its checkpoint.  Apply only what planning now gives.
        if positions(plan()) != moving:
            raise ConcurrentUpdate(f"group {store.group!r} or its stream changed while the plan waited for the "
                                   "confirmation: nothing changed; run the command again")
    if mark_listed:
        # Shards registered from now on are children created after these positions: read them whole,
        # never from the group's initial position.
        store.mark_listed()
    record = {"what": what, **who(), "plan": [s.to_dict() for s in steps[:PLAN_KEPT_IN_HISTORY]],
              "plan_steps": len(steps)}
    result = _reposition(store, moving, epoch, record)
    print(f"done: {len(moving)} shards moved (epoch {result.epoch}); "
          f"{len(result.fenced)} running consumers fenced off, they restart from the new positions within a heartbeat"
          + (" (a retry found the change already applied)" if result.repeated else ""))
    return EXIT_OK


def _reposition(store: LeaseStore, moving: list[Any], epoch: int, record: dict[str, Any]) -> Repositioned:
    request_id = uuid.uuid4().hex
    for attempt in range(1, REPOSITION_ATTEMPTS + 1):
        try:
            return store.reposition(moving, expected_epoch=epoch, request_id=request_id, record=record)
        except CoordinationUnavailable:
            if attempt == REPOSITION_ATTEMPTS:
                raise
            time.sleep(min(2.0 ** attempt / 4, 2.0))  # the same request: applied at most once
    raise AssertionError("unreachable")


def _confirm(group: str) -> None:
    if not sys.stdin.isatty():
        raise ConfigError("yes (--yes)", "this changes positions and stdin is not a terminal to confirm on",
                          "check the plan with --dry-run, then run again with --yes")
    answer = input(f"apply this plan to group {group!r}? type yes: ").strip().lower()
    if answer != "yes":
        raise ConfigError("yes (--yes)", "not confirmed: nothing changed", "type yes, or pass --yes")


def who() -> dict[str, str]:
    """Who is making a change: the user and host recorded with it."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment (a container without passwd entry)
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return {"user": user, "host": socket.gethostname()}


# -- export ----------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    from worker.checkpoints.transfer import export_document

    store, _ = _store(args)
    _, arn = _streams(args, required=False)
    doc = export_document(store.group, arn, store.leases(), now_ms=store.server_time_ms(), epoch=store.epoch())
    store.record_history({"what": f"export ({len(doc['shards'])} shards)", **who()})
    print(json.dumps(doc, indent=2))
    return EXIT_OK


# -- status ------------------------------------------------------------------------------------------


def history_lines(store: LeaseStore, limit: int = 3) -> list[str]:
    """The group's last rewinds, imports and exports, one line each (for ``status``)."""
    lines = []
    for entry in store.history(limit):
        moved = sum(1 for step in entry.get("plan", []) if step.get("from") != step.get("to"))
        plan = f", {moved} of {entry.get('plan_steps', 0)} shards moved" if "plan" in entry else ""
        fence = f"; leases taken since have tokens above {entry['fence_token']}" if "fence_token" in entry else ""
        lines.append(f"{iso(int(entry.get('at_ms', 0)))} {entry.get('what', '?')} by {entry.get('user', '?')}@"
                     f"{entry.get('host', '?')} (epoch {entry.get('epoch', '?')}{plan}{fence})")
    return lines


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
