"""Metrics on a private registry, and the /healthz, /readyz, /metrics server."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest

from leaser.errors import ConfigError
from worker.observability import LEASE_REASONS, THROTTLED_APIS, HealthServer, HealthState, Metrics


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers.get("Content-Type", ""), err.read().decode()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def server(clock: FakeClock) -> Iterator[HealthServer]:
    metrics = Metrics("w-1", "g")
    health = HealthState(clock=clock)
    srv = HealthServer("127.0.0.1", 0, metrics, health, renew_interval_s=1.0).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_metric_names_and_values() -> None:
    m = Metrics("w-1", "orders", version="9.9")
    m.records_processed(5)
    m.records_processed()
    m.batches_processed()
    m.handler_error()
    m.leases_held(3)
    m.lease_gained("acquired_free")
    m.lease_lost("handoff")
    m.getrecords_call(0.02)
    m.getrecords_call(0.3)
    m.throttle("GetRecords")
    m.checkpoint_failure()
    m.trimmed_data()
    m.describe_stream_call()
    m.shards_unowned(2)
    m.is_leader(True)
    v = m.value
    assert v("shardlease_records_processed_total") == 6
    assert v("shardlease_batches_processed_total") == 1
    assert v("shardlease_handler_errors_total") == 1
    assert v("shardlease_leases_held") == 3
    assert v("shardlease_leases_gained_total", {"reason": "acquired_free"}) == 1
    assert v("shardlease_leases_gained_total", {"reason": "took_expired"}) == 0  # pre-created
    assert v("shardlease_leases_lost_total", {"reason": "handoff"}) == 1
    assert v("shardlease_getrecords_calls_total") == 2
    assert v("shardlease_getrecords_latency_seconds_count") == 2
    assert v("shardlease_getrecords_latency_seconds_bucket", {"le": "0.025"}) == 1
    assert v("shardlease_throttles_total", {"api": "GetRecords"}) == 1
    assert v("shardlease_checkpoint_failures_total") == 1
    assert v("shardlease_trimmed_data_total") == 1
    assert v("shardlease_describe_stream_calls_total") == 1
    assert v("shardlease_shards_unowned") == 2
    assert v("shardlease_is_leader") == 1
    assert v("shardlease_worker_info", {"worker_id": "w-1", "group": "orders", "version": "9.9"}) == 1
    m.is_leader(False)
    assert v("shardlease_is_leader") == 0


def test_iterator_age_is_the_max_over_shards_without_shard_labels() -> None:
    m = Metrics("w-1", "g")
    assert m.value("shardlease_iterator_age_seconds") == 0
    m.iterator_age("shardId-1", 12.5)
    m.iterator_age("shardId-2", 3.0)
    assert m.value("shardlease_iterator_age_seconds") == 12.5
    m.iterator_age("shardId-1", 1.0)
    assert m.value("shardlease_iterator_age_seconds") == 3.0
    m.iterator_age("shardId-2", -4.0)  # clock skew: clamped
    assert m.value("shardlease_iterator_age_seconds") == 1.0
    m.forget_shard("shardId-1")
    m.forget_shard("unknown")
    assert m.value("shardlease_iterator_age_seconds") == 0
    assert "shardId" not in m.render().decode()


def test_labels_reject_unknown_values() -> None:
    m = Metrics("w-1", "g")
    for reason in LEASE_REASONS:
        m.lease_gained(reason)
        m.lease_lost(reason)
    for api in THROTTLED_APIS:
        m.throttle(api)
    with pytest.raises(ValueError, match="unknown lease reason 'shardId-0001'; use one of acquired_free"):
        m.lease_gained("shardId-0001")
    with pytest.raises(ValueError, match="unknown lease reason"):
        m.lease_lost("whatever")
    with pytest.raises(ValueError, match="unknown api"):
        m.throttle("PutItem")
    text = m.render().decode()
    assert "shardId-0001" not in text and "whatever" not in text and "PutItem" not in text


def test_private_registries() -> None:
    a, b = Metrics("w-1", "g"), Metrics("w-2", "g")  # no "Duplicated timeseries" error
    a.records_processed(3)
    assert b.value("shardlease_records_processed_total") == 0
    assert REGISTRY.get_sample_value("shardlease_records_processed_total") is None


def test_health_state(clock: FakeClock) -> None:
    health = HealthState(clock=clock)
    assert health.alive(3.0)
    clock.now += 5
    assert not health.alive(3.0)
    health.beat()
    assert health.alive(3.0)
    assert health.readiness() == (False, "starting")
    health.set_ready(True)
    assert health.readiness() == (True, "ready")
    health.set_ready(False, "shutting down")
    assert health.readiness() == (False, "shutting down")


def test_endpoints(server: HealthServer, clock: FakeClock) -> None:
    assert server.port > 0
    base = f"http://127.0.0.1:{server.port}"
    assert server.max_silence_s == 3.0  # 3 x renew interval

    assert get(f"{base}/healthz")[:3:2] == (200, "ok\n")
    clock.now += 3.5
    status, _, body = get(f"{base}/healthz")
    assert status == 503 and "main loop silent for 3.5s (limit 3s)" in body
    server.health.beat()
    assert get(f"{base}/healthz")[0] == 200

    status, _, body = get(f"{base}/readyz")
    assert status == 503 and body == "not ready: starting\n"
    server.health.set_ready(True)
    assert get(f"{base}/readyz")[:3:2] == (200, "ok\n")
    server.health.set_ready(False, "lost Redis")
    assert get(f"{base}/readyz")[:3:2] == (503, "not ready: lost Redis\n")

    server.metrics.records_processed(42)
    server.metrics.lease_gained("handoff")
    status, ctype, body = get(f"{base}/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    assert "shardlease_records_processed_total 42.0" in body
    assert 'shardlease_leases_gained_total{reason="handoff"} 1.0' in body
    assert 'shardlease_worker_info{group="g",version=' in body
    assert "# TYPE shardlease_getrecords_latency_seconds histogram" in body
    assert get(f"{base}/metrics?x=1")[0] == 200

    assert get(f"{base}/nope")[0] == 404
    assert get(f"{base}/")[0] == 404


def test_head_and_keep_alive(server: HealthServer) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200 and resp.read() == b""


def test_stop_frees_the_port() -> None:
    srv = HealthServer("127.0.0.1", 0, Metrics("w", "g"), HealthState()).start()
    port = srv.port
    srv.stop()
    srv.stop()  # idempotent
    with socket.create_server(("127.0.0.1", port)):
        pass


def test_stop_ends_keep_alive_connections_and_their_threads() -> None:
    """A scraper's idle keep-alive connection must not keep a request thread alive after stop() (an embedding
    host checks that no thread is left behind); before, it lived on for the handler's 30 s idle timeout."""
    import http.client
    import threading

    before = set(threading.enumerate())
    srv = HealthServer("127.0.0.1", 0, Metrics("w", "g"), HealthState()).start()
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    response.read()
    assert response.status == 200 and response.getheader("Connection") != "close"  # the connection stays open
    srv.stop()
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    conn.close()
    assert left == []


def test_port_in_use_is_a_config_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=r"metrics_port .*cannot listen on 127.0.0.1:\d+"):
            HealthServer("127.0.0.1", port, Metrics("w", "g"), HealthState()).start()


def test_access_logs_are_debug(server: HealthServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="worker.observability"):
        get(f"http://127.0.0.1:{server.port}/healthz")
    access = [r for r in caplog.records if r.name == "worker.observability" and "GET /healthz" in r.getMessage()]
    assert access and all(r.levelname == "DEBUG" for r in access)


def test_the_version_is_the_packages_one() -> None:
    from leaser import __version__

    body = Metrics("w", "g").render().decode()
    assert f'shardlease_worker_info{{group="g",version="{__version__}",worker_id="w"}} 1.0' in body


def test_default_metrics_port_falls_back_when_taken(caplog: pytest.LogCaptureFixture) -> None:
    from worker.observability import advertised_address, start_health_server

    assert start_health_server("127.0.0.1", 0, Metrics("w", "g"), HealthState()) is None
    assert advertised_address(None) == "off"
    held = []
    try:  # take 9400 (unless something already has it)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 9400))
        sock.listen()
        held.append(sock)
    except OSError:
        sock.close()
    try:
        with caplog.at_level("WARNING", logger="worker.observability"):
            server = start_health_server("127.0.0.1", None, Metrics("w", "g"), HealthState())
        assert server is not None
        try:
            assert server.port != 9400 and advertised_address(server) == f"127.0.0.1:{server.port}"
            assert f"on port {server.port} instead" in caplog.text
        finally:
            server.stop()
    finally:
        for sock in held:
            sock.close()


def test_new_metrics_and_no_created_series() -> None:
    m = Metrics("w-1", "g")
    m.batch_size(1)
    m.batch_size(100)
    m.destination_error()
    m.shards_blocked(4)
    assert m.timed_heartbeat(lambda: 7) == 7
    def failing_tick() -> None:
        raise RuntimeError("redis down")

    with pytest.raises(RuntimeError):
        m.timed_heartbeat(failing_tick)
    m.redis_command("script:heartbeat", 0.002)
    m.redis_command("script:heartbeat", 5.0, "timeout")
    with pytest.raises(ValueError, match="unknown redis error 'shardId-1'"):
        m.redis_command("ping", 0.001, "shardId-1")
    v = m.value
    assert v("shardlease_batch_size_count") == 2 and v("shardlease_batch_size_sum") == 101
    assert v("shardlease_batch_size_bucket", {"le": "1.0"}) == 1
    assert v("shardlease_destination_errors_total") == 1
    assert v("shardlease_shards_blocked") == 4
    assert v("shardlease_heartbeat_duration_seconds_count") == 2  # the one that raised too
    assert v("shardlease_redis_command_duration_seconds_count", {"command": "script:heartbeat"}) == 2
    assert v("shardlease_redis_command_duration_seconds_bucket", {"command": "script:heartbeat", "le": "0.0025"}) == 1
    assert v("shardlease_redis_command_errors_total", {"command": "script:heartbeat", "error": "timeout"}) == 1
    assert v("shardlease_shards_stuck", {"state": "retrying"}) == 0
    text = m.render().decode()
    assert "_created" not in text  # prometheus_client's creation timestamps: not exposed
    assert "# TYPE shardlease_batch_size histogram" in text and "shardlease_records_processed_total 0.0" in text
    # An embedding host serves the worker's registry itself (docs/embedding.md): no _created series there either.
    assert b"_created" not in generate_latest(m.registry)
    own = CollectorRegistry()  # a host application's registry keeps its _created series
    Counter("host_requests", "A host application's counter.", registry=own).inc()
    assert b"host_requests_created" in generate_latest(own)


def test_per_shard_iterator_age_is_opt_in() -> None:
    off = Metrics("w-1", "g")
    off.iterator_age("shardId-1", 4.0)
    assert "shard_id" not in off.render().decode()

    m = Metrics("w-1", "g", per_shard=True)
    assert "shardlease_shard_iterator_age_seconds{" not in m.render().decode()  # no shard held: no series
    m.iterator_age("shardId-1", 4.0)
    m.iterator_age("shardId-2", 1.0)
    m.pending_since("shardId-2", time.time() - 30)  # a batch of shard 2 has waited about 30 s
    age_of = lambda shard: m.value("shardlease_shard_iterator_age_seconds", {"shard_id": shard})  # noqa: E731
    assert age_of("shardId-1") == 4.0
    assert 29 <= (age_of("shardId-2") or 0) < 60
    assert m.value("shardlease_iterator_age_seconds") == pytest.approx(age_of("shardId-2"), abs=1)
    m.forget_shard("shardId-1")
    assert age_of("shardId-1") is None
    assert 'shardlease_shard_iterator_age_seconds{shard_id="shardId-2"}' in m.render().decode()
