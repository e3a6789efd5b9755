"""A handler class for the runtime-failure tests: the recording handler, plus one fault on one record,
plus a log of every call (and of ``close()``) with the process id and the lease token.

Environment:

* ``FAULTY_MODE``: what the first attempt of the batch holding record ``FAULTY_TARGET_N`` (the writer's
  counter ``n``) does: ``systemexit`` (``sys.exit(1)``), ``cancelled`` (raises
  ``asyncio.CancelledError``), ``hang`` (sleeps an hour: never returns), ``slow`` (sleeps
  ``FAULTY_SLOW_S`` seconds, then handles the batch).  Unset or empty: no fault.
* ``FAULTY_MARKER``: a file created with ``O_EXCL`` by the attempt that faults, so the fault happens
  once across every worker process; it holds that call's worker, pid, shard, token and start time.
* ``CHAOS_CALLS``: where each call's start and end go (one JSON line each, ``O_APPEND``), with
  worker, pid, shard, lease token, batch size and wall time; ``close()`` writes ``close-start`` and
  ``close-end`` lines.  A call that never returns has no ``end`` line.
* ``SHARDLEASE_TEST_SLOW_S``: every batch takes that long (the recording handler's knob).
* ``FAULTY_GATE``: while this file exists, a call that starts waits for it to be removed (at most 60 s)
  before handling its batch: the test decides when the batches in flight end.

Records are recorded (``$SHARDLEASE_TEST_OUT``, see ``tests/e2e/recording_handler.py``) only when the
call succeeds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import orjson

from tests.e2e import recording_handler

_ids = itertools.count()
_lock = threading.Lock()


def _log(event: dict[str, Any]) -> None:
    path = os.environ.get("CHAOS_CALLS")
    if path:
        recording_handler._append(path, [orjson.dumps(event)])


def _call_id() -> str:
    with _lock:
        return f"{os.getpid()}-{next(_ids)}"


def _claim_fault(ctx: Any, started: float) -> bool:
    """True for the one attempt (across processes) that faults: it created the marker file."""
    marker = os.environ.get("FAULTY_MARKER")
    if not marker:
        return False
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, orjson.dumps({"w": ctx.worker_id, "pid": os.getpid(), "shard": ctx.shard_id,
                                   "token": ctx.lease_token, "t": started}))
    finally:
        os.close(fd)
    return True


class FaultyHandler:
    def __init__(self) -> None:
        self.mode = os.environ.get("FAULTY_MODE", "")
        self.target = int(os.environ.get("FAULTY_TARGET_N", "-1"))
        self.worker = ""

    def handle(self, records: Sequence[Any], ctx: Any) -> None:
        started = time.time()
        self.worker = ctx.worker_id
        cid = _call_id()
        base = {"id": cid, "w": ctx.worker_id, "pid": os.getpid(), "shard": ctx.shard_id, "token": ctx.lease_token}
        _log({**base, "ev": "start", "t": started, "size": len(records)})
        error = ""
        try:
            gate = os.environ.get("FAULTY_GATE")
            deadline = started + 60
            while gate and os.path.exists(gate) and time.time() < deadline:
                time.sleep(0.05)
            if self.mode and self._has_target(records) and _claim_fault(ctx, started):
                if self.mode == "systemexit":
                    error = "SystemExit"
                    sys.exit(1)
                if self.mode == "cancelled":
                    error = "CancelledError"
                    raise asyncio.CancelledError("injected on the first attempt")
                if self.mode == "hang":
                    time.sleep(3600)
                if self.mode == "slow":
                    time.sleep(float(os.environ.get("FAULTY_SLOW_S", "5")))
            recording_handler.handle(records, ctx)
        except BaseException as exc:
            error = error or type(exc).__name__
            raise
        finally:
            _log({**base, "ev": "end", "t": time.time(), "error": error})

    def _has_target(self, records: Sequence[Any]) -> bool:
        for r in records:
            image = r.new_image or r.old_image or {}
            if "n" in image and int(image["n"]) == self.target:
                return True
        return False

    def close(self) -> None:
        cid = _call_id()
        base = {"id": cid, "w": self.worker, "pid": os.getpid()}
        _log({**base, "ev": "close-start", "t": time.time()})
        time.sleep(0.2)  # long enough to be caught overlapping a handler call that is still running
        _log({**base, "ev": "close-end", "t": time.time()})
