"""The worker's start-up path: what it waits for and what it imports (no timings: see bench/worker_throughput.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from worker import cli, runtime
from worker.local import LocalStreamsServer
from worker.reading.streams import StreamsClient
from worker.runtime import WAKE_MIN_GAP_S, Worker

ROOT = Path(__file__).resolve().parent.parent


def _coordinator() -> Any:
    """A Worker with only what ``_wait_until_next_tick`` reads (the rest of it needs AWS and Redis)."""
    worker = Worker.__new__(Worker)
    worker.config = SimpleNamespace(renew_interval_s=60.0)
    worker.manager = SimpleNamespace(waiting_for_handoff=False)
    worker._stopping = threading.Event()
    worker._wake = threading.Event()
    worker._woken = False
    return worker


def test_the_first_wake_up_triggers_its_heartbeat_at_once_later_ones_wait_the_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a new group the leader's first listing wakes the coordinator, and the first leases wait for that
    # heartbeat: it goes at once.  Later wake-ups still wait WAKE_MIN_GAP_S, so a burst shares a heartbeat.
    sleeps: list[float] = []
    monkeypatch.setattr(runtime.time, "sleep", sleeps.append)
    worker = _coordinator()
    for expected in ([], [WAKE_MIN_GAP_S], [WAKE_MIN_GAP_S, WAKE_MIN_GAP_S]):
        worker._wake.set()
        worker._wait_until_next_tick()  # returns at once: the wake-up is set (renew_interval_s is 60 s)
        assert sleeps == expected
        assert not worker._wake.is_set()


RUN_PATH_NOT_IMPORTED = (
    "worker.checkpoints.commands",  # the checkpoint commands: their parser is worker.checkpoints.parser
    "worker.snapshot.command",  # --snapshot and `shardlease snapshot` only
    "worker.snapshot.runner",
    "worker.snapshot.scan",
    "worker.supervisor",  # --processes above 1 only
    "worker.demo",
    "boto3",  # botocore makes the clients (worker/reading/streams.py: _boto3_like_session)
    "s3transfer",
    "opentelemetry.sdk",  # redis-py imports it eagerly, unused (leaser/_redis_import.py); the test extra installs it
)
"""Modules that ``shardlease run`` (one process, no --snapshot) must not import: each costs start-up time."""

_RUN_PATH_PROBE = """
import sys
from worker import cli
from worker.config import load_run_config
args = cli.build_parser().parse_args(["run", "--table", "Orders", "--handler", "tests.handlers_for_tests:handle"])
load_run_config(args)
import worker.runtime  # what _run imports next (Worker() would connect to AWS and Redis)
print(" ".join(sorted(set(sys.argv[1:]) & set(sys.modules))) or "-")
"""


def test_the_run_path_does_not_import_what_only_other_commands_need() -> None:
    done = subprocess.run([sys.executable, "-c", _RUN_PATH_PROBE, *RUN_PATH_NOT_IMPORTED], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    assert done.stdout.split() == ["-"], f"imported on the run path: {done.stdout.strip()}"


_REDIS_OTEL_PROBE = """
import sys
if sys.argv[2] == "redis-first":
    import redis  # redis-py's own import, SDK and all
import worker  # noqa: F401  (imports redis through leaser/_redis_import.py unless it is imported already)
import redis
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.observability import OTelConfig, get_observability_instance
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
get_observability_instance().init(OTelConfig())
client = redis.Redis.from_url(sys.argv[1])
client.ping()
client.close()
data = reader.get_metrics_data()
print(" ".join(sorted({m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics})))
"""


def test_redis_metrics_work_as_before_when_redis_is_imported_without_its_eager_sdk_import(redis_url: str) -> None:
    # An application that turns on redis-py's OpenTelemetry metrics gets the same metrics whether redis was
    # imported by shardlease (the SDK import refused) or by itself first.
    def metric_names(first: str) -> list[str]:
        done = subprocess.run([sys.executable, "-c", _REDIS_OTEL_PROBE, redis_url, first], capture_output=True,
                              text=True, check=True, cwd=ROOT)
        return done.stdout.split()

    ours = metric_names("shardlease-first")
    assert "db.client.connection.create_time" in ours
    assert ours == metric_names("redis-first")


# -- the garbage collector during start-up (worker/cli.py: _run, _started) --------------------------


def test_a_started_worker_collects_garbage(tmp_path: Path, redis_url: str, group: str) -> None:
    # `run` starts with the collector off; by the first handler call it is on again, start-up's objects frozen.
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=1)
        for i in range(3):
            table.put_item({"pk": f"k{i}"})
        out = tmp_path / "calls.jsonl"
        env = dict(os.environ, SHARDLEASE_TEST_OUT=str(out), PYTHONPATH=str(ROOT), AWS_ACCESS_KEY_ID="t",
                   AWS_SECRET_ACCESS_KEY="t", AWS_REGION="us-east-1")
        proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--stream-arn", table.stream_arn,
                                 "--endpoint-url", server.endpoint_url, "--redis-url", redis_url, "--group", group,
                                 "--handler", "tests.gc_state_handler:handle", "--metrics-port", "0"],
                                env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (out.exists() and out.read_text().strip()):
                time.sleep(0.1)
        finally:
            proc.terminate()
            _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    first = orjson.loads(out.read_text().splitlines()[0])
    assert first["enabled"] is True
    assert first["frozen"] > 0


_RECLAIM_PROBE = """
import gc, threading, weakref
from worker import cli
cli.GC_RECLAIM_S = 0.05
gc.disable()
class Node:
    pass
garbage = Node()
garbage.me = garbage  # a reference cycle start-up left behind
gone = weakref.ref(garbage)
del garbage
timer = cli._started()
print(gc.isenabled(), gc.get_freeze_count() > 0, gone() is not None)
timer.join(30)
print(gone() is None, gc.get_freeze_count() > 0)
"""


def test_start_ups_cyclic_garbage_is_reclaimed_later_and_the_heap_frozen_again() -> None:
    # Nothing start-up left as cyclic garbage is kept for good: GC_RECLAIM_S after the start it is collected, and
    # what is alive then is frozen again (the drain's full collections do not walk it).
    done = subprocess.run([sys.executable, "-c", _RECLAIM_PROBE], capture_output=True, text=True, check=True,
                          cwd=ROOT)
    assert done.stdout.split() == ["True", "True", "True", "True", "True"], done.stdout


def test_a_worker_that_stops_within_the_freeze_leaves_no_timer_and_nothing_frozen(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, group: str
) -> None:
    # `run` called in-process (as tests and embedders of the command do) and stopped before GC_RECLAIM_S:
    # the timer is cancelled and the objects unfrozen at the stop, the collector on.
    import gc

    def stop_after_the_first_heartbeat(self: Worker) -> object:
        result = heartbeat(self)
        self.stop()
        return result

    heartbeat = Worker._heartbeat
    monkeypatch.setattr(Worker, "_heartbeat", stop_after_the_first_heartbeat)
    monkeypatch.setattr(Worker, "install_signal_handlers", lambda self: None)
    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    frozen_during: list[int] = []
    monkeypatch.setattr(cli, "_started", lambda real=cli._started: (frozen_during.append(1), real())[1])
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=1)
        code = cli.main(["run", "--stream-arn", table.stream_arn, "--endpoint-url", server.endpoint_url,
                         "--redis-url", redis_url, "--group", group, "--metrics-port", "0",
                         "--handler", "tests.handlers_for_tests:handle"])
    assert code == 0
    assert frozen_during == [1]  # the worker started: the collector was off until then, and froze start-up
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    assert not [t for t in threading.enumerate() if t.name == "gc-reclaim"]


def test_a_start_up_that_fails_leaves_the_collector_on(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    import gc

    assert gc.isenabled()
    code = cli.main(["run", "--stream-arn", "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/x",
                     "--redis-url", redis_url, "--handler", "no_such_module_xyz:handle", "--metrics-port", "0"])
    assert code == 2 and "no_such_module_xyz" in capsys.readouterr().err
    assert gc.isenabled()


class _Sent(Exception):
    """Stops a request once its headers are known (nothing is sent)."""


def _getrecords_headers(streams: StreamsClient) -> dict[str, str]:
    seen: dict[str, str] = {}

    def capture(request: Any, **kwargs: Any) -> None:
        seen.update({k: v.decode() if isinstance(v, bytes) else str(v) for k, v in request.headers.items()})
        raise _Sent

    streams.boto_client.meta.events.register("before-sign.dynamodb-streams.GetRecords", capture)
    with pytest.raises(_Sent):
        streams.boto_client.get_records(ShardIterator="x" * 40, Limit=10)
    return seen


def test_the_default_client_sends_what_a_boto3_session_s_client_sends(monkeypatch: pytest.MonkeyPatch) -> None:
    # StreamsClient() builds its clients on a botocore session set up as boto3.Session() does (without
    # importing boto3 at start-up): the requests, User-Agent included, are the same.
    import boto3

    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t"}.items():
        monkeypatch.setenv(name, value)
    kwargs: dict[str, Any] = {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9"}
    with StreamsClient(**kwargs) as ours, StreamsClient(boto3.Session(), **kwargs) as theirs:
        mine, boto3s = _getrecords_headers(ours), _getrecords_headers(theirs)
        assert ours.boto_client.meta.config.user_agent == theirs.boto_client.meta.config.user_agent
    assert mine["User-Agent"].startswith(f"Boto3/{boto3.__version__} md/Botocore#")
    assert mine == boto3s


_TRACING_PROBE = """
import sys
from worker import tracing
found = tracing.from_environment()
print(type(found).__name__, "opentelemetry.trace" in sys.modules)
"""


@pytest.mark.parametrize(("provider_env", "expected"), [(None, ["NoneType", "False"]),
                                                        ("sdk_tracer_provider", ["Tracing", "True"])])
def test_tracing_imports_opentelemetry_only_when_a_provider_can_be_configured(
    provider_env: str | None, expected: list[str]
) -> None:
    # Nothing imported opentelemetry.trace and OTEL_PYTHON_TRACER_PROVIDER is unset: no provider, and no import.
    # The variable names a provider (the SDK's entry point): it is loaded, and traces.
    env = {k: v for k, v in os.environ.items() if k != "OTEL_PYTHON_TRACER_PROVIDER"}
    if provider_env is not None:
        env["OTEL_PYTHON_TRACER_PROVIDER"] = provider_env
    done = subprocess.run([sys.executable, "-c", _TRACING_PROBE], capture_output=True, text=True, check=True,
                          cwd=ROOT, env=env)
    assert done.stdout.split() == expected
