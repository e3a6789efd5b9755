"""A configurable failing handler for the delivery-policy tests (one worker process at a time).

Environment:
  SHARDLEASE_TEST_OUT         JSON lines of records handled successfully (as recording_handler)
  SHARDLEASE_TEST_CALLS       JSON lines, one per handler call: size, first and last sequence number
  SHARDLEASE_TEST_FAIL_N      comma-separated values of the item attribute n that fail
  SHARDLEASE_TEST_FAIL_TIMES  how many times each of them fails before succeeding (-1: always)
  SHARDLEASE_TEST_FAIL_MODE   raise (the whole call fails) or partial (batchItemFailures)
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

_failures: Counter[str] = Counter()


def _append(path: str | None, lines: list[bytes]) -> None:
    if not path or not lines:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"\n".join(lines) + b"\n")
    finally:
        os.close(fd)


def _line(r: Any, ctx: Any) -> bytes:
    image = r.new_image or r.old_image or {}
    return orjson.dumps({"w": ctx.worker_id, "shard": r.shard_id, "seq": r.sequence_number, "pk": r.keys.get("pk"),
                         "n": int(image["n"]) if "n" in image else None, "ev": r.event_name,
                         "token": ctx.lease_token, "t": time.time()})


def handle(records: Sequence[Any], ctx: Any) -> Any:
    fail_n = {int(x) for x in os.environ.get("SHARDLEASE_TEST_FAIL_N", "").split(",") if x.strip()}
    times = int(os.environ.get("SHARDLEASE_TEST_FAIL_TIMES", "-1"))
    mode = os.environ.get("SHARDLEASE_TEST_FAIL_MODE", "raise")
    _append(os.environ.get("SHARDLEASE_TEST_CALLS"), [orjson.dumps(
        {"size": len(records), "first": records[0].sequence_number, "last": records[-1].sequence_number})])
    failed = []
    for r in records:
        image = r.new_image or r.old_image or {}
        n = int(image["n"]) if "n" in image else None
        if n in fail_n and (times < 0 or _failures[r.sequence_number] < times):
            _failures[r.sequence_number] += 1
            failed.append(r)
    if failed and mode == "raise":
        raise RuntimeError(f"poison records: {[r.sequence_number for r in failed]}")
    bad = {r.sequence_number for r in failed}
    _append(os.environ.get("SHARDLEASE_TEST_OUT"), [_line(r, ctx) for r in records if r.sequence_number not in bad])
    if failed:
        return {"batchItemFailures": [{"itemIdentifier": r.sequence_number} for r in failed]}
    return None
