"""The ``shardlease checkpoint`` command's arguments (:mod:`worker.checkpoints.commands` runs it).

A module of its own so that building the CLI's parser, which every command does (``run`` included),
does not import what only the checkpoint commands need.
"""

from __future__ import annotations

import argparse
from typing import Any

from worker.config import REDIS_SETTINGS, SETTINGS_BY_NAME, add_run_arguments

STREAM_SETTINGS = ("stream_arn", "table", "region", "endpoint_url")


def add_parser(sub: Any) -> None:
    """The ``checkpoint`` command and its sub-commands, on the CLI's sub-parsers."""
    top = sub.add_parser("checkpoint", help="show, rewind, export or import the group's positions (checkpoints)")
    cmds = top.add_subparsers(dest="checkpoint_command", required=True, parser_class=type(top))

    def common(p: argparse.ArgumentParser, *, stream: bool) -> None:
        add_run_arguments(p, [SETTINGS_BY_NAME[name] for name in REDIS_SETTINGS])
        if stream:
            add_run_arguments(p, [SETTINGS_BY_NAME[name] for name in STREAM_SETTINGS])

    def changing(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dry-run", action="store_true",
                       help="print the plan (per shard: from, to, why); change nothing")
        p.add_argument("--yes", action="store_true", help="apply without asking (needed when stdin is not a terminal)")

    show = cmds.add_parser("show", help="each shard's lineage, state, checkpoint and owner")
    common(show, stream=True)
    show.add_argument("--json", action="store_true", help="print JSON instead of a table")

    rewind = cmds.add_parser("rewind", help="move the group's positions back (or forward), fenced against running "
                                            "workers")
    common(rewind, stream=True)
    to = rewind.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-time", metavar="ISO8601", help="handle again every record created at or after this time "
                    "(records of the same second just before it may be included)")
    to.add_argument("--to-trim-horizon", action="store_true", help="handle again every record still in the stream")
    to.add_argument("--to-latest", action="store_true", help="skip every record written before now")
    to.add_argument("--to-sequence", metavar="N", help="with --shard: handle again the records after sequence "
                    "number N of that shard")
    rewind.add_argument("--shard", metavar="ID", help="the shard --to-sequence applies to")
    changing(rewind)

    export = cmds.add_parser("export", help="print the group's positions as JSON (for `checkpoint import`)")
    common(export, stream=True)

    imp = cmds.add_parser("import", help="set the group's positions from a file written by `checkpoint export`")
    common(imp, stream=True)
    imp.add_argument("--input", required=True, metavar="PATH", help="the position file ('-' for stdin)")
    changing(imp)

    kcl = cmds.add_parser("import-kcl", help="set the group's positions from a KCL (or DynamoDB Streams Kinesis "
                                             "Adapter) lease table")
    common(kcl, stream=True)
    kcl.add_argument("--lease-table", required=True, metavar="TABLE", help="the KCL application's lease table")
    changing(kcl)
