"""A Lambda-style handler whose every invocation takes $SLOW_S seconds (well under --handler-timeout);
it appends each invocation's record count and duration to $SHARDLEASE_TEST_OUT.calls."""

from __future__ import annotations

import os
import time
from typing import Any

import orjson


def handler(event: dict[str, Any], context: Any) -> None:
    started = time.monotonic()
    time.sleep(float(os.environ.get("SLOW_S", "1")))
    line = orjson.dumps({"n": len(event["Records"]), "duration_s": time.monotonic() - started})
    fd = os.open(os.environ["SHARDLEASE_TEST_OUT"] + ".calls", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line + b"\n")
    finally:
        os.close(fd)
