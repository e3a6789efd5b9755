"""Handlers for the ``shardlease dlq replay`` tests: they record what they were given."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CALLS: list[tuple[Any, list[Any]]] = []
"""(ctx, records) of every call, in order."""


def record(records: Sequence[Any], ctx: Any) -> None:
    CALLS.append((ctx, list(records)))


def fail_on_bad(records: Sequence[Any], ctx: Any) -> None:
    """Raises for a batch holding a record whose key pk is BAD; records the others."""
    if any(r.keys.get("pk") == "BAD" for r in records):
        raise RuntimeError("handler refused\nthe BAD record")
    CALLS.append((ctx, list(records)))


def partial(records: Sequence[Any], ctx: Any) -> dict[str, Any]:
    """A Lambda-style partial-batch response naming the first record."""
    return {"batchItemFailures": [{"itemIdentifier": records[0].sequence_number}]}
