"""Handlers that the benchmarks' worker processes load (``--handler bench.bench_handlers:<name>``).

Both append one line per batch to ``$SHARDLEASE_BENCH_OUT`` with a single O_APPEND write, so
several worker processes can share one file (the pattern of ``tests/e2e/recording_handler.py``).
Run workers with cwd and PYTHONPATH at the repository root so ``bench.`` imports.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson


def touch(value: Any) -> int:
    """Walk a decoded value completely and return a number depending on every part of it.

    Strings and bytes count their length, numbers their integer part, maps their keys and values,
    lists and sets every element; boto3's ``Binary`` counts its ``.value``.  Nothing can be skipped
    lazily: every leaf is looked at.
    """
    if isinstance(value, str | bytes | bytearray):
        return len(value)
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, Decimal | int | float):
        return int(value) & 0xFFFF
    if isinstance(value, Mapping):
        total = 0
        for k, v in value.items():
            total += len(k) + touch(v)
        return total
    if isinstance(value, list | tuple | set | frozenset):
        total = 0
        for v in value:
            total += touch(v)
        return total
    inner = getattr(value, "value", None)  # boto3.dynamodb.types.Binary
    if inner is not None:
        return len(inner)
    raise TypeError(f"unexpected value {type(value)!r}")


def touch_record_images(keys: Any, new_image: Any, old_image: Any) -> int:
    return touch(keys) + touch(new_image) + touch(old_image)


def _append(line: bytes) -> None:
    fd = os.open(os.environ["SHARDLEASE_BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)


def touch_images(records: Sequence[Any], ctx: Any) -> None:
    """Touch every record's keys and images; append ``{t0, t1, n, acc, shard, w}`` for the batch."""
    t0 = time.time()
    acc = 0
    for r in records:
        acc += touch_record_images(r.keys, r.new_image, r.old_image)
    _append(orjson.dumps({"t0": t0, "t1": time.time(), "n": len(records), "acc": acc, "shard": ctx.shard_id,
                          "w": ctx.worker_id}))


def record_seqs(records: Sequence[Any], ctx: Any) -> None:
    """Append the batch: handler wall time, worker, shard, lease token, and per record the sequence
    number and the ``wt`` attribute (the writer's wall clock at put time)."""
    t = time.time()
    seqs = []
    wts = []
    for r in records:
        seqs.append(r.sequence_number)
        image = r.new_image or {}
        wts.append(float(image["wt"]) if "wt" in image else None)
    _append(orjson.dumps({"t": t, "w": ctx.worker_id, "shard": ctx.shard_id,
                          "token": ctx.lease_token, "seqs": seqs, "wts": wts}))
