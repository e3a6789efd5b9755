"""Async handlers for tests/e2e/test_async_handlers.py, run by real worker processes.

``handle`` is :func:`tests.e2e.recording_handler.handle` made async: it awaits
``$ASYNC_SLEEP_S`` (default 5 ms, an I/O call) per batch, then appends one line per record to
$SHARDLEASE_TEST_OUT.  Knobs (environment):

* ``ASYNC_HANG_N``: the first call whose batch holds the record with this counter value never
  returns (until cancelled); later calls handle it normally.
* ``ASYNC_STUBBORN_N``: a call whose batch holds this counter value swallows every cancellation and
  never returns (a hung call even for an async handler).
* ``ASYNC_STUCK_THREAD_N``: a call whose batch holds this counter value starts a thread
  (``asyncio.to_thread``) that never returns, gives up waiting for it after 0.2 s, and goes on.
* ``ASYNC_SLOW_N``: a call whose batch holds this counter value writes ``started`` to
  $SHARDLEASE_TEST_OUT.marks, awaits 30 s, and writes ``unwound`` there when it ends or is cancelled.
* ``ASYNC_SLOW_UNWIND_N``: as ``ASYNC_SLOW_N``, but the call takes 0.8 s to unwind (before ``unwound``).

``snapshot_lanes`` is for snapshot pages under ``--parallelization-factor 2``: a call holding item ``n`` =
``SNAPSHOT_SLOW_N`` writes ``started`` to $SHARDLEASE_TEST_OUT.marks and awaits 30 s (``unwound`` when it ends or is
cancelled); a call holding ``SNAPSHOT_FAIL_N`` raises (every attempt).  A call on stream records holding
``STREAM_SLOW_UNWIND_N`` writes ``stream-started``, awaits 30 s and, when cancelled, takes 0.8 s to unwind (then
``stream-unwound``).  Other calls do nothing.

``SlowShardEnd`` (``--handler tests.e2e.async_recording_handler:SlowShardEnd``) handles records as ``handle``
does, and its async ``on_shard_end`` hook writes ``hook-started`` to $SHARDLEASE_TEST_OUT.marks, awaits 30 s,
and writes ``hook-unwound`` there when it ends or is cancelled.

``lambda_handler`` is an async Lambda-style handler (no Powertools): it reports the record with
counter ``ASYNC_FAIL_N`` in ``batchItemFailures`` on its first attempt, and appends one line per
invocation (the batch's sequence numbers, the failed ones) to $SHARDLEASE_TEST_OUT.calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from typing import Any

import orjson

from tests.e2e.recording_handler import _append

_hung_once: set[int] = set()
_failed_once: set[int] = set()


def _n(image: dict[str, Any]) -> int | None:
    return int(image["n"]) if "n" in image else None


def _knob(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


async def handle(records: Sequence[Any], ctx: Any) -> None:
    ns = [_n(r.new_image or r.old_image or {}) for r in records]
    hang, slow = _knob("ASYNC_HANG_N"), _knob("ASYNC_SLOW_N")
    if hang is not None and hang in ns and hang not in _hung_once:
        _hung_once.add(hang)
        await asyncio.Event().wait()  # never set: only a cancellation ends this call
    stubborn = _knob("ASYNC_STUBBORN_N")
    if stubborn is not None and stubborn in ns:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # the mistake: swallowing the cancellation
    stuck_thread = _knob("ASYNC_STUCK_THREAD_N")
    if stuck_thread is not None and stuck_thread in ns:
        # A blocking call handed to a thread that never returns; the coroutine gives up on it after 0.2 s.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(time.sleep, 3600), 0.2)
    slow_unwind = _knob("ASYNC_SLOW_UNWIND_N")
    if (slow is not None and slow in ns) or (slow_unwind is not None and slow_unwind in ns):
        marks = os.environ["SHARDLEASE_TEST_OUT"] + ".marks"
        _append(marks, [b"started"])
        try:
            await asyncio.sleep(30)
        finally:
            if slow_unwind in ns:
                await asyncio.sleep(0.8)  # cancelled once: this await runs to its end
            _append(marks, [b"unwound"])
    await asyncio.sleep(float(os.environ.get("ASYNC_SLEEP_S") or 0.005))
    now = time.time()
    _append(os.environ["SHARDLEASE_TEST_OUT"], [orjson.dumps({
        "w": ctx.worker_id, "shard": r.shard_id, "seq": r.sequence_number, "pk": r.keys.get("pk"), "n": n,
        "token": ctx.lease_token, "t": now}) for r, n in zip(records, ns, strict=True)])


async def snapshot_lanes(records: Sequence[Any], ctx: Any) -> None:
    ns = [_n(r.new_image or r.old_image or {}) for r in records]
    marks = os.environ["SHARDLEASE_TEST_OUT"] + ".marks"
    if not ctx.shard_id.startswith("snapshot:"):
        if _knob("STREAM_SLOW_UNWIND_N") in ns:
            _append(marks, [b"stream-started"])
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.sleep(0.8)  # cancelled once: this await runs to its end
                _append(marks, [b"stream-unwound"])
        return
    if _knob("SNAPSHOT_FAIL_N") in ns:
        raise RuntimeError("failing on purpose")
    if _knob("SNAPSHOT_SLOW_N") in ns:
        _append(marks, [b"started"])
        try:
            await asyncio.sleep(30)
        finally:
            _append(marks, [b"unwound"])


class SlowShardEnd:
    async def handle(self, records: Sequence[Any], ctx: Any) -> None:
        await handle(records, ctx)

    async def on_shard_end(self, ctx: Any) -> None:
        marks = os.environ["SHARDLEASE_TEST_OUT"] + ".marks"
        _append(marks, [b"hook-started"])
        try:
            await asyncio.sleep(30)
        finally:
            _append(marks, [b"hook-unwound"])


async def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    await asyncio.sleep(0.005)
    fail = _knob("ASYNC_FAIL_N")
    failures = []
    for r in event["Records"]:
        n = int(r["dynamodb"]["NewImage"]["n"]["N"])
        if n == fail and n not in _failed_once:
            _failed_once.add(n)
            failures.append({"itemIdentifier": r["dynamodb"]["SequenceNumber"]})
    _append(os.environ["SHARDLEASE_TEST_OUT"] + ".calls", [orjson.dumps({
        "seqs": [r["dynamodb"]["SequenceNumber"] for r in event["Records"]],
        "failed": [f["itemIdentifier"] for f in failures], "request": context.aws_request_id})])
    return {"batchItemFailures": failures}
