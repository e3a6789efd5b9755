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
    from worker.runtime import Worker

    if config.redis_url is None:
        logging.getLogger("shardlease").warning(
            "no --redis-url: using an embedded Redis under %s (fit for one host only)", config.data_dir)
    worker = Worker(config)
    worker.install_signal_handlers()
    return worker.run()


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
            } for lease in leases],
        }, indent=2))
        return 0
    print(f"group {group!r} on {shown}; leader: {leader.owner if leader else '(none)'}")
    print(f"{len(members)} workers: " + ", ".join(f"{w} ({n} leases)" for w, n in sorted(members.items())))
    print()
    rows = [("SHARD", "STATE", "OWNER", "CHECKPOINT", "AGE")]
    for lease in leases:
        age = _age(now, lease.checkpoint_ms)
        rows.append((lease.shard_id, _state(lease, now), lease.owner or "-", lease.checkpoint or "-",
                     "-" if age is None else f"{age:.0f}s"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    return 0


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

