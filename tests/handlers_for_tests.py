"""Sample handlers that tests load by import path (``handlers_for_tests:<name>``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

CALLS: list[tuple[str, Any]] = []
"""What the handlers below were called with, in order; tests clear it."""


def handle(records: Sequence[Any], ctx: Any) -> None:
    CALLS.append(("handle", (len(records), ctx.shard_id)))


def returns_value(records: Sequence[Any], ctx: Any) -> dict[str, list[Any]]:
    return {"batchItemFailures": []}


def wrong_arity(records: Sequence[Any]) -> None:
    """Takes only one parameter: not a valid handler."""


async def async_handle(records: Sequence[Any], ctx: Any) -> None:
    """Async handlers are rejected for now."""


NOT_CALLABLE = 42


class FullHandler:
    """A class with every hook; instantiated once by the loader."""

    instances = 0

    def __init__(self) -> None:
        type(self).instances += 1
        self.closed = 0

    def handle(self, records: Sequence[Any], ctx: Any) -> str:
        CALLS.append(("handle", len(records)))
        return "handled"

    def on_lease_gained(self, ctx: Any) -> None:
        CALLS.append(("gained", ctx.lease_token))

    def on_lease_lost(self, ctx: Any) -> None:
        CALLS.append(("lost", ctx.lease_token))

    def on_shard_end(self, ctx: Any) -> None:
        CALLS.append(("end", ctx.shard_id))

    def close(self) -> None:
        self.closed += 1
        CALLS.append(("close", None))


class HandleOnly:
    def handle(self, records: Sequence[Any], ctx: Any) -> None:
        CALLS.append(("handle_only", len(records)))


class CallableObject:
    def __call__(self, records: Sequence[Any], ctx: Any) -> None:
        CALLS.append(("called", len(records)))


class FailingInit:
    def __init__(self) -> None:
        raise RuntimeError("cannot connect to the sink")


class BadHook:
    def handle(self, records: Sequence[Any], ctx: Any) -> None:
        pass

    def on_lease_lost(self) -> None:  # missing ctx
        pass


instance = FullHandler()
callable_instance = CallableObject()
