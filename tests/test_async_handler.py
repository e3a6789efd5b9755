"""Async handlers: loading rules, the event loop thread, timeout cancellation, the second signal, stalls."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from leaser.errors import ConfigError
from tests.test_delivery import Destination, record
from worker.handling import aio
from worker.handling.aio import EventLoopThread, HandlerCancelled, HandlerTimeout
from worker.handling.calls import HandlerCalls
from worker.handling.delivery import BatchDelivery, DeliveryPolicy, FailureContext
from worker.handling.handler import ShardContext, as_handler, load_handler
from worker.handling.lambda_compat import ContextFactory, apply_handler_style, parse_batch_response
from worker.observability import Metrics

MOD = "tests.async_handlers_for_tests"
samples = importlib.import_module(MOD)
CTX = ShardContext(shard_id="shard-1", worker_id="w1", stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/t/"
                   "stream/x", group="g", lease_token=7)


def aio_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("shardlease-aio")]


@pytest.fixture(autouse=True)
def clean() -> Iterator[None]:
    samples.CALLS.clear()
    yield
    samples.CALLS.clear()
    assert aio_threads() == [], "a test left an event loop thread running"


# -- loading rules -------------------------------------------------------------------------------------


def test_async_function_runs_on_the_loop_thread_and_close_stops_it() -> None:
    handler = load_handler(f"{MOD}:handle")
    assert handler.is_async and not handler.event_loop.started  # lazily: no thread before the first call
    assert aio_threads() == []
    assert handler.handle([1, 2], CTX) == {"batchItemFailures": []}
    assert samples.CALLS == [("handle", (2, "shard-1", aio.LOOP_THREAD_NAME))]
    assert sorted(aio_threads()) == [aio.LOOP_THREAD_NAME, aio.WATCHDOG_THREAD_NAME]
    handler.close()
    assert aio_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        handler.handle([1], CTX)


def test_a_sync_handler_never_starts_a_loop() -> None:
    handler = as_handler(lambda records, ctx: len(records))
    assert not handler.is_async
    assert handler.handle([1, 2, 3], CTX) == 3
    assert not handler.event_loop.started and aio_threads() == []
    assert handler.cancel_running(1.0) == 0
    handler.close()


def test_class_with_a_mix_of_sync_and_async_methods() -> None:
    handler = load_handler(f"{MOD}:MixedHandler")
    assert handler.is_async
    handler.on_lease_gained(CTX)
    handler.handle([1, 2, 3], CTX)
    handler.on_shard_end(CTX)
    handler.on_lease_lost(CTX)
    handler.close()
    handler.close()  # once only
    me = threading.current_thread().name
    expected = [("gained", me), ("handle", 3), ("end", "shard-1"), ("lost", aio.LOOP_THREAD_NAME),
                ("close", aio.LOOP_THREAD_NAME)]
    assert list(samples.CALLS) == expected
    assert handler.target.loop_threads == {aio.LOOP_THREAD_NAME}


def test_async_dunder_call_and_partial_and_a_decorator_that_hides_async() -> None:
    for name in ("CallableHandler", "partial_handle"):
        handler = load_handler(f"{MOD}:{name}")
        assert handler.is_async, name
        handler.handle([1], CTX)
        handler.close()
    assert samples.CALLS[0] == ("call", 1) and samples.CALLS[1][0] == "handle"
    # A wrapper without functools.wraps looks sync; the coroutine it returns is still awaited, never dropped.
    hidden = load_handler(f"{MOD}:decorated")
    assert not hidden.is_async
    assert hidden.handle([], CTX) == "awaited"
    hidden.close()


@pytest.mark.parametrize(("attr", "fragment"), [
    ("async_generator", "is an async generator"),
    ("AsyncGeneratorHook", "on_shard_end is an async generator"),
])
def test_async_generators_are_one_line_config_errors(attr: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_handler(f"{MOD}:{attr}")
    message = str(info.value)
    assert fragment in message and "\n" not in message and "--handler" in message


def test_async_lambda_handler_with_a_partial_batch_response() -> None:
    handler = load_handler(f"{MOD}:lambda_handler")
    styled = apply_handler_style(handler, "auto", stream_arn=CTX.stream_arn,
                                 contexts=ContextFactory("g", CTX.stream_arn, None, 30, memory_mb=128))
    assert styled is not handler  # detected as Lambda style from (event, context)
    batch = [record(i) for i in range(4)]
    response = styled.handle(batch, CTX)
    outcome = parse_batch_response(response, batch)
    assert outcome.failed_index == 2
    assert samples.CALLS[0][0] == "lambda" and samples.CALLS[0][1][0] == 4
    styled.close()
    assert aio_threads() == []


def test_an_exception_in_a_coroutine_reaches_the_caller_unchanged() -> None:
    async def fails(records: Sequence[Any], ctx: Any) -> None:
        raise KeyError("missing")

    handler = as_handler(fails)
    with pytest.raises(KeyError, match="missing"):
        handler.handle([], CTX)
    handler.close()


# -- concurrency ---------------------------------------------------------------------------------------


def test_calls_from_different_threads_run_concurrently_on_one_loop() -> None:
    """Two calls that each wait for the other can only both finish if they run at once."""
    arrived: list[str] = []
    both = asyncio.Event()

    async def meet(records: Sequence[Any], ctx: Any) -> str:
        arrived.append(ctx.shard_id)
        if len(arrived) == 2:
            both.set()
        await asyncio.wait_for(both.wait(), 10)
        return threading.current_thread().name

    handler = as_handler(meet)
    results: dict[str, Any] = {}

    def call(shard: str) -> None:
        ctx = ShardContext(shard_id=shard, worker_id="w1", stream_arn="a", group="g", lease_token=1)
        results[shard] = handler.handle([], ctx)

    threads = [threading.Thread(target=call, args=(s,)) for s in ("s1", "s2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    handler.close()
    assert results == {"s1": aio.LOOP_THREAD_NAME, "s2": aio.LOOP_THREAD_NAME}


def test_the_lanes_of_one_batch_run_concurrently_on_the_loop_each_in_order() -> None:
    """--parallelization-factor 2: the two lanes' heads meet on the loop (so they run at once); each key's
    records are handled in order."""
    from concurrent.futures import ThreadPoolExecutor

    from worker.handling.delivery import lane_of

    keys = ["a"]
    keys.append(next(k for k in (f"k{i}" for i in range(100))
                     if lane_of(record(0, k), 2) != lane_of(record(0, "a"), 2)))
    records = [record(i, keys[i % 2]) for i in range(6)]
    lanes_met = asyncio.Event()
    heads: set[str] = set()
    seen: list[tuple[str, int]] = []

    async def meet(batch: Sequence[Any], ctx: Any) -> None:
        key = batch[0].keys["pk"]
        heads.add(key)
        if len(heads) == 2:
            lanes_met.set()
        await asyncio.wait_for(lanes_met.wait(), 10)
        seen.extend((r.keys["pk"], int(r.new_image["n"])) for r in batch)

    handler = as_handler(meet)
    with ThreadPoolExecutor(2) as lanes:
        d = BatchDelivery(records=records, call=lambda batch: handler.handle(batch, CTX),
                          policy=DeliveryPolicy(parallelization_factor=2), destination=Destination(),
                          failure=FailureContext("g", CTX.stream_arn, "shard-1", "w1"), metrics=Metrics("w1", "g"),
                          backoff=lambda attempt: 0.0, executor=lanes)
        d.run_round()
    handler.close()
    assert d.finished and d.done_prefix() == 6
    for key in keys:
        assert [n for k, n in seen if k == key] == sorted(n for k, n in seen if k == key)
    assert len(seen) == 6


# -- timeout -------------------------------------------------------------------------------------------


def test_a_coroutine_past_the_timeout_is_cancelled_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    unwound = threading.Event()

    async def hangs(records: Sequence[Any], ctx: Any) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            unwound.set()

    handler = as_handler(hangs)
    handler.use_runtime(timeout_s=0.2)
    with caplog.at_level(logging.ERROR, "shardlease.aio"), pytest.raises(HandlerTimeout):
        handler.handle([], CTX)
    assert unwound.is_set()
    assert any(r.shard_id == "shard-1" and "cancelled" in r.getMessage() for r in caplog.records)  # type: ignore[attr-defined]
    handler._handle = samples.handle  # the same loop serves the next call
    assert handler.handle([1], CTX) == {"batchItemFailures": []}
    handler.close()


def test_a_coroutine_that_swallows_its_cancellation_is_waited_for_as_a_hung_call(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aio, "CANCEL_GRACE_S", 0.2)
    release = threading.Event()
    seen: dict[str, float | None] = {}

    async def stubborn(records: Sequence[Any], ctx: Any) -> str:
        with contextlib.suppress(asyncio.CancelledError):  # swallowed: keeps running
            await asyncio.sleep(3600)
        while not release.is_set():
            await asyncio.sleep(0.01)
        return "finished late"

    handler = as_handler(stubborn)
    handler.use_runtime(timeout_s=0.2)
    calls = HandlerCalls()
    errors: list[BaseException] = []

    def step() -> None:
        with calls.running() as call:
            seen["started"] = call.started
            try:
                handler.handle([], CTX)
            except BaseException as exc:
                errors.append(exc)

    with caplog.at_level(logging.ERROR, "shardlease.aio"):
        thread = threading.Thread(target=step)
        thread.start()
        deadline = time.monotonic() + 10
        while "ignored its cancellation" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "ignored its cancellation" in caplog.text
        assert thread.is_alive()  # still waited for: the hang watchdog and --on-handler-timeout take over
        # The watchdog judges it hung only after the cancellation's grace.
        assert calls.oldest_start() == pytest.approx(seen["started"] + 0.2)
        release.set()
        thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], HandlerTimeout)  # returned late: still a failed call
    handler.close()


def test_a_timed_out_batch_is_retried_bisected_and_sent_to_the_destination_like_a_raising_one() -> None:
    """Records 0..3 where n == 2 hangs: bisected down to record 2, which goes to the destination once its retry
    also times out; every other record is handled."""
    handled: list[int] = []

    async def hangs_on_2(records: Sequence[Any], ctx: Any) -> None:
        ns = [int(r.new_image["n"]) for r in records]
        if 2 in ns:
            await asyncio.sleep(3600)
        handled.extend(ns)

    handler = as_handler(hangs_on_2)
    handler.use_runtime(timeout_s=0.1)
    records = [record(i) for i in range(4)]
    dest = Destination()
    d = BatchDelivery(records=records, call=lambda batch: handler.handle(batch, CTX),
                      policy=DeliveryPolicy(max_retry_attempts=1, bisect_on_error=True), destination=dest,
                      failure=FailureContext("g", CTX.stream_arn, "shard-1", "w1"), metrics=Metrics("w1", "g"),
                      backoff=lambda attempt: 0.0)
    for _ in range(50):
        if d.finished:
            break
        d.run_round()
    handler.close()
    assert d.finished and d.done_prefix() == 4
    assert sorted(handled) == [0, 1, 3]
    assert len(dest.entries) == 1 and dest.entries[0].error_type == "HandlerTimeout"
    assert dest.entries[0].first_sequence_number == records[2].sequence_number


# -- the second signal ---------------------------------------------------------------------------------


class _Exited(Exception):
    pass


def _second_signal(monkeypatch: pytest.MonkeyPatch, handler: Any, events: list[str], *, snapshot: bool) -> None:
    """Send a bare Worker (its first signal already handled) a second SIGTERM; its manager, snapshot runner (if
    ``snapshot``) and ``os._exit`` append to ``events`` (the exit raises :class:`_Exited`)."""
    from worker.runtime import Worker

    worker = Worker.__new__(Worker)
    worker.handler, worker._signals = handler, 1
    worker.manager = SimpleNamespace(  # type: ignore[assignment]
        leave_leases_to_expire=lambda: events.append("leases left to expire"))
    worker.snapshot = SimpleNamespace(  # type: ignore[assignment]
        leave_segments_to_expire=lambda: events.append("segments left to expire")) if snapshot else None

    def fake_exit(code: int) -> None:
        events.append(f"exit {code}")
        raise _Exited

    monkeypatch.setattr(os, "_exit", fake_exit)
    with pytest.raises(_Exited):
        worker._on_signal(signal.SIGTERM, None)


def test_a_second_signal_cancels_the_coroutines_in_flight_before_exiting(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    running = threading.Event()

    async def slow(records: Sequence[Any], ctx: Any) -> None:
        running.set()
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # unwinding may await
            events.append("unwound")

    handler = as_handler(slow)
    outcome: list[BaseException] = []

    def step() -> None:
        try:
            handler.handle([], CTX)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=step)
    thread.start()
    assert running.wait(10)
    _second_signal(monkeypatch, handler, events, snapshot=True)
    thread.join(10)
    # No release from the moment calls unwind:
    assert events == ["leases left to expire", "segments left to expire", "unwound", "exit 1"]
    assert len(outcome) == 1 and isinstance(outcome[0], HandlerCancelled)
    handler.close()


def test_a_second_signal_exits_even_when_cancelling_the_calls_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []

    def cancel_running() -> int:
        events.append("cancel")
        raise RuntimeError("the event loop is gone")

    _second_signal(monkeypatch, SimpleNamespace(cancel_running=cancel_running), events, snapshot=False)
    assert events == ["leases left to expire", "cancel", "exit 1"]


# -- stalls --------------------------------------------------------------------------------------------


def test_a_blocking_call_in_a_coroutine_is_logged_with_its_shard(caplog: pytest.LogCaptureFixture) -> None:
    lags: list[float] = []
    loop = EventLoopThread(on_lag=lags.append, stall_threshold_s=0.2)

    async def blocks() -> None:
        time.sleep(0.7)  # the mistake: a blocking call on the loop

    async def polite() -> None:
        await asyncio.sleep(0.3)

    with caplog.at_level(logging.WARNING, "shardlease.aio"):
        loop.run(polite(), label="shard-quiet")
        loop.run(blocks(), label="shard-7")
        time.sleep(3 * aio.TICK_S)
    loop.close()
    stalls = [r for r in caplog.records if "event loop blocked" in r.getMessage()]
    assert len(stalls) == 1
    assert stalls[0].shard_id == "shard-7"  # type: ignore[attr-defined]
    assert "coroutine of shard shard-7" in stalls[0].getMessage() and "in blocks" in stalls[0].getMessage()
    assert "turns again" in caplog.text
    assert max(lags) >= 0.5  # the heartbeat after a 0.7 s block wakes at least that late
    assert aio_threads() == []


def test_an_async_close_that_ignores_its_cancellation_does_not_block_the_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aio, "CANCEL_GRACE_S", 0.1)
    monkeypatch.setattr(aio, "CLOSE_UNWIND_S", 0.1)
    cancellations: list[int] = []

    class StubbornClose:
        def handle(self, records: Sequence[Any], ctx: Any) -> None:
            return None

        async def close(self) -> None:
            while True:
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    cancellations.append(1)
                    if len(cancellations) > 1:  # the loop's own stop cancels it again: then it ends
                        raise

    handler = as_handler(StubbornClose)
    handler.use_runtime(timeout_s=0.2)
    with caplog.at_level(logging.ERROR, "shardlease.aio"), pytest.raises(HandlerTimeout):
        handler.close()  # returns (raising) instead of waiting for ever
    assert "left running" in caplog.text
    assert len(cancellations) == 2
    assert aio_threads() == []


def test_the_loop_lag_reaches_the_gauge() -> None:
    metrics = Metrics("w1", "g")
    assert metrics.value("shardlease_event_loop_lag_seconds") == 0.0  # exported, 0 without async handlers
    lags: list[float] = []

    def on_lag(seconds: float) -> None:
        lags.append(seconds)
        metrics.event_loop_lag(seconds)

    async def blocks(records: Sequence[Any], ctx: Any) -> None:
        time.sleep(0.3)

    handler = as_handler(blocks)
    handler.use_runtime(timeout_s=10, on_loop_lag=on_lag)
    handler.handle([], CTX)
    time.sleep(2 * aio.TICK_S)
    handler.close()  # no update after this
    assert max(lags) >= 0.1  # the heartbeat after a 0.3 s block woke at least 0.1 s late
    assert metrics.value("shardlease_event_loop_lag_seconds") == lags[-1]
    assert "shardlease_event_loop_lag_seconds" in metrics.render().decode()


def test_a_call_whose_cancellation_a_blocked_loop_cannot_deliver_is_not_blamed_for_ignoring_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Shard 2's coroutine awaits politely while shard 1's blocks the loop past shard 2's timeout: the cancellation
    cannot reach shard 2's coroutine, and the log says the loop is blocked, not that shard 2 ignored it."""
    monkeypatch.setattr(aio, "CANCEL_GRACE_S", 0.2)

    async def handle(records: Sequence[Any], ctx: Any) -> None:
        if ctx.shard_id == "shard-1":
            time.sleep(1.0)  # the mistake: a blocking call
        else:
            await asyncio.sleep(3600)

    handler = as_handler(handle)
    handler.use_runtime(timeout_s=0.3)
    errors: list[BaseException] = []

    def step(shard_id: str) -> None:
        try:
            handler.handle([], ShardContext(shard_id=shard_id, worker_id="w1", stream_arn=CTX.stream_arn, group="g",
                                            lease_token=7))
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.ERROR, "shardlease.aio"):
        polite = threading.Thread(target=step, args=("shard-2",))
        polite.start()
        time.sleep(0.1)
        blocking = threading.Thread(target=step, args=("shard-1",))
        blocking.start()
        for thread in (polite, blocking):
            thread.join(10)
    handler.close()
    shard_2 = [r.getMessage() for r in caplog.records if getattr(r, "shard_id", None) == "shard-2"]
    assert not any("ignored its cancellation" in m for m in shard_2), shard_2
    assert any("event loop is blocked" in m for m in shard_2), shard_2
    assert any(isinstance(e, HandlerTimeout) for e in errors)
