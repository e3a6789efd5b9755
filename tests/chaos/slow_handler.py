"""The recording handler, but a few batches (seeded) take longer than the endpoint's iterator TTL.

A slow batch makes the shard's next iterator expire (the consumer resumes after its checkpoint) and
widens the window in which a fault catches a batch in flight.  ``CHAOS_SLOW_P`` is the chance per
batch (default 0.05), ``CHAOS_SLOW_S`` its duration (default 3.5 s), ``CHAOS_HANDLER_SEED`` the seed.
With ``CHAOS_CALLS`` set, each call's start and end go there too, in the format of
``tests/chaos/faulty_handler.py`` (read them with ``harness.read_calls``).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Sequence
from typing import Any

from tests.chaos.faulty_handler import _call_id, _log
from tests.e2e import recording_handler

_rng: random.Random | None = None


def handle(records: Sequence[Any], ctx: Any) -> None:
    global _rng
    if _rng is None:
        _rng = random.Random(f"{os.environ.get('CHAOS_HANDLER_SEED', '0')}-{ctx.worker_id}")
    logged = bool(os.environ.get("CHAOS_CALLS"))
    if logged:
        base = {"id": _call_id(), "w": ctx.worker_id, "pid": os.getpid(), "shard": ctx.shard_id,
                "token": ctx.lease_token}
        _log({**base, "ev": "start", "t": time.time(), "size": len(records)})
    error = ""
    try:
        if _rng.random() < float(os.environ.get("CHAOS_SLOW_P", "0.05")):
            time.sleep(float(os.environ.get("CHAOS_SLOW_S", "3.5")))
        recording_handler.handle(records, ctx)
    except BaseException as exc:
        error = type(exc).__name__
        raise
    finally:
        if logged:
            _log({**base, "ev": "end", "t": time.time(), "error": error})
