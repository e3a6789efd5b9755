"""The embedding API in-process: settings, start-up errors, the stop/wait lifecycle, signals, threads.

A host process embedding a worker for real (asyncio, a separate process) is tests/e2e/test_embedding.py.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import worker
from leaser import LeaseStore, connect
from worker import (
    AbandonedHandlerCalls,
    ConfigError,
    CoordinationUnavailable,
    EmbeddedWorker,
    ShardContext,
    WorkerFailed,
    build_config,
)
from worker.local import LocalStreamsServer

ROOT = Path(__file__).resolve().parent.parent


def _thread_names() -> set[str]:
    """Names of the threads alive.  Garbage is collected first: a start-up error's traceback holds the last
    HTTP connection of the worker's (closed) boto3 client until then, and with it a request thread of the
    test's local endpoint (which runs in this process)."""
    gc.collect()
    return {t.name for t in threading.enumerate()}


def _no_thread_left(before: set[str]) -> bool:
    """Whether every thread alive was alive at ``before``.  Checked at once, except for the request threads
    of the test's local endpoint (it runs in this process; the worker's metrics server is off here): they
    end once they read the end of the connection the worker closed, waited for up to 2 s."""
    if any("process_request_thread" not in name for name in _thread_names() - before):
        return False
    return _wait_until(lambda: _thread_names() <= before, 2.0)


def _wait_until(predicate: Any, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


class Recorder:
    """A handler class: records every sequence number, and whether close() was called."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.closed = False

    def handle(self, records: Sequence[worker.Record], ctx: ShardContext) -> None:
        self.seen.extend(r.sequence_number for r in records)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def stream() -> Iterator[tuple[LocalStreamsServer, Any]]:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        yield server, server.create_table("orders", shards=1)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def _config(server: LocalStreamsServer, table: Any, redis_url: str, group: str, **settings: Any) -> Any:
    return build_config(stream_arn=table.stream_arn, endpoint_url=server.endpoint_url, redis_url=redis_url,
                        group=group, worker_id="embedded-1", lease_ttl_s=3, renew_interval_s=0.5,
                        idle_poll_interval_s=0.2, **settings)


# -- settings -----------------------------------------------------------------------------------


def test_a_bad_setting_is_a_one_line_config_error_naming_it_and_the_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config(table="Orders", batch_size=0)
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith("batch_size (--batch-size / SHARDLEASE_BATCH_SIZE): '0' is out of range")
    assert "use a value at least 1 and at most 10000" in text

    with pytest.raises(ConfigError, match=r"^batchsize: no such setting; did you mean batch_size\?"):
        build_config(table="Orders", batchsize=10)
    with pytest.raises(ConfigError, match="no stream to consume; give --stream-arn <ARN> or --table <name>"):
        build_config(group="g")
    with pytest.raises(ConfigError, match=r"^lease_ttl_s .*'-1' is not a non-negative finite duration"):
        build_config(table="Orders", lease_ttl_s=-1)
    with pytest.raises(ConfigError, match=r"renew interval 3s is not less than half the lease TTL 5s"):
        build_config(table="Orders", renew_interval_s=timedelta(seconds=3))


def test_settings_are_python_values_with_the_commands_defaults_except_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    config = build_config(table="Orders", bisect_on_error=True, batch_size=10, lease_ttl_s=timedelta(seconds=6),
                          initial_position="latest")
    assert (config.bisect_on_error, config.batch_size, config.lease_ttl_s, config.initial_position) == (
        True, 10, 6.0, "LATEST")
    assert config.shutdown_grace_s == 20.0 and config.on_handler_timeout == "exit"  # the command's defaults
    assert config.metrics_port == 0  # the one embedded default: no HTTP server unless asked
    # SHARDLEASE_* variables apply only when the host passes them, and a keyword wins over them.
    monkeypatch.setenv("SHARDLEASE_BATCH_SIZE", "7")
    monkeypatch.setenv("SHARDLEASE_METRICS_PORT", "9555")
    assert build_config(table="Orders").batch_size == 100
    from_env = build_config(table="Orders", environ=os.environ)
    assert (from_env.batch_size, from_env.metrics_port) == (7, 9555)
    assert build_config(table="Orders", batch_size=3, environ=os.environ).batch_size == 3
    with pytest.raises(ConfigError, match=r"^batch_size .*\(from SHARDLEASE_BATCH_SIZE\)"):
        build_config(table="Orders", environ={"SHARDLEASE_BATCH_SIZE": "many"})


def test_a_worker_needs_exactly_one_handler() -> None:
    config = build_config(table="Orders")
    with pytest.raises(ConfigError, match=r"^handler \(--handler / SHARDLEASE_HANDLER\): no handler given"):
        EmbeddedWorker(config)
    with pytest.raises(ConfigError, match=r"a function is not an import path; pass the handler object itself"):
        build_config(table="Orders", handler=Recorder().handle.__func__)
    with pytest.raises(ConfigError, match="given both"):
        EmbeddedWorker(build_config(table="Orders", handler="tests.e2e.recording_handler:handle"),
                       handler=Recorder())


def test_the_public_names_come_from_one_place_and_import_worker_stays_cheap() -> None:
    for name in worker.__all__:
        assert getattr(worker, name) is not None, name
    with pytest.raises(AttributeError):
        worker.Worker  # noqa: B018 (the runtime is private)
    # The command imports worker too: boto3 and the runtime load only when the embedding API is used.
    probe = ("import sys, worker; before = {'boto3', 'worker.runtime'} & set(sys.modules); "
             "worker.EmbeddedWorker; print(sorted(before), 'worker.embedding' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.split() == ["[]", "True"]


# -- start-up errors ----------------------------------------------------------------------------


def test_start_up_errors_are_raised_by_start_and_leave_nothing_running(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str
) -> None:
    server, table = stream
    before = _thread_names()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    unreachable = EmbeddedWorker(_config(server, table, f"redis://127.0.0.1:{closed_port}/0", group),
                                 handler=Recorder())
    with pytest.raises(CoordinationUnavailable):
        unreachable.start()
    assert unreachable.state == "stopped"
    unreachable.stop()  # the error was start()'s to report: stop and wait return at once
    unreachable.wait()

    recorder = Recorder()
    missing = EmbeddedWorker(build_config(
        stream_arn=table.stream_arn.replace("orders", "nosuchtable"), endpoint_url=server.endpoint_url,
        redis_url=redis_url, group=group), handler=recorder)
    with pytest.raises(ConfigError, match=r"^stream_arn .*does not exist"):
        missing.start()
    assert recorder.closed  # the worker owned the handler: closed on the failed start

    with pytest.raises(ConfigError, match=r"^handler .*module 'no_such_module' not found"):
        EmbeddedWorker(_config(server, table, redis_url, group), handler="no_such_module:handle").start()
    with socket.socket() as taken:  # the metrics server's port is taken: raised by start() too, nothing left
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = _config(server, table, redis_url, group, metrics_port=taken.getsockname()[1],
                         metrics_host="127.0.0.1")
        port_taken = EmbeddedWorker(config, handler=Recorder())
        with pytest.raises(ConfigError, match=r"^metrics_port .*cannot listen on 127.0.0.1"):
            port_taken.start()
    del unreachable, missing, port_taken  # their start-up errors hold the last (closed) boto3 connection
    assert _no_thread_left(before), _thread_names() - before


async def _start_async_raises(config: Any) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        await EmbeddedWorker(config, handler=Recorder()).start_async()


def test_start_async_raises_the_start_up_error(stream: tuple[LocalStreamsServer, Any], redis_url: str,
                                               group: str) -> None:
    server, table = stream
    asyncio.run(_start_async_raises(build_config(
        stream_arn=table.stream_arn.replace("orders", "nosuchtable"), endpoint_url=server.endpoint_url,
        redis_url=redis_url, group=group)))


# -- the lifecycle ------------------------------------------------------------------------------


def test_lifecycle_misuse_has_defined_answers() -> None:
    config = build_config(table="Orders")
    never = EmbeddedWorker(config, handler=Recorder())
    with pytest.raises(RuntimeError, match="not been started"):
        never.wait()
    never.stop()  # before start: returns at once, and the worker will never start
    never.stop()
    never.wait()
    assert never.state == "stopped"
    with pytest.raises(RuntimeError, match="already stopped"):
        never.start()
    with pytest.raises(RuntimeError, match="already stopped"):
        never.run()


def test_start_consume_stop_leaves_no_thread_and_no_signal_handler(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(20)]
    signals_before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    before = _thread_names()
    frozen = gc.get_freeze_count()
    recorder = Recorder()
    embedded = EmbeddedWorker(_config(server, table, redis_url, group), handler=recorder)
    embedded.start()
    with pytest.raises(RuntimeError, match="already started"):
        embedded.start()
    assert embedded.state == "running" and embedded.running
    assert {s: signal.getsignal(s) for s in signals_before} == signals_before
    assert "shardlease-worker" in _thread_names()
    assert _wait_until(lambda: set(written) <= set(recorder.seen)), "records not consumed"
    assert gc.get_freeze_count() == frozen  # only `shardlease run`, which owns its process, freezes its heap
    with pytest.raises(TimeoutError):
        embedded.wait(timeout_s=0.1)
    embedded.stop()
    embedded.stop()  # stopping twice: the same (clean) answer
    embedded.wait()
    assert embedded.state == "stopped" and not embedded.running
    assert recorder.closed
    assert _no_thread_left(before), _thread_names() - before
    assert {s: signal.getsignal(s) for s in signals_before} == signals_before
    [lease] = LeaseStore(connect(redis_url), group).leases()
    assert not lease.owner  # handed back on the clean stop
    assert embedded.metrics_registry.get_sample_value("shardlease_records_processed_total") == len(written)


async def _consume_in_async_with(embedded: EmbeddedWorker, recorder: Recorder, written: list[str]) -> None:
    async with embedded:
        assert embedded.running
        while not set(written) <= set(recorder.seen):
            await asyncio.sleep(0.02)


def test_async_with_starts_consumes_and_stops_leaving_no_thread(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(10)]
    before = _thread_names()
    recorder = Recorder()
    embedded = EmbeddedWorker(_config(server, table, redis_url, group), handler=recorder)
    asyncio.run(_consume_in_async_with(embedded, recorder, written))
    assert embedded.state == "stopped" and recorder.closed
    assert _no_thread_left(before), _thread_names() - before


def test_a_hung_call_at_stop_is_abandoned_and_reported_with_its_shard(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str
) -> None:
    server, table = stream
    table.put_item({"pk": "k", "n": 1})
    entered, release = threading.Event(), threading.Event()

    def hangs(records: Sequence[worker.Record], ctx: ShardContext) -> None:
        entered.set()
        release.wait(30)

    embedded = EmbeddedWorker(_config(server, table, redis_url, group, shutdown_grace_s=0.5), handler=hangs)
    embedded.start()
    try:
        assert entered.wait(20)
        with pytest.raises(AbandonedHandlerCalls) as caught:
            embedded.stop()
        [shard] = caught.value.shards
        assert not caught.value.hung and caught.value.exit_code == 3
        assert shard in str(caught.value) and "expire" in str(caught.value)
        with pytest.raises(AbandonedHandlerCalls):  # every later wait says so again
            embedded.wait()
        lease = LeaseStore(connect(redis_url), group).lease(shard)
        assert lease is not None and lease.owner == "embedded-1"  # not released: it expires
    finally:
        release.set()


def test_a_hung_call_stops_the_worker_on_its_own_and_wait_says_so(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str
) -> None:
    """on_handler_timeout=exit (the default): the command would exit with code 3; embedded, the worker stops
    itself and wait() raises, naming the shard, without the host asking for a stop."""
    server, table = stream
    table.put_item({"pk": "k", "n": 1})
    release = threading.Event()

    def hangs(records: Sequence[worker.Record], ctx: ShardContext) -> None:
        release.wait(30)

    embedded = EmbeddedWorker(_config(server, table, redis_url, group, handler_timeout_s=0.5), handler=hangs)
    embedded.start()
    try:
        with pytest.raises(AbandonedHandlerCalls, match="a handler call hung") as caught:
            embedded.wait(timeout_s=20)
        assert caught.value.hung and len(caught.value.shards) == 1
        assert not embedded.running
    finally:
        release.set()


def test_a_coordinator_that_fails_is_visible_to_wait(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.runtime import Worker

    server, table = stream
    before = _thread_names()
    broken = threading.Event()

    def watch_handlers(self: Worker) -> None:
        if broken.is_set():
            raise RuntimeError("a bug in the coordinator")

    monkeypatch.setattr(Worker, "_watch_handlers", watch_handlers)
    embedded = EmbeddedWorker(_config(server, table, redis_url, group), handler=Recorder())
    embedded.start()
    broken.set()
    with pytest.raises(WorkerFailed, match="the coordinator failed: RuntimeError: a bug") as caught:
        embedded.wait(timeout_s=20)
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert _no_thread_left(before), _thread_names() - before


def test_run_in_the_foreground_installs_signal_handlers_only_when_asked(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str
) -> None:
    server, table = stream
    written = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(5)]
    previous = signal.getsignal(signal.SIGINT)
    recorder = Recorder()
    embedded = EmbeddedWorker(_config(server, table, redis_url, group), handler=recorder)
    seen_during: list[Any] = []

    def interrupt_once_consumed() -> None:
        if _wait_until(lambda: set(written) <= set(recorder.seen)):
            seen_during.append(signal.getsignal(signal.SIGINT))
            os.kill(os.getpid(), signal.SIGINT)  # the worker's handler: a graceful stop, no KeyboardInterrupt

    threading.Thread(target=interrupt_once_consumed, name="test-interrupter").start()
    embedded.run(install_signal_handlers=True)
    assert seen_during and seen_during[0] is not previous
    assert signal.getsignal(signal.SIGINT) is previous
    assert recorder.closed and set(written) <= set(recorder.seen)


def test_processes_other_than_one_is_refused_in_one_line() -> None:
    """--processes runs a supervisor of worker processes: an embedded worker cannot (it ignored the setting)."""
    config = build_config(table="Orders", group="g", processes=2)
    with pytest.raises(ConfigError) as caught:
        EmbeddedWorker(config, handler=lambda records, ctx: None)
    text = str(caught.value)
    assert "processes" in text and "one EmbeddedWorker per process" in text and "\n" not in text


def test_stop_from_inside_a_handler_call_does_not_wait_for_that_call(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str
) -> None:
    """A handler (sync, or async on the worker's loop) that calls stop() would wait for its own call until the
    shutdown grace ran out, then find its lease abandoned.  wait() from inside this worker's handler call raises
    RuntimeError at once (like joining the current thread); the stop it asked for goes on cleanly."""
    server, table = stream
    table.put_item({"pk": "k", "n": 1})
    outcomes: list[str] = []
    holder: list[EmbeddedWorker] = []

    async def stops_itself(records: Sequence[worker.Record], ctx: ShardContext) -> None:
        for stop in (holder[0].stop, holder[0].wait):
            try:
                stop(timeout_s=10)
                outcomes.append("returned")
            except RuntimeError as exc:
                outcomes.append(f"RuntimeError: {exc}")
            except Exception as exc:
                outcomes.append(type(exc).__name__)

    def stops_itself_sync(records: Sequence[worker.Record], ctx: ShardContext) -> None:
        try:
            holder[0].stop(timeout_s=10)
            outcomes.append("returned")
        except RuntimeError as exc:
            outcomes.append(f"RuntimeError: {exc}")
        except Exception as exc:
            outcomes.append(type(exc).__name__)

    for handler in (stops_itself_sync, stops_itself):
        outcomes.clear()
        embedded = EmbeddedWorker(_config(server, table, redis_url, group, shutdown_grace_s=3), handler=handler)
        holder[:] = [embedded]
        embedded.start()
        started = time.monotonic()
        embedded.wait(timeout_s=30)  # a clean stop: the handler's call was not abandoned
        assert time.monotonic() - started < 3, outcomes
        assert outcomes and all("own handler" in o for o in outcomes), outcomes
        table.put_item({"pk": "k", "n": 2})


class FailsToClose(Recorder):
    """A handler whose (async) close() raises."""

    async def close(self) -> None:  # type: ignore[override]
        raise RuntimeError("sink flush failed")


def test_a_close_that_raises_still_closes_the_workers_clients(
    stream: tuple[LocalStreamsServer, Any], redis_url: str, group: str
) -> None:
    """The handler's close() raising is reported by wait(); the worker's Redis connections are closed anyway (a host
    that restarts its worker must not pile up connections)."""
    import redis as redis_py

    server, table = stream
    table.put_item({"pk": "k", "n": 1})
    probe = redis_py.Redis.from_url(redis_url)
    try:
        before = int(probe.info("clients")["connected_clients"])
        recorder = FailsToClose()
        embedded = EmbeddedWorker(_config(server, table, redis_url, group), handler=recorder)
        embedded.start()
        assert _wait_until(lambda: len(recorder.seen) == 1)
        with pytest.raises(WorkerFailed, match="sink flush failed"):
            embedded.stop()
        assert _wait_until(lambda: int(probe.info("clients")["connected_clients"]) <= before, 3.0), (
            probe.info("clients")["connected_clients"], before)
    finally:
        probe.close()


def test_a_stop_after_redis_went_away_is_clean_when_no_handler_call_runs(tmp_path: Path, group: str) -> None:
    """Redis gone mid-run: the shards' steps keep retrying their release, but no handler call is running, so the
    stop is not reported as abandoned handler calls: the handler is closed and no thread is left."""
    from leaser.embedded import RedisServer

    redis_server = RedisServer(tmp_path / "redis").start()
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=4)
        written = [str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(12)]
        try:
            before = _thread_names()
            recorder = Recorder()
            embedded = EmbeddedWorker(_config(server, table, redis_server.url, group, shutdown_grace_s=1),
                                      handler=recorder)
            embedded.start()
            assert _wait_until(lambda: set(written) <= set(recorder.seen))
        finally:
            redis_server.stop()
        time.sleep(4.0)  # the heartbeats fail and the leases (lease_ttl_s 3) lapse
        embedded.stop(timeout_s=30)
    assert recorder.closed
    assert _no_thread_left(before), _thread_names() - before
