"""A handler for end-to-end tests: appends one JSON line per record to $SHARDLEASE_TEST_OUT.

Each line: worker, shard, sequence number, key, a counter value from the image, the lease token,
and the wall time.  Lines are written with one O_APPEND write each, so several worker processes
can share the file.  $SHARDLEASE_TEST_SLOW_S makes each batch take that long (to catch batches
in flight at a kill or handoff); with $SHARDLEASE_TEST_CALLS set, each call's shard, size, start and end
times go there too, and how many objects the process had frozen out of the cyclic GC's reach.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson


def handle(records: Sequence[Any], ctx: Any) -> None:
    started = time.time()
    slow = float(os.environ.get("SHARDLEASE_TEST_SLOW_S") or 0)
    if slow:
        time.sleep(slow)
    lines = []
    now = time.time()
    for r in records:
        image = r.new_image or r.old_image or {}
        lines.append(orjson.dumps({
            "w": ctx.worker_id, "shard": r.shard_id, "seq": r.sequence_number, "pk": r.keys.get("pk"),
            "n": int(image["n"]) if "n" in image else None, "ev": r.event_name, "token": ctx.lease_token,
            "t": now,
        }))
    _append(os.environ["SHARDLEASE_TEST_OUT"], lines)
    if os.environ.get("SHARDLEASE_TEST_CALLS"):
        _append(os.environ["SHARDLEASE_TEST_CALLS"], [orjson.dumps(
            {"shard": ctx.shard_id, "size": len(records), "start": started, "end": time.time(),
             "frozen": gc.get_freeze_count()})])


def _append(path: str, lines: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"\n".join(lines) + b"\n")
    finally:
        os.close(fd)
