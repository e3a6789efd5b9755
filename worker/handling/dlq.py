"""``shardlease dlq list`` and ``shardlease dlq replay``: look at dead letters and re-drive them.

``--from`` names where to read: ``redis`` (default, the group's stream ``shardlease:{<group>}:dlq``),
``file:<path>`` (a JSON-lines file written by ``--on-failure file:<path>``) or, for ``list``
only, ``sqs:<queue URL or ARN>`` (a peek with VisibilityTimeout=0: nothing is hidden or deleted,
but SQS gives no order and may return only a sample).

``replay`` rebuilds each entry's records from their stored wire JSON (``Record.from_wire``),
calls the handler once per entry with a :class:`~worker.handling.handler.ShardContext` whose
``worker_id`` is ``dlq-replay`` and ``lease_token`` 0, and removes the entry only after that call
returned without raising (and without ``batchItemFailures``): deleted from the Redis stream, or
for a file, its id appended to ``<path>.replayed`` (the file itself is never rewritten).  A failing
entry stays and is reported.  Exit codes: 0 all replayed, 1 some failed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from leaser.errors import ConfigError
from worker.handling.destinations import FailureEntry, JsonLinesDestination, RedisStreamDestination, SqsDestination
from worker.handling.lambda_compat import ContextFactory, apply_handler_style
from worker.logs import redact

__all__ = ["DlqSource", "ReplayResult", "cli_list", "cli_replay", "list_entries", "open_source", "replay"]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
REPLAY_WORKER_ID = "dlq-replay"
_FROM_SETTING = "from (--from)"


class DlqSource(Protocol):
    """What ``list`` and ``replay`` need of a destination they read back."""

    def describe(self) -> str: ...

    def list(self, limit: int = 100, start_id: str | None = None) -> list[FailureEntry]: ...


class ReplayableSource(DlqSource, Protocol):
    def iter_entries(self, batch: int = 100) -> Iterator[FailureEntry]: ...

    def get(self, ids: Iterable[str]) -> dict[str, FailureEntry]: ...

    def delete(self, ids: Iterable[str]) -> int: ...


def open_source(
    spec: str,
    *,
    redis_client: Any = None,
    group: str = "default",
    region: str | None = None,
    endpoint_url: str | None = None,
) -> DlqSource:
    """The dead letters ``spec`` names (``redis`` | ``file:<path>`` | ``sqs:<queue>``); ConfigError otherwise."""
    value = (spec or "redis").strip()
    kind, _, target = value.partition(":")
    kind = kind.lower()
    if value.lower() == "redis":
        if redis_client is None:
            raise ConfigError(_FROM_SETTING, "reading the Redis stream needs a Redis client", "give --redis-url")
        return RedisStreamDestination(redis_client, group)
    if kind == "file" and target.strip():
        return JsonLinesDestination(os.path.expanduser(target.strip()))
    if kind == "sqs" and target.strip():
        return SqsDestination(target.strip(), region=region, endpoint_url=endpoint_url)
    raise ConfigError(_FROM_SETTING, f"{value!r} is not a dead-letter source",
                      "use redis, file:<path> or sqs:<queue URL or ARN>")


def list_entries(source: DlqSource, *, limit: int = 100, start_id: str | None = None) -> list[FailureEntry]:
    """Up to ``limit`` entries of ``source``, oldest first where the source has an order."""
    if limit < 1:
        raise ConfigError("limit (--limit)", f"{limit} is not a positive number", "give --limit 1 or more")
    return source.list(limit=limit, start_id=start_id)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(entries: Sequence[FailureEntry], *, error_width: int = 60) -> str:
    """The human table of ``dlq list``."""
    rows = [("ID", "FAILED_AT", "SHARD", "SEQUENCES", "RECORDS", "ATTEMPTS", "REASON", "ERROR")]
    for e in entries:
        seqs = e.first_sequence_number if e.first_sequence_number == e.last_sequence_number else (
            f"{e.first_sequence_number}..{e.last_sequence_number}")
        count = str(e.record_count) + (f" (part {e.part}/{e.parts})" if e.parts > 1 else "")
        count += " (truncated)" if e.truncated else ""
        error = f"{e.error_type}: {e.error}" if e.error_type else e.error
        rows.append((e.id or "-", e.failed_at, e.shard_id, seqs or "-", count, str(e.attempts), e.reason or "-",
                     _cut(redact(error), error_width) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


# ----------------------------------------------------------------------------
# Replay.
# ----------------------------------------------------------------------------


@dataclass
class ReplayResult:
    replayed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    """id -> one-line reason."""

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else EXIT_OK


def _batch_failures(result: Any) -> list[Any]:
    if isinstance(result, Mapping):
        failures = result.get("batchItemFailures")
        if failures:
            return list(failures)
    return []


def replay(
    source: ReplayableSource,
    handler: Any,
    *,
    ids: Sequence[str] | None = None,
    dry_run: bool = False,
    report: Any = None,
) -> ReplayResult:
    """Re-drive the entries ``ids`` (every entry when None) of ``source`` through ``handler``.

    ``handler`` has ``handle(records, ctx)`` (a :class:`~worker.handling.handler.Handler`).  Each entry is
    removed from ``source`` right after its own handler call succeeded; a failing one stays.
    Unknown ids raise ConfigError before anything is replayed.  ``report(line, ok)`` is told
    about every entry.
    """
    from worker.handling.handler import ShardContext
    from worker.reading.records import Record

    def tell(line: str, ok: bool) -> None:
        if report is not None:
            report(line, ok)

    entries: Iterable[FailureEntry]
    if ids is not None:
        wanted = list(dict.fromkeys(ids))
        found = source.get(wanted)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise ConfigError("id (--id)", f"no entry {', '.join(missing)} in {source.describe()}",
                              "see shardlease dlq list for the ids")
        entries = [found[i] for i in wanted]
    else:
        entries = source.iter_entries()
    result = ReplayResult()
    for entry in entries:
        what = f"{entry.id} (shard {entry.shard_id}, {entry.record_count} records)"
        if dry_run:
            tell(f"would replay {what}", True)
            result.replayed.append(entry.id)
            continue
        try:
            records = [Record.from_wire(raw, entry.shard_id) for raw in entry.records]
            ctx = ShardContext(shard_id=entry.shard_id, worker_id=REPLAY_WORKER_ID, stream_arn=entry.stream_arn,
                               group=entry.group, lease_token=0)
            # A Lambda-style handler gets Lambda's event, as under `shardlease run`.
            styled = apply_handler_style(handler, "auto", stream_arn=entry.stream_arn,
                                         contexts=ContextFactory(entry.group, entry.stream_arn, None, 300.0))
            failures = _batch_failures(styled.handle(records, ctx))
            if failures:
                raise RuntimeError(f"handler reported {len(failures)} batchItemFailures")
        except Exception as exc:
            reason = redact(" ".join(f"{type(exc).__name__}: {exc}".split()))[:300]
            result.failed[entry.id] = reason
            tell(f"failed {what}: {reason}", False)
            continue
        source.delete([entry.id])
        result.replayed.append(entry.id)
        tell(f"replayed {what}", True)
    return result


# ----------------------------------------------------------------------------
# The CLI (argument parsing lives in worker/cli.py).
# ----------------------------------------------------------------------------


NOTHING_TO_READ = "no --redis-url given and no embedded Redis is running under {dir} (dlq never starts one)"


def _open_from_args(args: argparse.Namespace) -> tuple[DlqSource | None, str, str]:
    """The source ``--from`` names, the group, and (when the source is None) why there is nothing to read.

    The group, Redis and AWS settings are read like ``shardlease run``'s (flag, variable, default)."""
    from worker.config import REDIS_SETTINGS, load_settings

    values = load_settings([*REDIS_SETTINGS, "region", "endpoint_url"], args)
    group = values["group"]
    spec = (args.source or "redis").strip()
    client = None
    if spec.lower() == "redis":
        from worker.redis_setup import open_existing_redis

        opened = open_existing_redis(values["redis_url"], data_dir=values["data_dir"],
                                     ca_file=values["redis_ca_file"], cert_file=values["redis_cert_file"],
                                     key_file=values["redis_key_file"])
        if opened is None:
            return None, group, NOTHING_TO_READ.format(dir=os.path.join(values["data_dir"], "redis"))
        client = opened[0]
    region = values["region"] or os.environ.get("AWS_REGION")
    source = open_source(spec, redis_client=client, group=group, region=region, endpoint_url=values["endpoint_url"])
    return source, group, ""


def cli_list(args: argparse.Namespace) -> int:
    """``shardlease dlq list``."""
    source, group, why = _open_from_args(args)
    if source is None:
        print("[]" if args.json else f"no dead letters to show: {why}")
        return EXIT_OK
    entries = list_entries(source, limit=args.limit, start_id=args.start_id)
    if args.json:
        print(json.dumps([e.to_dict(with_records=args.with_records) for e in entries], indent=2))
        return EXIT_OK
    total = getattr(source, "count", None)
    counted = f"{total()} in all" if callable(total) else "a sample (SQS has no order)"
    print(f"dead letters of group {group!r} in {redact(source.describe())}: {len(entries)} shown, {counted}")
    if entries:
        print()
        print(format_table(entries))
    return EXIT_OK


def cli_replay(args: argparse.Namespace) -> int:
    """``shardlease dlq replay``."""
    from worker.config import load_settings
    from worker.handling.handler import load_handler

    handler_path = load_settings(["handler"], args)["handler"]
    if not handler_path:
        raise ConfigError("handler (--handler / SHARDLEASE_HANDLER)", "replay needs the handler to call",
                          "give --handler package.module:function")
    if not args.all and not args.ids:
        raise ConfigError("id (--id / --all)", "nothing chosen to replay", "give --id ID (repeatable) or --all")
    if (args.source or "").strip().lower().startswith("sqs:"):
        raise ConfigError(_FROM_SETTING, "replay from SQS is not supported (reading a queue is destructive)",
                          "redrive the queue with SQS itself, or use --on-failure redis or file:<path>")
    source, _, why = _open_from_args(args)
    if source is None:
        print(f"nothing to replay: {why}")
        return EXIT_OK
    assert isinstance(source, RedisStreamDestination | JsonLinesDestination)
    handler = load_handler(handler_path)

    def report(line: str, ok: bool) -> None:
        print(line, file=sys.stdout if ok else sys.stderr)

    try:
        result = replay(source, handler, ids=None if args.all else args.ids, dry_run=args.dry_run, report=report)
    finally:
        handler.close()
    verb = "would replay" if args.dry_run else "replayed"
    summary = f"{verb} {len(result.replayed)} entries"
    if result.failed:
        summary += f"; {len(result.failed)} failed and stay in {redact(source.describe())}"
    print(summary, file=sys.stderr if result.failed else sys.stdout)
    return result.exit_code
