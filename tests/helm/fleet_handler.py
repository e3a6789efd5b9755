"""Handler of the chart-driven fleet test: one line per record, ``worker_id event_id sequence_number``,
appended to the file named by ``SHARDLEASE_FLEET_OUT`` (set through the chart's extraEnv)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def handle(records: Sequence[Any], ctx: Any) -> None:
    lines = "".join(f"{ctx.worker_id} {r.event_id} {r.sequence_number}\n" for r in records)
    with open(os.environ["SHARDLEASE_FLEET_OUT"], "a", encoding="utf-8") as out:
        out.write(lines)
