"""Prometheus metrics and the health endpoints, over one small HTTP server.

:class:`Metrics` owns a private registry (never prometheus_client's global one,
so several workers in one process, as in tests and the demo, do not collide).
No metric has a per-shard label by default: a fleet's series count does not grow with
its shard count (``--per-shard-metrics`` adds one gauge per held shard, for small
fleets).  Label values come from fixed sets and are checked.  The ``_created``
series prometheus_client adds to counters and histograms are not exposed (they
double the series count and no dashboard uses them); this is done on this
registry's exposition only, so a host application embedding a worker keeps its own.

:class:`HealthServer` serves::

    /healthz   200 "ok" if the main loop beat recently, else 503 and why   (liveness)
    /readyz    200 "ok" once the worker is ready, else 503 and why          (readiness)
    /metrics   the Prometheus text format
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, TypeVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from leaser._version import __version__
from leaser.errors import ConfigError

log = logging.getLogger(__name__)

T = TypeVar("T")

LEASE_REASONS: tuple[str, ...] = (
    "acquired_free",  # gained: the shard had no owner
    "took_expired",  # gained: the previous owner's lease had expired
    "handoff",  # gained or lost: a planned transfer between live workers
    "expired",  # lost: this worker failed to renew in time
    "stolen",  # lost: another worker holds a newer token (found on renew or a fenced write)
    "released",  # lost: this worker let it go (rebalancing, max shards)
    "shard_end",  # lost: the shard was read to its end
    "shutdown",  # lost: released while the worker stops
    "reclaimed",  # gained: acquired again after an acquire whose reply was lost (a new token)
)
"""Allowed ``reason`` labels of ``shardlease_leases_gained_total`` and ``..._lost_total``."""

THROTTLED_APIS: tuple[str, ...] = (
    "GetRecords",
    "GetShardIterator",
    "DescribeStream",
    "ListStreams",
    "DescribeTable",
)
"""Allowed ``api`` labels of ``shardlease_throttles_total``."""

FAILURE_REASONS = ("retries_exhausted", "record_too_old")
"""Why records were sent to the on-failure destination."""

GETRECORDS_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
HANDLER_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
"""Records per handler call (``--batch-size`` is at most 10000)."""
REDIS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
"""Redis round trips and heartbeats: about a millisecond on a nearby Redis, bounded by the socket timeout
(<= 5 s).  Few buckets: the Redis histogram has 13 series per command label a worker uses (15 to 25)."""

REDIS_ERRORS: tuple[str, ...] = (
    "connection",  # the connection failed or was lost
    "timeout",  # no reply within the socket timeout
    "cluster",  # a Redis Cluster redirection, failover or slot not covered
    "response",  # Redis answered with an error (NOSCRIPT, OOM, BUSY, READONLY, NOPERM, ...)
    "other",  # anything else the client raised
)
"""Allowed ``error`` labels of ``shardlease_redis_command_errors_total``."""

STUCK_STATES: tuple[str, ...] = (
    "retrying",  # the handler keeps failing on a batch (retried under the failure policy)
    "hung",  # a handler call has run longer than --handler-timeout
    "read_failing",  # GetRecords or a checkpoint keeps failing (throttled, server errors, Redis)
    "no_consumer",  # a lease is held but no consumer runs for it (repaired at the next heartbeat)
    "renewal_late",  # the worker's lease renewals are late: it hands its handler nothing for now
)
"""Allowed ``state`` labels of ``shardlease_shards_stuck``: why a held shard makes no progress."""


def _check(label: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {label} {value!r}; use one of {', '.join(allowed)}")
    return value


class _RegistryWithoutCreated(CollectorRegistry):
    """The worker's registry: it collects no ``<name>_created`` samples of its counters and histograms, so no
    exposition of it has them (the /metrics server's, or an embedding host's ``generate_latest(registry)``)."""

    def collect(self) -> Iterable[Metric]:
        for metric in super().collect():
            created = f"{metric.name}_created"
            metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric


class _PerShardAge:
    """``shardlease_shard_iterator_age_seconds{shard_id}``: each held shard's iterator age, computed at
    scrape time; a shard no longer held has no series (``--per-shard-metrics`` only)."""

    def __init__(self, ages: Callable[[], dict[str, float]]) -> None:
        self._ages = ages

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for shard_id, age in sorted(self._ages().items()):
            family.add_metric([shard_id], age)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "shardlease_shard_iterator_age_seconds",
            "As shardlease_iterator_age_seconds, for each shard this worker holds (--per-shard-metrics: one "
            "series per shard).",
            labels=["shard_id"],
        )


class Metrics:
    """This worker's metrics.  Every method is thread-safe and cheap.

    ``per_shard``: also export each held shard's iterator age with a ``shard_id`` label
    (``--per-shard-metrics``): one series per shard, for fleets of a few hundred shards at most.
    """

    def __init__(self, worker_id: str, group: str, *, version: str | None = None, per_shard: bool = False) -> None:
        self.registry: CollectorRegistry = _RegistryWithoutCreated(auto_describe=True)
        r = self.registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=r)

        self._records = counter("shardlease_records_processed", "Records the handler completed.")
        self._batches = counter("shardlease_batches_processed", "Batches the handler completed.")
        self._handler_errors = counter(
            "shardlease_handler_errors", "Handler calls that raised or reported failed records."
        )
        self._filtered = counter("shardlease_records_filtered", "Records the filter patterns kept from the handler.")
        self._failed = counter(
            "shardlease_records_failed",
            "Records given up on and sent to the on-failure destination, by reason.",
            ("reason",),
        )
        self._iterator_age = gauge(
            "shardlease_iterator_age_seconds",
            "Seconds from the creation of the oldest record read but not yet finished (handled, filtered or "
            "sent to the on-failure destination) to now, or, with nothing pending, of the newest record "
            "finished to when it finished; the maximum over this worker's shards.  It grows while a batch "
            "keeps failing or a handler hangs.",
        )
        self._handler_duration = Histogram(
            "shardlease_handler_duration_seconds",
            "Duration of each handler call in seconds (returned or raised).",
            buckets=HANDLER_BUCKETS_S,
            registry=r,
        )
        self._stuck = Gauge(
            "shardlease_shards_stuck",
            "Held shards making no progress, by state (retrying, hung, read_failing, no_consumer, renewal_late).",
            ("state",),
            registry=r,
        )
        self._batch_size = Histogram(
            "shardlease_batch_size",
            "Records handed to the handler per call.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self._destination_errors = counter(
            "shardlease_destination_errors",
            "Sends to the on-failure destination that failed (the records stay pending and the send is retried).",
        )
        self._heartbeat_duration = Histogram(
            "shardlease_heartbeat_duration_seconds",
            "Duration of each heartbeat (lease renewal, acquisitions and handoffs) in seconds, failed ones included.",
            buckets=REDIS_BUCKETS_S,
            registry=r,
        )
        self._redis_duration = Histogram(
            "shardlease_redis_command_duration_seconds",
            "Round trips to Redis in seconds, by command: a Redis command in lower case, script:<name> for the "
            "lease protocol's Lua scripts, or pipeline for a pipeline of different commands; other for the rest.",
            ("command",),
            buckets=REDIS_BUCKETS_S,
            registry=r,
        )
        self._redis_errors = counter(
            "shardlease_redis_command_errors",
            "Redis round trips that failed, by command and error (connection, timeout, cluster, response, other).",
            ("command", "error"),
        )
        self._leases_held = gauge("shardlease_leases_held", "Shard leases this worker holds.")
        self._gained = counter("shardlease_leases_gained", "Leases this worker gained.", ("reason",))
        self._lost = counter("shardlease_leases_lost", "Leases this worker lost or gave up.", ("reason",))
        self._getrecords = counter("shardlease_getrecords_calls", "GetRecords calls made.")
        self._getrecords_latency = Histogram(
            "shardlease_getrecords_latency_seconds",
            "GetRecords call latency in seconds.",
            buckets=GETRECORDS_BUCKETS_S,
            registry=r,
        )
        self._throttles = counter("shardlease_throttles", "AWS calls throttled, by API.", ("api",))
        self._budget_rate = gauge(
            "shardlease_getrecords_budget_calls_per_second",
            "This worker's share of --max-getrecords-per-second in GetRecords calls per second (0 without a budget).",
        )
        self._budget_waits = counter(
            "shardlease_getrecords_budget_waits",
            "GetRecords calls put off because this worker's share of --max-getrecords-per-second had no token left.",
        )
        self._loop_lag = gauge(
            "shardlease_event_loop_lag_seconds",
            "How late the async handlers' event loop woke from its last 0.1 s heartbeat, in seconds; while it "
            "stalls (a blocking call in an async handler), how long it has not turned.  0 without async handlers.",
        )
        self._checkpoint_failures = counter(
            "shardlease_checkpoint_failures", "Checkpoint writes that failed (other than a lost lease)."
        )
        self._trimmed = counter(
            "shardlease_trimmed_data",
            "Times a checkpoint pointed at records already trimmed from the stream (data was skipped).",
        )
        self._describe_stream = counter("shardlease_describe_stream_calls", "DescribeStream calls made.")
        self.records_skipped_before_start = counter(
            "shardlease_records_skipped_before_start",
            "Records read but skipped, never handled, because they were created before the shard's start time "
            "(a rewind to a time, --to-latest, or a LATEST start resumed by a later owner).",
        )
        self._unowned = gauge("shardlease_shards_unowned", "Ready shards that no worker holds (leader).")
        self._blocked = gauge(
            "shardlease_shards_blocked",
            "Registered shards waiting for a parent shard to be read to its end (leader, after each shard sync).",
        )
        self._is_leader = gauge("shardlease_is_leader", "1 if this worker is the group's leader, else 0.")
        self._info = Info("shardlease_worker", "This worker's identity.", registry=r)
        self._info.info({"worker_id": worker_id, "group": group, "version": version or __version__})

        for reason in LEASE_REASONS:  # so rate() works from the first scrape
            self._gained.labels(reason=reason)
            self._lost.labels(reason=reason)
        for api in THROTTLED_APIS:
            self._throttles.labels(api=api)
        for reason in FAILURE_REASONS:
            self._failed.labels(reason=reason)
        for state in STUCK_STATES:
            self._stuck.labels(state=state)

        self._ages_lock = threading.Lock()
        self._ages: dict[str, float] = {}
        self._pending_since: dict[str, float] = {}
        self._iterator_age.set_function(self._max_age)
        if per_shard:
            r.register(_PerShardAge(self._shard_ages))

    # -- processing --------------------------------------------------------
    def records_processed(self, n: int = 1) -> None:
        self._records.inc(n)

    def batches_processed(self, n: int = 1) -> None:
        self._batches.inc(n)

    def handler_error(self, n: int = 1) -> None:
        self._handler_errors.inc(n)

    def records_filtered(self, n: int = 1) -> None:
        self._filtered.inc(n)

    def records_failed(self, reason: str, n: int = 1) -> None:
        self._failed.labels(reason=_check("failure reason", reason, FAILURE_REASONS)).inc(n)

    def iterator_age(self, shard_id: str, seconds: float) -> None:
        """Report a shard's iterator age once its pending records are finished (0 when caught up)."""
        with self._ages_lock:
            self._ages[shard_id] = max(0.0, float(seconds))
            self._pending_since.pop(shard_id, None)

    def pending_since(self, shard_id: str, created_epoch_s: float) -> None:
        """The shard's oldest unfinished record was created at ``created_epoch_s`` (Unix seconds): its
        iterator age grows from there, at every scrape, until :meth:`iterator_age` reports it done."""
        with self._ages_lock:
            self._pending_since[shard_id] = created_epoch_s

    def forget_shard(self, shard_id: str) -> None:
        """Stop counting a shard in the iterator age (its lease was lost or it ended)."""
        with self._ages_lock:
            self._ages.pop(shard_id, None)
            self._pending_since.pop(shard_id, None)

    def _max_age(self) -> float:
        return max([0.0, *self._shard_ages().values()])

    def _shard_ages(self) -> dict[str, float]:
        """Each shard's iterator age in seconds now (see ``shardlease_iterator_age_seconds``)."""
        now = time.time()
        with self._ages_lock:
            ages = dict(self._ages)
            for shard_id, since in self._pending_since.items():
                ages[shard_id] = max(ages.get(shard_id, 0.0), now - since)
        return ages

    def handler_duration(self, seconds: float) -> None:
        """Observe one handler call's duration in seconds."""
        self._handler_duration.observe(seconds)

    def batch_size(self, records: int) -> None:
        """Observe how many records one handler call was given."""
        self._batch_size.observe(records)

    def destination_error(self) -> None:
        """Count one failed send to the on-failure destination."""
        self._destination_errors.inc()

    def shards_stuck(self, counts: dict[str, int]) -> None:
        """Set the stuck-shard gauge: state -> how many held shards are in it now (others 0)."""
        for state in STUCK_STATES:
            self._stuck.labels(state=state).set(counts.get(state, 0))

    # -- leases ------------------------------------------------------------
    def leases_held(self, n: int) -> None:
        self._leases_held.set(n)

    def lease_gained(self, reason: str) -> None:
        self._gained.labels(reason=_check("lease reason", reason, LEASE_REASONS)).inc()

    def lease_lost(self, reason: str) -> None:
        self._lost.labels(reason=_check("lease reason", reason, LEASE_REASONS)).inc()

    def shards_unowned(self, n: int) -> None:
        self._unowned.set(n)

    def shards_blocked(self, n: int) -> None:
        self._blocked.set(n)

    def is_leader(self, leader: bool) -> None:
        self._is_leader.set(1 if leader else 0)

    # -- AWS and checkpoints ----------------------------------------------
    def getrecords_call(self, latency_s: float) -> None:
        """Count one GetRecords call and observe its latency in seconds."""
        self._getrecords.inc()
        self._getrecords_latency.observe(latency_s)

    def budget_share(self, calls_per_s: float) -> None:
        """This worker's share of the GetRecords budget, in calls per second."""
        self._budget_rate.set(calls_per_s)

    def budget_wait(self) -> None:
        """A GetRecords call was put off for want of a budget token."""
        self._budget_waits.inc()

    def throttle(self, api: str) -> None:
        self._throttles.labels(api=_check("api", api, THROTTLED_APIS)).inc()

    def event_loop_lag(self, seconds: float) -> None:
        """The async handlers' event loop lag in seconds (see the gauge's help)."""
        self._loop_lag.set(seconds)

    def checkpoint_failure(self) -> None:
        self._checkpoint_failures.inc()

    def trimmed_data(self) -> None:
        self._trimmed.inc()

    def describe_stream_call(self) -> None:
        self._describe_stream.inc()

    # -- Redis and the heartbeat -------------------------------------------
    def timed_heartbeat(self, tick: Callable[[], T]) -> T:
        """Run one heartbeat, ``tick()``, observing its duration in seconds whether it returns or raises."""
        started = time.monotonic()
        try:
            return tick()
        finally:
            self._heartbeat_duration.observe(time.monotonic() - started)

    def redis_command(self, command: str, seconds: float, error: str | None = None) -> None:
        """Observe one Redis round trip: ``command`` is a bounded label (see worker.redis_metrics),
        ``error`` one of :data:`REDIS_ERRORS` when it failed."""
        self._redis_duration.labels(command=command).observe(seconds)
        if error is not None:
            self._redis_errors.labels(command=command, error=_check("redis error", error, REDIS_ERRORS)).inc()

    # -- exposition --------------------------------------------------------
    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return bytes(generate_latest(self.registry))

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """A sample's current value (for tests and the demo), e.g. ``value("shardlease_leases_held")``."""
        result = self.registry.get_sample_value(name, labels or {})
        return None if result is None else float(result)


class HealthState:
    """Liveness (the main loop's heartbeat) and readiness, shared between threads."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat = clock()
        self._ready = False
        self._reason = "starting"

    def beat(self) -> None:
        """Called by the main loop on every pass."""
        now = self._clock()
        with self._lock:
            self._last_beat = now

    def silence_s(self) -> float:
        """Seconds since the last beat."""
        with self._lock:
            return max(0.0, self._clock() - self._last_beat)

    def alive(self, max_silence_s: float) -> bool:
        return self.silence_s() <= max_silence_s

    def set_ready(self, ready: bool, reason: str = "") -> None:
        """Mark ready (reason optional) or not ready (say why: "connecting to Redis", "shutting down")."""
        with self._lock:
            self._ready = bool(ready)
            self._reason = reason or ("ready" if ready else "not ready")

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            return self._ready, self._reason


class Endpoints(Protocol):
    """What the HTTP server answers: liveness and readiness as (ok, why not) and the metrics exposition.  A
    worker's come from its :class:`Metrics` and :class:`HealthState`; ``--processes``' supervisor has its own."""

    def liveness(self) -> tuple[bool, str]: ...

    def readiness(self) -> tuple[bool, str]: ...

    def exposition(self) -> bytes: ...


class WorkerEndpoints:
    """A worker's answers: alive while the main loop beat within ``max_silence_s``, ready as its state says."""

    def __init__(self, metrics: Metrics, health: HealthState, max_silence_s: float) -> None:
        self.metrics = metrics
        self.health = health
        self.max_silence_s = max_silence_s

    def liveness(self) -> tuple[bool, str]:
        silence = self.health.silence_s()
        if silence <= self.max_silence_s:
            return True, "ok"
        return False, f"main loop silent for {silence:.1f}s (limit {self.max_silence_s:g}s)"

    def readiness(self) -> tuple[bool, str]:
        return self.health.readiness()

    def exposition(self) -> bytes:
        return self.metrics.render()


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds an idle keep-alive connection may hold its thread

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, *, send_body: bool) -> None:
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        endpoints = self.server.owner.endpoints
        content_type = "text/plain; charset=utf-8"
        if path == "/healthz":
            alive, why = endpoints.liveness()
            status = HTTPStatus.OK if alive else HTTPStatus.SERVICE_UNAVAILABLE
            body = b"ok\n" if alive else f"{why}\n".encode()
        elif path == "/readyz":
            ready, reason = endpoints.readiness()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            body = b"ok\n" if ready else f"not ready: {reason}\n".encode()
        elif path == "/metrics":
            status, body, content_type = HTTPStatus.OK, endpoints.exposition(), CONTENT_TYPE_LATEST
        else:
            status, body = HTTPStatus.NOT_FOUND, b"not found; try /healthz, /readyz or /metrics\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http %s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    """A thread per connection; :meth:`close_connections` ends the connections still open (a scraper's
    keep-alive connection would otherwise hold its thread for ``_RequestHandler.timeout`` after a stop)."""

    daemon_threads = True
    owner: HealthServer

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(address, handler)
        self._connections_lock = threading.Lock()
        self._connections: dict[socket.socket, threading.Thread] = {}

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections[request] = threading.current_thread()
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.pop(request, None)

    def close_connections(self, timeout_s: float) -> None:
        """Shut down every open connection and wait (at most ``timeout_s`` in all) for their threads."""
        with self._connections_lock:
            open_now = list(self._connections.items())
        for sock, _ in open_now:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout_s
        for _, thread in open_now:
            thread.join(max(deadline - time.monotonic(), 0))


class HealthServer:
    """``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` from a daemon thread.

    ``port=0`` picks a free port (read :attr:`port` after :meth:`start`).  The answers come from
    ``endpoints``, or, for a worker, from ``metrics`` and ``health``: ``/healthz`` then fails once the main
    loop has not beaten for ``max_silence_s``, by default three renew intervals.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics | None = None,
        health: HealthState | None = None,
        *,
        renew_interval_s: float = 1.5,
        max_silence_s: float | None = None,
        endpoints: Endpoints | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.metrics = metrics
        self.health = health
        self.max_silence_s = max_silence_s if max_silence_s is not None else 3 * renew_interval_s
        if endpoints is None:
            assert metrics is not None and health is not None, "give endpoints, or metrics and health"
            endpoints = WorkerEndpoints(metrics, health, self.max_silence_s)
        self.endpoints: Endpoints = endpoints
        self._bound_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the chosen one when constructed with 0)."""
        return self._bound_port

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> HealthServer:
        if self._server is not None:
            return self
        try:
            server = _Server((self.host, self._requested_port), _RequestHandler)
        except OSError as exc:
            raise ConfigError(
                "metrics_port (--metrics-port / SHARDLEASE_METRICS_PORT)",
                f"cannot listen on {self.host}:{self._requested_port}: {exc.strerror or exc}",
                "choose a free port, or 0 to turn the metrics server off",
            ) from None
        server.owner = self
        self._server = server
        self._bound_port = int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="shardlease-http", daemon=True
        )
        self._thread.start()
        log.debug("metrics and health server listening on %s:%d", self.host, self.port)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections(timeout_s=5)
        if thread is not None:
            thread.join(timeout=5)
        self._server = None
        self._thread = None

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


METRICS_PORT_FALLBACKS = 10
"""Ports tried from the default metrics port up (9400-9409) before an ephemeral one."""
REPORT_METRICS = "@metrics"
REPORT_VERSION = "@version"
"""Fields of a worker's shard report (``LeaseStore.report``) that are not shards ('@' is in no shard id):
where its metrics are served (``host:port``) and its version, for ``shardlease status``."""


def start_health_server(
    host: str, port: int | None, metrics: Metrics | None = None, health: HealthState | None = None, *,
    renew_interval_s: float = 1.5, endpoints: Endpoints | None = None,
) -> HealthServer | None:
    """Start the metrics/health server.  ``port`` 0: none.  A given port must be free (else ConfigError).
    ``None`` (not given): the default port, else the next free one of :data:`METRICS_PORT_FALLBACKS`, else
    an ephemeral one, so several workers on one host all start; which one is logged."""
    from worker.config import DEFAULT_METRICS_PORT

    if port == 0:
        return None
    if port is not None:
        return HealthServer(host, port, metrics, health, renew_interval_s=renew_interval_s,
                            endpoints=endpoints).start()
    candidates = [*range(DEFAULT_METRICS_PORT, DEFAULT_METRICS_PORT + METRICS_PORT_FALLBACKS), 0]
    for candidate in candidates:
        try:
            server = HealthServer(host, candidate, metrics, health, renew_interval_s=renew_interval_s,
                                  endpoints=endpoints).start()
        except ConfigError:
            if candidate == 0:
                raise
            continue
        if candidate != DEFAULT_METRICS_PORT:
            log.warning("metrics port %d is taken (another worker on this host?): serving /metrics, /healthz and "
                        "/readyz on port %d instead (shardlease status shows it)", DEFAULT_METRICS_PORT, server.port)
        return server
    raise AssertionError("unreachable")  # pragma: no cover


def advertised_address(server: HealthServer | None) -> str:
    """``host:port`` where another machine reaches ``server`` (the host name for a wildcard address);
    ``off`` without a server."""
    if server is None:
        return "off"
    host = socket.gethostname() if server.host in ("", "0.0.0.0", "::") else server.host
    return f"{host}:{server.port}"
