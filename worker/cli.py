"""The ``shardlease`` command: run, status, demo, stop-embedded.

Bad input (a malformed ARN, a handler that does not import, an unreachable
Redis, a disabled stream, an unknown flag value) is one line on stderr naming
the setting and the fix, exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from leaser import LeaseStore, ShardleaseError
from worker.config import add_run_arguments, load_run_config
from worker.logs import configure_logging, redact

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as for every bad input
        self.exit(EXIT_USAGE, f"shardlease: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shardlease", description="A DynamoDB Streams consumer with per-shard leases in Redis.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a worker: take a fair share of the stream's shards and consume them")
    add_run_arguments(run)

    status = sub.add_parser("status", help="show the group's workers and each shard's state, owner and checkpoint")
    status.add_argument("--group", "--app", dest="group", default=None, help="consumer group [env SHARDLEASE_GROUP]")
    status.add_argument("--redis-url", dest="redis_url", default=None, help="[env SHARDLEASE_REDIS_URL]")
    status.add_argument("--data-dir", dest="data_dir", default=None, help="[env SHARDLEASE_DATA_DIR]")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    demo = sub.add_parser("demo", help="watch three workers consume a local stream that splits (no AWS, no Redis)")
    demo.add_argument("--workers", type=int, default=3, help="worker processes to start (default 3)")
    demo.add_argument("--duration", type=float, default=20.0, help="seconds of writing (default 20)")

    dlq = sub.add_parser("dlq", help="list or replay dead letters (batches that ran out of retries or age)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    dlq_list = dlq_sub.add_parser("list", help="show dead-letter entries (oldest first)")
    dlq_replay = dlq_sub.add_parser("replay", help="call a handler with dead-letter entries; remove those it takes")
    for p in (dlq_list, dlq_replay):
        p.add_argument("--group", "--app", dest="group", default=None, help="consumer group [env SHARDLEASE_GROUP]")
        p.add_argument("--redis-url", dest="redis_url", default=None, help="[env SHARDLEASE_REDIS_URL]")
        p.add_argument("--data-dir", dest="data_dir", default=None, help="[env SHARDLEASE_DATA_DIR]")
        p.add_argument("--from", dest="source", default="redis", metavar="DEST",
                       help="redis (the group's stream, default), file:<path>" +
                            (" or sqs:<queue URL or ARN> (a peek)" if p is dlq_list else ""))
        p.add_argument("--region", default=None, help="AWS region for sqs: [env SHARDLEASE_REGION]")
        p.add_argument("--endpoint-url", dest="endpoint_url", default=None, help="[env SHARDLEASE_ENDPOINT_URL]")
    dlq_list.add_argument("--limit", type=int, default=100, help="entries to show (default 100)")
    dlq_list.add_argument("--start", dest="start_id", default=None, metavar="ID", help="first entry id to show")
    dlq_list.add_argument("--json", action="store_true", help="print JSON (without the records' images)")
    dlq_list.add_argument("--with-records", action="store_true", help="with --json: include the records")
    dlq_replay.add_argument("--handler", default=None, metavar="MODULE:FN",
                            help="handler to call, package.module:function [env SHARDLEASE_HANDLER]")
    which = dlq_replay.add_mutually_exclusive_group()
    which.add_argument("--id", dest="ids", action="append", default=None, metavar="ID",
                       help="entry to replay (repeatable)")
    which.add_argument("--all", action="store_true", help="replay every entry")
    dlq_replay.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")

    stop = sub.add_parser("stop-embedded", help="stop the embedded Redis started by workers without --redis-url")
    stop.add_argument("--data-dir", dest="data_dir", default=None, help="[env SHARDLEASE_DATA_DIR]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "status":
            return _status(args)
        if args.command == "demo":
            from worker.demo import run_demo

            return run_demo(workers=args.workers, duration_s=args.duration)
        if args.command == "dlq":
            from worker.handling import dlq as dlq_commands

            if args.dlq_command == "list":
                return dlq_commands.cli_list(args)
            return dlq_commands.cli_replay(args)
        if args.command == "stop-embedded":
            from worker.redis_setup import stop_embedded_redis

            stopped = stop_embedded_redis(_setting(args.data_dir, "SHARDLEASE_DATA_DIR", ".shardlease"))
            print("stopped the embedded Redis" if stopped else "no embedded Redis was running")
            return 0
    except ShardleaseError as exc:
        print(f"shardlease: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


def _setting(value: str | None, env: str, default: str) -> str:
    return value or os.environ.get(env) or default


def _run(args: argparse.Namespace) -> int:
    config = load_run_config(args)
    configure_logging(config.log_format, config.log_level,
                      context={"worker_id": config.worker_id, "group": config.group})
    from worker.runtime import EXIT_ABANDONED, Worker

    if config.redis_url is None:
        logging.getLogger("shardlease").warning(
            "no --redis-url: using an embedded Redis under %s (fit for one host only)", config.data_dir)
    worker = Worker(config)
    worker.install_signal_handlers()
    code = worker.run()
    if code == EXIT_ABANDONED:
        # A handler call is still running and cannot be cancelled: exit now, without waiting for
        # its thread (interpreter shutdown would), so its lease expires with this process gone.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _status(args: argparse.Namespace) -> int:
    from leaser import validate_group
    from worker.redis_setup import open_redis

    group = validate_group(_setting(args.group, "SHARDLEASE_GROUP", "default"))
    url = args.redis_url or os.environ.get("SHARDLEASE_REDIS_URL") or None
    client, shown = open_redis(url, data_dir=_setting(args.data_dir, "SHARDLEASE_DATA_DIR", ".shardlease"))
    store = LeaseStore(client, group)
    now = store.server_time_ms()
    leases = store.leases()
    members = store.members()
    leader = store.current_leader()
    reports = store.reports(members)
    health = {lease.shard_id: _health(lease, now, reports, members) for lease in leases}
    if args.json:
        print(json.dumps({
            "group": group,
            "redis": shown,
            "leader": leader.owner if leader else None,
            "workers": [{"worker_id": w, "leases": n} for w, n in sorted(members.items())],
            "shards": [{
                "shard_id": lease.shard_id, "state": _state(lease, now), "owner": lease.owner or None,
                "token": lease.token, "checkpoint": lease.checkpoint or None, "parents": list(lease.parent_ids),
                "checkpoint_age_s": _age(now, lease.checkpoint_ms), "owner_switches": lease.owner_switches,
                "health": health[lease.shard_id][0], "stuck_for_s": health[lease.shard_id][1],
            } for lease in leases],
        }, indent=2))
        return 0
    print(f"group {group!r} on {shown}; leader: {leader.owner if leader else '(none)'}")
    print(f"{len(members)} workers: " + ", ".join(f"{w} ({n} leases)" for w, n in sorted(members.items())))
    print()
    rows = [("SHARD", "STATE", "OWNER", "CHECKPOINT", "AGE", "HEALTH")]
    for lease in leases:
        age = _age(now, lease.checkpoint_ms)
        state, stuck_for = health[lease.shard_id]
        shown = "-" if state is None else state if stuck_for is None else f"{state.upper()} {stuck_for:.0f}s"
        rows.append((lease.shard_id, _state(lease, now), lease.owner or "-", lease.checkpoint or "-",
                     "-" if age is None else f"{age:.0f}s", shown))
    stuck = sum(1 for state, _ in health.values() if state not in (None, "ok"))
    if stuck:
        print(f"{stuck} shards stuck (marked in capitals below): see HEALTH")
        print()
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


NO_CONSUMER_AFTER_MS = 10_000
"""A lease held this long with no consumer in its owner's report counts as stuck (``no_consumer``)."""


def _health(lease: Any, now_ms: int, reports: dict[str, dict[str, str]],
            members: dict[str, int]) -> tuple[str | None, float | None]:
    """How an owned shard fares, from its owner's report: (state, seconds stuck or None).

    ``ok``; ``retrying``, ``hung``, ``read_failing`` or ``renewal_late`` with how long; ``no_consumer``
    when its live owner reports no consumer for it; (None, None) for a shard nobody holds.
    """
    if _state(lease, now_ms) != "owned":
        return None, None
    note = reports.get(lease.owner, {}).get(lease.shard_id)
    if note is None:
        if lease.owner in members and now_ms - lease.acquired_ms > NO_CONSUMER_AFTER_MS:
            return "no_consumer", round((now_ms - lease.acquired_ms) / 1000, 1)
        return "ok", None
    if note == "ok":
        return "ok", None
    state, _, since = note.partition(":")
    return state, round(max(0, now_ms - int(since or now_ms)) / 1000, 1)


def _state(lease: Any, now_ms: int) -> str:
    if lease.state != "ready":
        return str(lease.state)
    if not lease.owner:
        return "free"
    return "owned" if lease.expires_ms > now_ms else "expired"


def _age(now_ms: int, then_ms: int) -> float | None:
    return round((now_ms - then_ms) / 1000, 1) if then_ms else None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

