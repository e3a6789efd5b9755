"""A handler that records the garbage collector's state at each call (tests/test_startup.py)."""

from __future__ import annotations

import gc
import os
from collections.abc import Sequence
from typing import Any

import orjson


def handle(records: Sequence[Any], ctx: Any) -> None:
    line = orjson.dumps({"n": len(records), "enabled": gc.isenabled(), "frozen": gc.get_freeze_count()})
    fd = os.open(os.environ["SHARDLEASE_TEST_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)
