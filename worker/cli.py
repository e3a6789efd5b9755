"""The ``shardlease`` command: run, status, demo, dlq, stop-embedded.

Every error is one line on stderr (``shardlease: error: ...``, never a traceback, never a password)
and an exit code scripts and systemd can act on (:data:`EXIT_CODES`, the README's table).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import gc
import json
import logging
import math
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from leaser import ConfigError, LeaseStore, RetryableError, ShardleaseError, __version__
from leaser.snapshot import SnapshotStore
from leaser.store import list_groups
from worker.config import (
    REDIS_SETTINGS,
    SETTINGS_BY_NAME,
    add_run_arguments,
    load_run_config,
    load_settings,
    unknown_env,
)
from worker.logs import configure_logging, redact

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_ABANDONED = 3  # the same as worker.runtime.EXIT_ABANDONED (not imported: it pulls in boto3)
EXIT_TEMPFAIL = 75  # sysexits.h EX_TEMPFAIL
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "the worker stopped cleanly (SIGTERM/SIGINT: batches finished, leases handed back); any other "
              "command: done (`status` with nothing to show included)"),
    (EXIT_FATAL, "fatal runtime error (an unexpected error; `dlq replay`: some entries failed)"),
    (EXIT_USAGE, "usage or configuration error: unknown flag, bad value, missing --handler, a handler that "
                 "does not import, bad Redis credentials or TLS, a taken --metrics-port; fix the command"),
    (EXIT_ABANDONED, "the worker stopped with a handler call still running (hung, or past --shutdown-grace): "
                     "its lease was left to expire; restart it"),
    (EXIT_TEMPFAIL, "a dependency stayed unavailable at start-up (Redis unreachable, DynamoDB Streams "
                    "throttling or failing after the retries): try again later"),
    (130, "interrupted before the worker started (Ctrl-C)"),
)
"""Exit codes of ``shardlease`` and what each means; the README's table (a test checks they agree)."""

_SWITCH_VALUES = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"})

RUN_EPILOG = """example:
  shardlease run --table Orders --group orders-indexer --handler myapp.sink:handle \\
      --redis-url rediss://indexer:$REDIS_PASSWORD@redis.internal:6379/0

Every flag also has a SHARDLEASE_* environment variable (shown with it); a flag wins over its variable.
Exit codes: 0 stopped cleanly, 1 fatal error, 2 usage or configuration error, 3 stopped with a handler
call abandoned, 75 Redis or DynamoDB Streams stayed unavailable at start-up."""


def _one_line(text: str) -> str:
    return " ".join(redact(str(text)).split())


class _Parser(argparse.ArgumentParser):
    """One-line errors (exit 2) that name the closest valid flag and the command's --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)  # a prefix that works today breaks when a flag is added
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:  # one line, exit 2, as for every bad input
        self.exit(EXIT_USAGE, f"shardlease: error: {_one_line(message)} (see {self.prog} --help)\n")

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        given = list(sys.argv[1:] if args is None else args)
        parsed, extras = super().parse_known_args(given, namespace)
        if extras and not self._subparsers:  # a leaf command: say here which argument is wrong
            self.error(self._unrecognized(given, extras))
        return parsed, extras

    def _unrecognized(self, given: list[str], extras: list[str]) -> str:
        first = next((a for a in extras if a.startswith("-")), extras[0])
        if not first.startswith("-"):
            at = given.index(first) if first in given else 0
            before = given[at - 1] if at > 0 else ""
            switch = self._switch(before)
            if switch is not None and first.lower() in _SWITCH_VALUES:
                return (f"{before} is a switch and takes no value ({first!r}): give {switch[0]} to turn it on "
                        f"or {switch[1]} to turn it off")
            return f"unexpected argument {first!r}"
        name = first.split("=", 1)[0]
        options = [o for action in self._actions for o in action.option_strings if o.startswith("--")]
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
        return f"unknown option {name}" + (f"; did you mean {close[0]}?" if close else "")

    def _switch(self, flag: str) -> tuple[str, str] | None:
        for action in self._actions:
            if flag in action.option_strings and isinstance(action, argparse.BooleanOptionalAction):
                on = next(o for o in action.option_strings if not o.startswith("--no-"))
                return on, "--no-" + on[2:]
        return None


def _ranged_int(low: int, high: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is not between {low} and {high}")
        return value
    return parse


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _redis_arguments(parser: argparse.ArgumentParser) -> None:
    """The group and every Redis setting of ``run`` (URL, data dir, TLS files), from the same table."""
    add_run_arguments(parser, [SETTINGS_BY_NAME[name] for name in REDIS_SETTINGS])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shardlease", description="A DynamoDB Streams consumer with per-shard leases in Redis.")
    parser.add_argument("--version", action="version", version=f"shardlease {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser(
        "run", help="run a worker: take a fair share of the stream's shards and consume them",
        description="Run a worker: take a fair share of the stream's shards and call your handler with their "
                    "records.  --handler and one of --stream-arn / --table are required.",
        epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(run)

    snapshot = sub.add_parser(
        "snapshot", help="hand every item of the table to the handler once (the group's snapshot), then exit",
        description="Run the group's snapshot without the stream (a re-sync); workers of the group hold their "
                    "stream records back while it runs (docs/snapshot.md).  Takes the settings of run.")
    add_run_arguments(snapshot)
    snapshot.add_argument("--restart", action="store_true", help="start a new snapshot even if one ran or runs")

    status = sub.add_parser("status", help="show the group's workers and each shard's state, owner and checkpoint",
                            description="Show the group's workers (with their metrics address and version) and "
                                        "each shard's state, owner and checkpoint.  Reads only: without "
                                        "--redis-url it reads the host's embedded Redis if it is running, and "
                                        "never starts one.")
    _redis_arguments(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")

    demo = sub.add_parser("demo", help="watch three workers consume a local stream that splits (no AWS, no Redis)")
    demo.add_argument("--workers", type=_ranged_int(1, 20), default=3, help="worker processes to start, 1-20 "
                      "(default: 3)")
    demo.add_argument("--duration", type=_positive_seconds, default=20.0, help="seconds of writing (default: 20)")

    dlq = sub.add_parser("dlq", help="list or replay dead letters (batches that ran out of retries or age)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=_Parser)
    dlq_list = dlq_sub.add_parser("list", help="show dead-letter entries (oldest first)")
    dlq_replay = dlq_sub.add_parser("replay", help="call a handler with dead-letter entries; remove those it takes")
    for p in (dlq_list, dlq_replay):
        _redis_arguments(p)
        p.add_argument("--from", dest="source", default="redis", metavar="DEST",
                       help="redis (the group's stream, default), file:<path>" +
                            (" or sqs:<queue URL or ARN> (a peek)" if p is dlq_list else ""))
        add_run_arguments(p, [SETTINGS_BY_NAME["region"], SETTINGS_BY_NAME["endpoint_url"]])
    dlq_list.add_argument("--limit", type=int, default=100, help="entries to show (default: 100)")
    dlq_list.add_argument("--start", dest="start_id", default=None, metavar="ID", help="first entry id to show")
    dlq_list.add_argument("--json", action="store_true", help="print JSON (without the records' images)")
    dlq_list.add_argument("--with-records", action="store_true", help="with --json: include the records")
    add_run_arguments(dlq_replay, [SETTINGS_BY_NAME["handler"]])
    which = dlq_replay.add_mutually_exclusive_group()
    which.add_argument("--id", dest="ids", action="append", default=None, metavar="ID",
                       help="entry to replay (repeatable)")
    which.add_argument("--all", action="store_true", help="replay every entry")
    dlq_replay.add_argument("--dry-run", action="store_true", help="show what would be replayed; change nothing")

    from worker.checkpoints.parser import add_parser as add_checkpoint_parser

    add_checkpoint_parser(sub)

    stop = sub.add_parser("stop-embedded", help="stop the embedded Redis started by workers without --redis-url")
    add_run_arguments(stop, [SETTINGS_BY_NAME["data_dir"]])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        return _fail(exc, EXIT_USAGE)
    except RetryableError as exc:  # Redis or DynamoDB Streams still unavailable after the start-up retries
        return _fail(exc, EXIT_TEMPFAIL)
    except ShardleaseError as exc:
        return _fail(exc, EXIT_FATAL)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, or an error nobody translated: still one line, no traceback
        logging.getLogger("shardlease").debug("unexpected error", exc_info=True)
        return _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_FATAL)


def _fail(error: object, code: int) -> int:
    print(f"shardlease: error: {_one_line(str(error))}", file=sys.stderr)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return _run(args)
    if args.command == "status":
        return _status(args)
    if args.command == "snapshot":
        from worker.snapshot.command import run_snapshot_only

        config = load_run_config(args)
        configure_logging(config.log_format, config.log_level,
                          context={"worker_id": config.worker_id, "group": config.group})
        return run_snapshot_only(config, restart=args.restart)
    if args.command == "demo":
        from worker.demo import run_demo

        return run_demo(workers=args.workers, duration_s=args.duration)
    if args.command == "dlq":
        from worker.handling import dlq as dlq_commands

        if args.dlq_command == "list":
            return dlq_commands.cli_list(args)
        return dlq_commands.cli_replay(args)
    if args.command == "checkpoint":
        from worker.checkpoints.commands import run as run_checkpoint_command

        return run_checkpoint_command(args)
    if args.command == "stop-embedded":
        from worker.redis_setup import stop_embedded_redis

        stopped = stop_embedded_redis(load_settings(["data_dir"], args)["data_dir"])
        print("stopped the embedded Redis" if stopped else "no embedded Redis was running")
        return EXIT_OK
    return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    config = load_run_config(args)
    configure_logging(config.log_format, config.log_level,
                      context={"worker_id": config.worker_id, "group": config.group})
    for line in unknown_env(os.environ):
        logging.getLogger("shardlease").warning("%s", line)
    if config.processes > 1:  # N worker processes under one supervisor (worker/supervisor.py)
        from worker.supervisor import supervise

        return supervise(config)
    collecting = gc.isenabled()
    gc.disable()  # until the worker has started: see _started
    reclaims: list[threading.Timer] = []  # the timer _started sets (one, once the worker has started)
    try:
        from worker.runtime import Worker

        if config.redis_url is None:
            logging.getLogger("shardlease").warning(
                "no --redis-url: using an embedded Redis under %s (fit for one host only)", config.data_dir)
        worker = Worker(config)
        worker.install_signal_handlers()
        try:
            code = worker.run(on_started=(lambda: reclaims.append(_started())) if collecting else None)
        except BaseException:
            if worker.scheduler.in_flight():  # never leave a handler thread running in a process that stopped
                code = EXIT_ABANDONED
            else:
                raise
    finally:
        for timer in reclaims:  # the worker has stopped: nothing stays frozen, no timer is left behind
            timer.cancel()
            timer.join()  # a reclaim under way (it freezes again at its end) finishes before the unfreeze
            gc.unfreeze()
        if collecting:
            gc.enable()  # start-up failed before the worker started (or the worker has stopped)
    if code == EXIT_ABANDONED or worker.abandoned or worker.handler.event_loop.left_running:
        # A handler call is still running and cannot be cancelled: exit now, without waiting for
        # its thread (interpreter shutdown would), so its lease expires with this process gone.
        # Likewise a thread an async handler left in its loop's executor (asyncio.to_thread) that
        # never returns: interpreter shutdown would wait for it for ever.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    if code == EXIT_OK and worker.failure is not None:
        # The coordinator stopped on a bug (logged with its traceback); the shutdown itself went cleanly,
        # but a supervisor must see that the worker did not stop because it was asked to.
        return EXIT_FATAL
    return code


GC_RECLAIM_S = 60.0
"""Seconds after the worker started that the cyclic garbage start-up left is collected (then the heap is frozen
again)."""


def _started() -> threading.Timer:
    """The garbage collector's part of start-up: ``run`` starts with the collector off and turns it on here,
    once the worker has started (before its first heartbeat), after freezing what start-up made.

    Start-up (imports, the AWS client's models, the handler's module) makes some 120,000 objects, nearly all
    long-lived; with the collector on, about 170 collections walked them again and again: some 45 ms of CPU
    before the first GetRecords.  :func:`gc.freeze` sets them aside (objects freed by reference counting are
    freed as always), and the full collections a drain's allocations trigger no longer walk them either (12 %
    of a drain's CPU in bench/worker_throughput.py).  :data:`GC_RECLAIM_S` later, :func:`_reclaim` collects
    the cyclic garbage start-up left (the argument parser's, about 220 KiB; whatever the handler's module
    left) and freezes the heap again.  What stays out of the collector's reach for good is a reference cycle
    among objects alive at that moment that becomes garbage later.  An embedded worker (worker.embedding)
    leaves its host's collector alone.  Returns the timer (``run`` cancels it, and unfreezes, when the worker
    stops sooner).
    """
    gc.freeze()
    gc.enable()
    reclaim = threading.Timer(GC_RECLAIM_S, _reclaim)
    reclaim.name = "gc-reclaim"
    reclaim.daemon = True
    reclaim.start()
    return reclaim


def _reclaim() -> None:
    """Collect the start-up heap's cyclic garbage once, then freeze what is alive again (see :func:`_started`)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _status(args: argparse.Namespace) -> int:
    from worker.observability import REPORT_METRICS, REPORT_VERSION
    from worker.redis_setup import open_existing_redis

    values = load_settings(REDIS_SETTINGS, args)
    group = values["group"]
    opened = open_existing_redis(values["redis_url"], data_dir=values["data_dir"], ca_file=values["redis_ca_file"],
                                 cert_file=values["redis_cert_file"], key_file=values["redis_key_file"])
    if opened is None:
        note = (f"nothing to show: no --redis-url given and no embedded Redis is running under "
                f"{Path(values['data_dir']) / 'redis'} (status never starts one)")
        if args.json:
            print(json.dumps({"version": __version__, "group": group, "redis": None, "leader": None,
                              "workers": [], "shards": [], "note": note}, indent=2))
        else:
            print(note)
        return EXIT_OK
    client, shown = opened
    store = LeaseStore(client, group)
    now = store.server_time_ms()
    leases = store.leases()
    members = store.members()
    leader = store.current_leader()
    reports = store.reports(members)
    health = {lease.shard_id: _health(lease, now, reports, members) for lease in leases}
    hint = None
    if not members and not leases:
        try:
            groups: list[str] | None = [g for g in list_groups(client) if g != group]
        except RetryableError:  # the least ACL has no SCAN: the hint is a nicety, not a need
            groups = None
        hint = f"group {group!r} has no workers and no shards here; " + (
            f"groups found: {', '.join(groups)} (choose one with --group)" if groups
            else "no group has used this Redis yet" if groups is not None
            else "check --group (listing the groups needs the SCAN command, which this user may not run)")
    from worker.checkpoints.commands import history_lines

    changes = history_lines(store)
    workers = [{"worker_id": w, "leases": n, "metrics": reports.get(w, {}).get(REPORT_METRICS),
                "version": reports.get(w, {}).get(REPORT_VERSION)} for w, n in sorted(members.items())]
    if args.json:
        doc: dict[str, Any] = {
            "version": __version__,
            "group": group,
            "redis": shown,
            "leader": leader.owner if leader else None,
            "workers": workers,
            "shards": [{
                "shard_id": lease.shard_id, "state": _state(lease, now), "owner": lease.owner or None,
                "token": lease.token, "checkpoint": lease.checkpoint or None, "parents": list(lease.parent_ids),
                "checkpoint_age_s": _age(now, lease.checkpoint_ms), "owner_switches": lease.owner_switches,
                "health": health[lease.shard_id][0], "stuck_for_s": health[lease.shard_id][1],
            } for lease in leases],
        }
        if hint:
            doc["note"] = hint
        doc["position_changes"] = store.history(3)
        snapshot = SnapshotStore(client, group).state()
        if snapshot.status:
            doc["snapshot"] = dataclasses.asdict(snapshot)
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"group {group!r} on {shown}; leader: {leader.owner if leader else '(none)'}")
    from worker.snapshot.progress import progress_lines

    for line in progress_lines(SnapshotStore(client, group).state(), now):
        print(line)
    if hint:
        print(hint)
        return EXIT_OK
    print(f"{_plural(len(members), 'worker')}:" if members else "0 workers")
    if workers:
        _table([("WORKER", "LEASES", "METRICS", "VERSION")] + [
            (str(w["worker_id"]), str(w["leases"]), str(w["metrics"] or "-"), str(w["version"] or "-"))
            for w in workers], indent="  ")
    print()
    rows = [("SHARD", "STATE", "OWNER", "CHECKPOINT", "AGE", "HEALTH")]
    for lease in leases:
        age = _age(now, lease.checkpoint_ms)
        state, stuck_for = health[lease.shard_id]
        shown = "-" if state is None else state if stuck_for is None else f"{state.upper()} {stuck_for:.0f}s"
        rows.append((lease.shard_id, _state(lease, now), lease.owner or "-", lease.checkpoint or "-",
                     "-" if age is None else f"{age:.0f}s", shown))
    if changes:
        print("\nlast position changes (rewind, import, export):")
        print("\n".join("  " + line for line in changes))
    stuck = sum(1 for state, _ in health.values() if state not in (None, "ok"))
    if stuck:
        print(f"{_plural(stuck, 'shard')} stuck (marked in capitals below): see HEALTH")
        print()
    _table(rows)
    return EXIT_OK


def _table(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(indent + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


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


def markdown_exit_codes() -> str:
    """The README's exit-code table, from :data:`EXIT_CODES`."""
    lines = ["| Exit code | Meaning |", "|---|---|"]
    lines += [f"| {code} | {meaning.replace('|', '/')} |" for code, meaning in EXIT_CODES]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
