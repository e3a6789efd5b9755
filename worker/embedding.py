"""Running a consumer inside your own process: :func:`build_config` and :class:`EmbeddedWorker`.

The worker is the one ``shardlease run`` runs (:class:`worker.runtime.Worker`), with the same settings
and defaults (one table, :data:`worker.config.RUN_SETTINGS`) except one: the metrics/health HTTP
server is off unless ``metrics_port`` is given (your application owns its HTTP surface; serve
:attr:`EmbeddedWorker.metrics_registry` from it, or give a port).

Lifecycle of one :class:`EmbeddedWorker` (a worker runs once, like a thread)::

    new --start()--> starting --(up)--> running --stop()--> stopping --> stopped
     |                  |  start-up error: start() raises it, then stopped
     +--stop()----------+--> stopped (a stop before or during start-up ends it as soon as it is up)

* ``start()`` starts the worker in a thread of its own (``shardlease-worker``) and returns once it is
  up; a start-up error (bad setting, handler that does not import, Redis unreachable after the start-up
  retry, stream not found, metrics port taken) is raised by ``start()`` itself.
* ``request_stop()`` asks for a graceful stop and returns at once (safe from any thread, a signal
  handler or an event loop); ``wait()`` waits for the stop; ``stop()`` is both.  ``stop()`` and
  ``wait()`` return None after a clean stop and raise :class:`~worker.errors.WorkerStopError` after any
  other, every time they are called.  ``start_async()``, ``wait_async()`` and ``stop_async()`` are the
  same for an asyncio host, without blocking its event loop (no executor thread either).
* ``run()`` runs the worker in the calling thread until it stops (the foreground form); only
  ``run(install_signal_handlers=True)``, from the main thread, installs SIGTERM/SIGINT handlers (the
  command's: the first stops gracefully, a second exits the process at once), and restores the previous
  ones when it returns.  Otherwise no signal handler is touched: signals are the host's business.

After a clean stop every thread the worker started has ended and the handler has been closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import signal
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from worker.config import SETTINGS_BY_NAME, RunConfig, build_run_config
from worker.errors import AbandonedHandlerCalls, WorkerFailed

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from worker.runtime import Worker

log = logging.getLogger("shardlease.embedding")

EMBEDDED_DEFAULTS: Mapping[str, Any] = {"metrics_port": 0}
"""Where :func:`build_config`'s defaults differ from the command's: no metrics/health HTTP server
unless a port is given (0 = off; the command's default is 9400 or the next free port)."""

THREAD_NAME = "shardlease-worker"
"""The name of the thread :meth:`EmbeddedWorker.start` runs the worker in."""


def build_config(*, environ: Mapping[str, str] | None = None, **settings: Any) -> RunConfig:
    """A validated :class:`~worker.config.RunConfig` from settings named as in the README's tables
    (``table="Orders"``, ``group="indexer"``, ``batch_size=50``, ``lease_ttl_s=5.0``), checked by the
    command's own parsers: a bad value raises the same one-line :class:`~leaser.errors.ConfigError`
    naming the setting and the fix.  Settings not given take the command's defaults, except
    ``metrics_port`` (off: see :data:`EMBEDDED_DEFAULTS`); pass ``environ=os.environ`` to let
    ``SHARDLEASE_*`` variables fill the settings not given."""
    handler = settings.get("handler")
    if handler is not None and not isinstance(handler, str):
        raise SETTINGS_BY_NAME["handler"].error(
            f"a {type(handler).__name__} is not an import path",
            "pass the handler object itself as EmbeddedWorker(config, handler=...), or 'package.module:attr' here")
    return build_run_config(settings, environ=environ, defaults=EMBEDDED_DEFAULTS)


def _restore_signals(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class EmbeddedWorker:
    """One shardlease worker inside the calling process.  Thread-safe.

    ``handler``: a function ``handle(records, ctx)``, a class (instantiated once) or an instance, as for
    ``--handler`` (sync, async or Lambda-style), or an import path ``"package.module:attr"``; or leave it
    out and set ``handler`` in the config.  The worker owns it: its ``close()`` is called when the worker
    stops (also when start-up fails), except when a call of it is abandoned (see
    :class:`~worker.errors.AbandonedHandlerCalls`).

    ``configure_logging``: install the command's log handler on the root logger (``log_format``,
    ``log_level``); by default the host's logging configuration applies to the ``shardlease.*`` loggers
    and those two settings are not used.
    """

    def __init__(self, config: RunConfig, *, handler: object = None, configure_logging: bool = False) -> None:
        if not isinstance(config, RunConfig):
            raise TypeError(f"config must be a RunConfig (from worker.build_config), not {type(config).__name__}")
        if handler is None and config.handler is None:
            raise SETTINGS_BY_NAME["handler"].error(
                "no handler given", "pass handler=your_function (or a class, an instance, or 'package.module:attr')")
        if handler is not None and config.handler is not None:
            raise SETTINGS_BY_NAME["handler"].error(
                "a handler is given both in the config and as handler=", "give only one of them")
        if config.processes != 1:
            raise SETTINGS_BY_NAME["processes"].error(
                f"an embedded worker runs in your process, so processes={config.processes} cannot apply",
                "leave processes at 1 and start one EmbeddedWorker per process, or use `shardlease run --processes`")
        self.config = config
        self._handler_spec = handler
        self._configure_logging = configure_logging
        self._lock = threading.RLock()  # re-entrant: request_stop() may run in a signal handler
        self._state = "new"
        self._worker: Worker | None = None
        self._thread: threading.Thread | None = None
        self._runner: threading.Thread | None = None
        """The thread running the worker (``shardlease-worker``, or the caller of :meth:`run`)."""
        self._stop_requested = False
        # Both futures are marked running at once, so cancelling an awaiter (asyncio.wrap_future chains a
        # cancellation back to its source) can never cancel them.
        self._up: concurrent.futures.Future[None] = concurrent.futures.Future()
        """Done once the worker is up (result None) or start-up failed (its error)."""
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        """Done once the worker has stopped: None after a clean stop, else a WorkerStopError."""
        self._up.set_running_or_notify_cancel()
        self._done.set_running_or_notify_cancel()

    # -- state ---------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """``new``, ``starting``, ``running``, ``stopping`` or ``stopped``."""
        with self._lock:
            if self._stop_requested and self._state in ("new", "running"):
                return "stopped" if self._state == "new" else "stopping"
            return self._state

    @property
    def running(self) -> bool:
        """True from the end of start-up until the worker has stopped (for whatever reason)."""
        return self.state in ("running", "stopping")

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The worker's Prometheus registry (its own, not the global one), to serve from your application,
        e.g. ``prometheus_client.generate_latest(worker.metrics_registry)``.  Available once started."""
        if self._worker is None:
            raise RuntimeError("the worker has not started yet: call start() first")
        return self._worker.metrics.registry

    # -- start ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker in a background thread; return once it is up.  Raises what start-up raised
        (ConfigError, CoordinationUnavailable, ...; the worker is then stopped, with nothing left open).
        A worker starts once: a second ``start()`` (or one after ``stop()``) raises RuntimeError."""
        self._launch()
        try:
            self._up.result()
        except BaseException:
            if not self._up.done():  # interrupted while waiting (Ctrl-C): stop as soon as it is up
                self.request_stop()
            raise

    async def start_async(self) -> None:
        """:meth:`start` for an asyncio host: start-up (which may retry Redis for up to a minute) runs in
        the worker's thread and the event loop keeps running.  Cancelled, it stops the worker."""
        self._launch()
        try:
            await asyncio.shield(asyncio.wrap_future(self._up))
        except asyncio.CancelledError:
            self.request_stop()
            raise

    def run(self, *, install_signal_handlers: bool = False) -> None:
        """Run the worker in the calling thread until it stops (:meth:`request_stop` from another thread or
        a signal handler, or on its own); returns None after a clean stop, else raises like :meth:`wait`.
        Start-up errors are raised as by :meth:`start`.

        ``install_signal_handlers``: SIGTERM and SIGINT stop the worker as they stop ``shardlease run``
        (the first gracefully, a second exits the process at once); the previous handlers are restored
        on return.  Only from the main thread.  Without it a Ctrl-C raises KeyboardInterrupt out of
        ``run()`` in the middle of the loop: leases are not released (they expire after ``lease_ttl_s``)."""
        if install_signal_handlers and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("install_signal_handlers=True needs the main thread (Python delivers signals there)")
        self._claim_start()
        self._main(install_signal_handlers=install_signal_handlers)
        error = self._up.exception()
        if error is not None:
            raise error
        self._done.result()

    def _claim_start(self) -> None:
        with self._lock:
            if self._state != "new" or self._stop_requested:
                done = "started" if self._state in ("starting", "running") else "stopped"
                raise RuntimeError(f"this worker was already {done}; a worker runs once: create a new EmbeddedWorker")
            self._state = "starting"

    def _launch(self) -> None:
        self._claim_start()
        self._thread = threading.Thread(target=self._main, name=THREAD_NAME, daemon=True)
        self._thread.start()

    # -- stop ----------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the worker to stop gracefully and return at once: polling stops, batches in flight finish
        (at most ``shutdown_grace_s``), then every lease is released.  Idempotent; safe from any thread, a
        signal handler or an event loop.  Before start-up ended, the worker stops as soon as it is up;
        before ``start()``, it never starts (``start()`` then raises RuntimeError)."""
        with self._lock:
            self._stop_requested = True
            worker = self._worker
        if worker is not None:
            worker.stop()

    def wait(self, timeout_s: float | None = None) -> None:
        """Wait until the worker has stopped.  Returns None after a clean stop (every lease released, every
        thread it started ended, the handler closed) and after a failed start-up (``start()`` raised the
        error); raises :class:`~worker.errors.AbandonedHandlerCalls` or :class:`~worker.errors.WorkerFailed`
        after any other stop, and TimeoutError if it is still running after ``timeout_s`` seconds."""
        if self._never_started():
            return
        self._refuse_waiting_for_itself()
        self._done.result(timeout_s)

    def stop(self, timeout_s: float | None = None) -> None:
        """:meth:`request_stop`, then :meth:`wait`.  Stopping an already stopped worker returns (or raises)
        the same again; stopping one never started returns at once."""
        self.request_stop()
        self.wait(timeout_s)

    async def wait_async(self, timeout_s: float | None = None) -> None:
        """:meth:`wait` as an awaitable: the event loop keeps running meanwhile."""
        if self._never_started():
            return
        self._refuse_waiting_for_itself()
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._done)), timeout_s)

    async def stop_async(self, timeout_s: float | None = None) -> None:
        """:meth:`stop` as an awaitable: the event loop keeps running while batches finish."""
        self.request_stop()
        await self.wait_async(timeout_s)

    def _refuse_waiting_for_itself(self) -> None:
        """RuntimeError when called from this worker's own handler (a call, a hook, ``close()``) before it
        stopped: the stop waits for that call, so waiting there would last until the shutdown grace ran out
        (and abandon the call's lease), or for ever in ``close()``."""
        if self._done.done():
            return
        from worker.handling.calls import current_handler_calls

        worker = self._worker
        own = threading.current_thread() is self._runner
        if worker is not None and not own:
            calls = current_handler_calls()
            own = worker.handler.event_loop.owns_current_thread() or (
                calls is not None and any(c.calls is calls for c in worker.scheduler.consumers()))
        if own:
            raise RuntimeError("stop()/wait() called from this worker's own handler would wait for its own call: "
                               "call request_stop() there (the stop goes on once the call returns)")

    def _never_started(self) -> bool:
        """True for a worker stopped before it started (nothing to wait for); RuntimeError for one neither
        started nor stopped (waiting would never end)."""
        with self._lock:
            if self._state != "new":
                return False
            if self._stop_requested:
                return True
        raise RuntimeError("the worker has not been started: nothing to wait for")

    # -- context managers ----------------------------------------------------------------------

    def __enter__(self) -> EmbeddedWorker:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedWorker:
        await self.start_async()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop_async()

    # -- the worker's thread -------------------------------------------------------------------

    def _main(self, *, install_signal_handlers: bool = False) -> None:
        """Start the worker, run it, and record how it ended in ``_up`` and ``_done``.  Raises nothing but
        a KeyboardInterrupt or SystemExit that interrupted the foreground :meth:`run`."""
        self._runner = threading.current_thread()
        try:
            worker = self._open()
        except BaseException as exc:  # the start-up error goes to start(): nothing is left running
            with self._lock:
                self._state = "stopped"
            self._up.set_exception(exc)
            self._done.set_result(None)
            return
        previous: dict[int, Any] = {}
        with self._lock:
            self._worker = worker
            if self._stop_requested:
                worker.stop()
        if install_signal_handlers:
            previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
            worker.install_signal_handlers()
        try:
            code = worker.run(on_started=self._on_up)
        except BaseException as exc:
            self._finish(worker, None, exc)
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise  # the foreground run() was interrupted: the caller's to handle
        else:
            self._finish(worker, code, None)
        finally:
            _restore_signals(previous)

    def _open(self) -> Worker:
        from worker.handling.handler import as_handler, load_handler
        from worker.logs import configure_logging
        from worker.runtime import Worker

        config = self.config
        if self._configure_logging:
            configure_logging(config.log_format, config.log_level,
                              context={"worker_id": config.worker_id, "group": config.group})
        spec = self._handler_spec
        if spec is None:
            return Worker(config)
        handler = load_handler(spec) if isinstance(spec, str) else as_handler(spec)
        return Worker(config, handler=handler)

    def _on_up(self) -> None:
        with self._lock:
            self._state = "running"
        self._up.set_result(None)

    def _finish(self, worker: Worker, code: int | None, error: BaseException | None) -> None:
        """Record the outcome of ``worker.run()``: its exit code, or the error it raised."""
        from worker.runtime import EXIT_ABANDONED

        with self._lock:
            self._state = "stopped"
            self._worker = worker  # kept for metrics_registry
        if not self._up.done():  # run() failed before it was up (a taken metrics port): a start-up error
            self._up.set_exception(error or RuntimeError("the worker stopped before it was up"))
            self._done.set_result(None)
            return
        outcome: BaseException | None = None
        if worker.abandoned:
            outcome = AbandonedHandlerCalls(worker.abandoned, hung=worker.stopped_on_hung_call,
                                            lease_ttl_s=worker.config.lease_ttl_s)
            outcome.__cause__ = error
        elif error is not None:
            outcome = WorkerFailed(f"the worker's thread failed: {type(error).__name__}: {error}")
            outcome.__cause__ = error
        elif worker.failure is not None:
            outcome = WorkerFailed(f"the coordinator failed: {type(worker.failure).__name__}: {worker.failure}")
            outcome.__cause__ = worker.failure
        elif code == EXIT_ABANDONED and worker.stopped_on_hung_call:
            outcome = WorkerFailed("a handler call ran past handler_timeout_s (on_handler_timeout=exit); it "
                                   "returned during the shutdown, so nothing is left running (its lease was "
                                   "released, or expires within lease_ttl_s)")
        # EXIT_ABANDONED otherwise: the calls running when the grace ran out returned before the end, so
        # nothing is left running and the stop counts as clean (their leases expire; the log says so).
        if outcome is None:
            self._done.set_result(None)
        else:
            log.error("%s", outcome)
            self._done.set_exception(outcome)

