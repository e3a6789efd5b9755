"""Handler calls in flight, for the hang watchdog and the handler-duration histogram.

A call's clock starts when the user's code really starts: a wrapper that first waits its turn (a
Lambda-style handler runs one invocation at a time per process) calls :func:`call_started` once it
has it, so the wait counts neither toward ``--handler-timeout`` nor in the duration.
"""

from __future__ import annotations

import itertools
import threading
import time
from types import TracebackType

_current = threading.local()


def call_waiting() -> None:
    """Stop the clock of the handler call on this thread until :func:`call_started` (it waits its turn)."""
    call: Call | None = getattr(_current, "call", None)
    if call is not None:
        call.pause()


def call_started() -> None:
    """Restart the clock of the handler call running on this thread (no-op outside one)."""
    call: Call | None = getattr(_current, "call", None)
    if call is not None:
        call.restart()


def current_call_started() -> float | None:
    """When the handler call running on this thread (last) started (``time.monotonic()``), or None."""
    call: Call | None = getattr(_current, "call", None)
    return call.started if call is not None else None


def current_handler_calls() -> HandlerCalls | None:
    """The :class:`HandlerCalls` (one shard's) of the handler call running on this thread, or None outside one."""
    call: Call | None = getattr(_current, "call", None)
    return call._calls if call is not None else None


def call_cancellable(grace_s: float) -> None:
    """Tell the hang watchdog that the call running on this thread is cancelled at its timeout (an async
    handler's coroutine): the watchdog judges it hung only ``grace_s`` seconds later, once the
    cancellation had its chance.  Its start as the watchdog sees it moves by ``grace_s``; its duration
    (:attr:`Call.duration_s`) does not."""
    call: Call | None = getattr(_current, "call", None)
    if call is not None:
        call._calls._update(call._id, call.started + grace_s)


class Call:
    """One handler call, as a context manager: in flight between ``__enter__`` and ``__exit__``."""

    __slots__ = ("_calls", "_id", "_previous", "ended", "started")

    def __init__(self, calls: HandlerCalls) -> None:
        self._calls = calls
        self._id = 0
        self._previous: Call | None = None
        self.started = 0.0
        """``time.monotonic()`` when the call (last) started."""
        self.ended = 0.0

    def __enter__(self) -> Call:
        self._previous = getattr(_current, "call", None)
        _current.call = self
        self._id = self._calls._add(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.ended = time.monotonic()
        self._calls._remove(self._id)
        _current.call = self._previous

    def pause(self) -> None:
        self._calls._update(self._id, None)

    def restart(self) -> None:
        self.started = time.monotonic()
        self._calls._update(self._id, self.started)

    @property
    def duration_s(self) -> float:
        """Seconds from the (last) start to the end (or to now while in flight)."""
        return (self.ended or time.monotonic()) - self.started


class HandlerCalls:
    """The handler calls in flight for one shard (several at once with lanes).  Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: dict[int, float | None] = {}
        """Call id -> when it started (None while it waits for its turn)."""
        self._ids = itertools.count(1)

    def running(self) -> Call:
        """A call to enter around the user's code: ``with calls.running() as call: ...``."""
        return Call(self)

    def oldest_start(self) -> float | None:
        """When the oldest call in flight started (``time.monotonic()``), or None if none is (a call
        waiting for its turn does not count)."""
        with self._lock:
            return min((t for t in self._started.values() if t is not None), default=None)

    def busy(self) -> bool:
        """Whether a call is in flight (running, or waiting for its turn)."""
        with self._lock:
            return bool(self._started)

    def _add(self, call: Call) -> int:
        call_id = next(self._ids)
        call.started = time.monotonic()
        with self._lock:
            self._started[call_id] = call.started
        return call_id

    def _update(self, call_id: int, started: float | None) -> None:
        with self._lock:
            if call_id in self._started:
                self._started[call_id] = started

    def _remove(self, call_id: int) -> None:
        with self._lock:
            self._started.pop(call_id, None)
