"""Async handlers for tests/test_async_handler.py: each appends what it saw to CALLS."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Sequence
from typing import Any

CALLS: list[tuple[str, Any]] = []


async def handle(records: Sequence[Any], ctx: Any) -> dict[str, Any]:
    await asyncio.sleep(0)
    CALLS.append(("handle", (len(records), ctx.shard_id, threading.current_thread().name)))
    return {"batchItemFailures": []}


class MixedHandler:
    """An async handle and close, a sync and an async hook."""

    def __init__(self) -> None:
        self.loop_threads: set[str] = set()

    async def handle(self, records: Sequence[Any], ctx: Any) -> None:
        self.loop_threads.add(threading.current_thread().name)
        CALLS.append(("handle", len(records)))

    def on_lease_gained(self, ctx: Any) -> None:
        CALLS.append(("gained", threading.current_thread().name))

    async def on_lease_lost(self, ctx: Any) -> None:
        await asyncio.sleep(0)
        CALLS.append(("lost", threading.current_thread().name))

    async def on_shard_end(self, ctx: Any) -> None:
        CALLS.append(("end", ctx.shard_id))

    async def close(self) -> None:
        await asyncio.sleep(0)
        CALLS.append(("close", threading.current_thread().name))


class CallableHandler:
    async def __call__(self, records: Sequence[Any], ctx: Any) -> None:
        CALLS.append(("call", len(records)))


async def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Fails every record whose image has n == 2 (a partial batch response)."""
    await asyncio.sleep(0)
    failures = [{"itemIdentifier": r["dynamodb"]["SequenceNumber"]} for r in event["Records"]
                if r["dynamodb"]["NewImage"]["n"]["N"] == "2"]
    CALLS.append(("lambda", (len(event["Records"]), context.aws_request_id)))
    return {"batchItemFailures": failures}


async def _decorated(records: Sequence[Any], ctx: Any) -> str:
    return "awaited"


def _hiding_decorator(func: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:  # no functools.wraps: looks sync
        return func(*args, **kwargs)
    return wrapper


decorated = _hiding_decorator(_decorated)
partial_handle = functools.partial(handle)


async def async_generator(records: Sequence[Any], ctx: Any) -> Any:
    yield None


class AsyncGeneratorHook:
    def handle(self, records: Sequence[Any], ctx: Any) -> None:
        return None

    async def on_shard_end(self, ctx: Any) -> Any:
        yield None
