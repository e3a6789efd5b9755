"""One asyncio event loop per worker process, in its own thread, for async handlers.

An async handler (``async def handle(records, ctx)``, async hooks or ``close``, an async
``__call__`` or Lambda-style ``lambda_handler``) returns a coroutine; :meth:`EventLoopThread.run`
runs it on the process's one loop and blocks the calling thread (a scheduler or lane thread, which
owns that shard's step) until it ends.  So:

* batches of different shards run concurrently on the loop, one shard's batches strictly in order
  (the scheduler runs one step per shard at a time, and a step waits for its coroutine);
* concurrency is bounded by the threads that wait: the scheduler's step threads (128 with an async
  handler, ``worker.scheduler.ASYNC_HANDLER_THREADS``; plus the lane threads with
  ``--parallelization-factor``); a waiting thread costs no CPU;
* the loop is created at the first coroutine (a sync handler never has one) and stopped by
  :meth:`EventLoopThread.close` (``Handler.close()``): no thread is left behind.

Timeout.  A coroutine still running ``timeout_s`` after its call started (``--handler-timeout``) is
cancelled and :meth:`run` raises :class:`HandlerTimeout`: the delivery counts a failed call, exactly
as if the handler had raised (retried, bisected or sent to the on-failure destination by the failure
policy).  If the coroutine ignores the cancellation for :data:`CANCEL_GRACE_S`, it is a hung call as a
sync one would be: :meth:`run` keeps waiting, the runtime's hang watchdog reports it and
``--on-handler-timeout`` applies.

Stalls.  A watchdog thread outside the loop notices when the loop has not turned for
:data:`STALL_THRESHOLD_S` (a blocking call inside a coroutine) and logs it with the shard whose
coroutine is running; the loop's lag (how late its own heartbeat wakes) goes to ``on_lag``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from leaser.errors import ShardleaseError
from worker.handling.calls import call_cancellable, current_call_started

log = logging.getLogger("shardlease.aio")

LOOP_THREAD_NAME = "shardlease-aio-loop"
WATCHDOG_THREAD_NAME = "shardlease-aio-watchdog"
TICK_S = 0.1
"""Seconds between the loop's heartbeats (the lag is how late one wakes) and the watchdog's checks."""
STALL_THRESHOLD_S = 1.0
"""Seconds without a turn of the loop after which the watchdog logs a stall (a blocking call)."""
CANCEL_GRACE_S = 2.0
"""Seconds a coroutine cancelled at its timeout has to unwind before it counts as a hung call."""
UNWIND_ON_EXIT_S = 1.0
"""Seconds the coroutines in flight get to unwind after their cancellation by a second signal."""
CLOSE_UNWIND_S = 2.0
"""Seconds the loop gives tasks still pending at close (none after a clean stop) to unwind."""


class HandlerTimeout(ShardleaseError):
    """An async handler call ran past ``--handler-timeout`` and was cancelled: a failed call."""


class HandlerCancelled(ShardleaseError):
    """An async handler call was cancelled: because the worker is exiting (a second signal: ``exiting``), or by
    the handler itself.  A call cancelled for the exit did not fail: its batch is not settled at all (no failure
    policy, no on-failure destination, no checkpoint); the next owner re-reads it."""

    def __init__(self, message: str, *, exiting: bool = False) -> None:
        super().__init__(message)
        self.exiting = exiting


class _Call:
    """One coroutine on its way through the loop; ``done`` is set once its task has ended."""

    __slots__ = ("coro", "done", "error", "exiting", "label", "result", "task", "timed_out")

    def __init__(self, coro: Coroutine[Any, Any, Any], label: str) -> None:
        self.coro = coro
        self.label = label
        self.task: asyncio.Task[Any] | None = None
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        self.timed_out = False
        """Set on the loop when the call was cancelled at its timeout (it had not ended yet)."""
        self.exiting = False
        """Set on the loop when the call was cancelled because the worker exits (:meth:`EventLoopThread.cancel_all`)."""


class EventLoopThread:
    """The process's event loop for async handlers, started lazily, in a thread of its own.  Thread-safe."""

    def __init__(self, *, on_lag: Callable[[float], None] | None = None,
                 stall_threshold_s: float = STALL_THRESHOLD_S) -> None:
        self.on_lag = on_lag
        """Called with the loop's lag in seconds after each heartbeat (and during a stall)."""
        self.stall_threshold_s = stall_threshold_s
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self._exiting = False
        """Set by :meth:`cancel_all`: the process exits, no new call starts."""
        self._running: dict[asyncio.Task[Any], _Call] = {}
        """Tasks of calls in flight -> their call (changed on the loop thread, read by the watchdog)."""
        self._running_lock = threading.Lock()
        self._last_turn = time.monotonic()

    # -- running coroutines (any thread but the loop's) --------------------------------------------

    @property
    def started(self) -> bool:
        return self._loop is not None

    def owns_current_thread(self) -> bool:
        """True when called on the loop's own thread (from inside a coroutine of an async call)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def run(self, coro: Coroutine[Any, Any, Any], *, label: str = "", timeout_s: float | None = None,
            wait_if_hung: bool = True) -> Any:
        """Run ``coro`` on the loop and wait for it; return its result or raise its exception.

        ``label`` (the shard id) names the call in logs.  With ``timeout_s``, the coroutine is cancelled
        once that many seconds have passed since the handler call started (the thread's
        :class:`~worker.handling.calls.Call`, else now) and :class:`HandlerTimeout` is raised; one that
        ignores the cancellation for :data:`CANCEL_GRACE_S` is waited for as a hung call, or, without
        ``wait_if_hung`` (``close()``, which no watchdog watches), left running on the loop.
        """
        try:
            loop = self._start()
        except BaseException:
            coro.close()
            raise
        if self._exiting:
            coro.close()
            raise HandlerCancelled("async handler call not started: the worker is exiting", exiting=True)
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("a handler call cannot wait for the event loop from the loop's own thread")
        call = _Call(coro, label)
        started = current_call_started() or time.monotonic()
        if timeout_s is not None:
            call_cancellable(CANCEL_GRACE_S)
        try:
            loop.call_soon_threadsafe(self._begin, call)
        except RuntimeError:  # the loop was closed meanwhile
            coro.close()
            raise
        if timeout_s is None or call.done.wait(max(0.0, started + timeout_s - time.monotonic())):
            call.done.wait()
            return self._outcome(call)
        # Past the timeout: cancel, give it CANCEL_GRACE_S to unwind, then treat it as hung.
        cancel_at = time.monotonic()
        ran_s = cancel_at - started
        loop.call_soon_threadsafe(self._cancel, call)
        finished = call.done.wait(CANCEL_GRACE_S)
        if finished and not call.timed_out:
            return self._outcome(call)  # it ended before the cancellation reached it: a normal call
        log.error("async handler call has run %.1f s, past --handler-timeout %g s: cancelled; its batch counts as "
                  "a failed call (retried under the failure policy)", ran_s, timeout_s, extra={"shard_id": label})
        if not finished:
            if not wait_if_hung:
                log.error("async call ignored its cancellation for %g s: left running", CANCEL_GRACE_S,
                          extra={"shard_id": label})
                raise HandlerTimeout(f"async call ignored its cancellation after --handler-timeout {timeout_s:g} s")
            if self._last_turn < cancel_at:  # the loop has not turned since: the cancellation never reached it
                log.error("async handler call not cancelled after %g s: the event loop is blocked (see the stall "
                          "ERROR naming the shard whose coroutine blocks it); it is hung as a sync call would be "
                          "(--on-handler-timeout applies)", CANCEL_GRACE_S, extra={"shard_id": label})
            else:
                log.error("async handler call ignored its cancellation for %g s: it is hung, as a sync call would be "
                          "(--on-handler-timeout applies)", CANCEL_GRACE_S, extra={"shard_id": label})
            call.done.wait()
        raise HandlerTimeout(f"async handler call cancelled after --handler-timeout {timeout_s:g} s")

    def cancel_all(self, wait_s: float) -> int:
        """Cancel every coroutine in flight and wait up to ``wait_s`` seconds for them to end (the worker is
        exiting).  Returns how many were still running when asked; no call starts after it.  Safe to call from a
        signal handler."""
        self._exiting = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return 0
        # No lock here: the signal handler may have interrupted a thread holding one (len() is atomic).
        count = len(self._running)
        if count == 0:
            return 0
        try:
            loop.call_soon_threadsafe(self._cancel_everything)
        except RuntimeError:  # the loop closed meanwhile
            return count
        deadline = time.monotonic() + wait_s
        while self._running and time.monotonic() < deadline:
            time.sleep(0.01)
        return count

    def close(self) -> None:
        """Stop the loop and its watchdog and wait for both threads (bounded).  Later calls do nothing; a
        coroutine submitted after close is refused."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread, watchdog = self._loop, self._thread, self._watchdog
        self._stopping.set()
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CLOSE_UNWIND_S + 3.0)
        if watchdog is not None:
            watchdog.join(TICK_S * 10)
        if thread.is_alive():
            log.error("the event loop thread did not stop (a task ignores its cancellation, or a thread of "
                      "asyncio.to_thread / run_in_executor has not returned); it is left running")

    @property
    def left_running(self) -> bool:
        """True once :meth:`close` has returned with the loop thread still running (see its log): a thread of the
        loop's default executor that never returns would then hold the interpreter's exit (it joins them)."""
        thread = self._thread
        return self._closed and thread is not None and thread.is_alive()

    # -- the loop thread ---------------------------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None and not self._closed:
            return loop
        with self._lock:
            if self._closed:
                raise RuntimeError("the handler is closed: its event loop is stopped")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._last_turn = time.monotonic()
                ready = threading.Event()
                self._thread = threading.Thread(target=self._serve, args=(loop, ready), name=LOOP_THREAD_NAME,
                                                daemon=True)
                self._thread.start()
                ready.wait()
                self._watchdog = threading.Thread(target=self._watch, name=WATCHDOG_THREAD_NAME, daemon=True)
                self._watchdog.start()
                self._loop = loop
                log.info("async handler: started the worker's event loop thread")
            return self._loop

    def _serve(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        heartbeat = loop.create_task(self._heartbeat())
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            heartbeat.cancel()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            try:
                if pending:
                    loop.run_until_complete(asyncio.wait(pending, timeout=CLOSE_UNWIND_S))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                asyncio.set_event_loop(None)
                loop.close()

    async def _heartbeat(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            self._last_turn = now
            if self.on_lag is not None:
                self.on_lag(max(0.0, now - before - TICK_S))

    def _begin(self, call: _Call) -> None:
        """On the loop: start the call's task."""
        assert self._loop is not None
        task = self._loop.create_task(self._track(call))
        call.task = task
        with self._running_lock:
            self._running[task] = call
        task.add_done_callback(self._ended)

    async def _track(self, call: _Call) -> None:
        try:
            call.result = await call.coro
        except BaseException as exc:
            # Stored for the waiting thread, which raises it as the handler's own failure; a
            # cancellation propagates so the task ends cancelled.
            call.error = exc
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _ended(self, task: asyncio.Task[Any]) -> None:
        with self._running_lock:
            call = self._running.pop(task, None)
        if call is not None:
            if task.cancelled() and call.error is None:
                call.error = asyncio.CancelledError()  # cancelled before it began
            call.done.set()

    @staticmethod
    def _cancel(call: _Call) -> None:
        """On the loop: cancel the call's task at its timeout, unless it has already ended."""
        if call.task is not None and not call.task.done():
            call.timed_out = True
            call.task.cancel()

    def _cancel_everything(self) -> None:
        with self._running_lock:
            calls = list(self._running.items())
        for task, call in calls:
            if not task.done():
                call.exiting = True
                task.cancel()

    @staticmethod
    def _outcome(call: _Call) -> Any:
        error = call.error
        if error is None:
            return call.result
        if isinstance(error, asyncio.CancelledError):
            if call.exiting:
                raise HandlerCancelled("async handler call cancelled: the worker is exiting", exiting=True) from error
            raise HandlerCancelled("async handler call cancelled (the handler cancelled itself)") from error
        raise error

    # -- the watchdog thread -------------------------------------------------------------------------------

    def _watch(self) -> None:
        stalled_since: float | None = None
        while not self._stopping.wait(TICK_S):
            now = time.monotonic()
            silent_s = now - self._last_turn
            if silent_s <= self.stall_threshold_s:
                if stalled_since is not None:
                    log.warning("event loop turns again after a %.1f s stall", now - stalled_since)
                    stalled_since = None
                continue
            if self.on_lag is not None:
                self.on_lag(silent_s - TICK_S)
            if stalled_since is None:
                stalled_since = self._last_turn
                self._report_stall(silent_s)

    def _report_stall(self, silent_s: float) -> None:
        loop = self._loop
        running = None
        if loop is not None:
            try:
                running = asyncio.current_task(loop)
            except RuntimeError:
                running = None
        with self._running_lock:
            call = self._running.get(running) if running is not None else None
        where = self._where()
        if call is None:
            # A blocking call in a coroutine runs inside its task: with no task running, the loop thread is
            # elsewhere (starved of CPU, the process paused, or a blocking callback).
            log.error("event loop has not turned for %.1f s (more than %.1f s) and no handler coroutine is running"
                      "%s (a process starved of CPU or paused, or a blocking callback)", silent_s,
                      self.stall_threshold_s, where)
            return
        log.error("event loop blocked for %.1f s (more than %.1f s): the coroutine of shard %s is running a blocking "
                  "call%s; every async handler call of this process waits (use await, or asyncio.to_thread for "
                  "blocking work)", silent_s, self.stall_threshold_s, call.label, where,
                  extra={"shard_id": call.label})

    def _where(self) -> str:
        thread = self._thread
        frame = sys._current_frames().get(thread.ident) if thread is not None and thread.ident else None
        if frame is None:
            return ""
        return f" at {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
