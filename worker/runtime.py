"""Worker: one ``shardlease run`` process.

The main thread is the coordinator: every ``renew_interval_s`` (sooner when a
release or a shard end is published on the group's wake channel) it sends one
heartbeat through the :class:`~leaser.LeaseManager`, starts consumers for leases
gained, stops those lost or handed over, and, while it holds the leader lease,
lets discovery sync the shard graph in a thread of its own.

Every tick also reconciles: each lease held has a consumer (or a handoff being
released), and each consumer's lease is still held with its token; what does not
match is repaired and logged.  A tick that failed part-way is applied for what it
did.  A watchdog marks handler calls older than ``handler_timeout_s`` as hung.

Shutdown (first SIGTERM or SIGINT, or a hung handler with ``on_handler_timeout =
exit``): leave the group's membership, stop polling, let in-flight batches finish
and checkpoint (at most ``shutdown_grace_s``), release every lease whose batch is
not in flight, so other workers take over at once.  A lease whose handler call is
still running is never released: :meth:`Worker.run` returns
:data:`EXIT_ABANDONED` and the command exits at once without ``close()``, so the
lease expires with the process gone and the call cannot overlap the next owner's.
A second signal exits at once (async handler calls in flight are cancelled first and get
a second to unwind); from that signal on no lease is released and no shard ended (nor a snapshot
segment given back), so all of them expire.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import Any

import redis

from leaser import (
    ConfigError,
    CoordinationUnavailable,
    LeaseConfig,
    LeaseManager,
    LeaseStore,
    TickResult,
)
from leaser._version import __version__
from leaser.snapshot import SnapshotStore
from leaser.store import RedisClient
from worker.backoff import startup_retrying
from worker.config import RunConfig
from worker.consumer import ConsumerSettings, ShardConsumer, StopReason
from worker.discovery import ShardDiscovery
from worker.errors import StreamDisabled, StreamNotFound, StreamServerError, StreamThrottled
from worker.handling.delivery import DeliveryFactory, DeliveryPolicy
from worker.handling.destinations import open_destination
from worker.handling.filters import FilterCriteria
from worker.handling.handler import Handler, load_handler
from worker.handling.lambda_compat import ContextFactory, apply_handler_style
from worker.observability import (
    REPORT_METRICS,
    REPORT_VERSION,
    STUCK_STATES,
    HealthServer,
    HealthState,
    Metrics,
    advertised_address,
    start_health_server,
)
from worker.polling import QuietWaker
from worker.reading.budget import ReadBudget
from worker.reading.streams import StreamsClient, parse_stream_arn
from worker.redis_setup import open_redis
from worker.scheduler import ASYNC_HANDLER_THREADS, DEFAULT_THREADS, Scheduler
from worker.snapshot.gate import StreamGate, notice_s

log = logging.getLogger("shardlease.worker")

CLEANUP_INTERVAL_S = 300.0
"""Seconds between the leader's cleanups of ended leases."""
WAKE_MIN_GAP_S = 0.1
"""Seconds a wake-up waits before the heartbeat it triggers, so wake-ups that come together (a burst of
releases or shard ends) share one heartbeat: at least this long between two heartbeats triggered by
wake-ups.  The worker's first wake-up goes at once: nothing came before it to batch with, and on a new
group it is the leader's first shard listing, which the worker's first leases wait for."""
GRANT_POLL_S = 0.2
"""Seconds between polls for handed-over leases while this worker waits for a handoff."""
LANE_THREADS = 32
"""Threads that run the extra lanes of batches when --parallelization-factor is above 1."""
THREAD_JOIN_S = 5.0
"""Seconds a stopping worker waits for each of its own threads (wake-up listener, leader) to end."""
WAKE_LISTEN_S = 0.25
"""Seconds the wake-up listener blocks on Redis at a time: how soon it notices that the worker stops."""
EXIT_ABANDONED = 3
"""Exit code when the worker stops with a handler call still running (hung, or past the shutdown grace):
its lease was left to expire, and the process must exit at once (the call cannot be cancelled)."""


def redis_timeout_s(lease_ttl_s: float) -> float:
    """Socket timeout of the worker's Redis calls: at most 5 s and half the lease TTL, so a heartbeat to
    an unreachable Redis fails (and is retried at the next tick) well before its leases expire."""
    return min(5.0, max(0.5, lease_ttl_s / 2))


@dataclass(frozen=True, slots=True)
class Resolved:
    stream_arn: str
    redis_shown: str


def _close_quietly(what: str, close: Callable[[], Any]) -> None:
    """``close()``, logging (not raising) its error: used while another error is on its way up."""
    try:
        close()
    except Exception:
        log.exception("closing %s failed", what)


def _retrying(call: Callable[[], Any], what: str) -> Any:
    """``call()``, retried with backoff and jitter while AWS throttles or fails (many pods starting
    at once share the account's 10 DescribeStream calls per second), for at most STARTUP_RETRY_S."""
    return startup_retrying(what, (StreamThrottled, StreamServerError), log)(call)


def resolve_stream(streams: StreamsClient, config: RunConfig) -> str:
    """The stream ARN to consume: given, or the table's latest; a disabled stream is refused."""
    if config.stream_arn:
        parse_stream_arn(config.stream_arn)
        arn = config.stream_arn
        setting = "stream_arn (--stream-arn / SHARDLEASE_STREAM_ARN)"
    else:
        assert config.table
        table = config.table
        try:
            arn = _retrying(lambda: streams.latest_stream_arn(table), "DescribeTable")
        except StreamDisabled as exc:
            raise ConfigError("table (--table / SHARDLEASE_TABLE)", str(exc), "enable the table's stream") from exc
        setting = "table (--table / SHARDLEASE_TABLE)"
    try:
        status = _retrying(lambda: streams.stream_status(arn), "DescribeStream")
    except StreamNotFound as exc:
        raise ConfigError(setting, f"stream {arn} does not exist", "check the ARN, region and account") from exc
    if status == "DISABLED":
        raise ConfigError(setting, f"stream {arn} is DISABLED",
                          "enable the table's stream and use its new ARN (--table NAME resolves it)")
    return arn


def build_deliveries(
    config: RunConfig, handler: Handler, stream_arn: str, region: str | None, client: RedisClient,
    metrics: Metrics,
) -> DeliveryFactory:
    """How this worker calls the handler and what it does when the handler fails."""
    contexts = ContextFactory(config.group, stream_arn, region, config.handler_timeout_s)
    handler.use_runtime(timeout_s=config.handler_timeout_s, on_loop_lag=metrics.event_loop_lag)
    styled = apply_handler_style(handler, config.handler_style, stream_arn=stream_arn, contexts=contexts)
    log.info("handler %s is called %s", handler.name,
             "as handle(records, ctx)" if styled is handler else "Lambda-style as handler(event, context)")
    policy = DeliveryPolicy(
        max_retry_attempts=config.max_retry_attempts,
        max_record_age_s=config.max_record_age_s,
        bisect_on_error=config.bisect_on_error,
        stop_on_failure=config.stop_on_failure,
        parallelization_factor=config.parallelization_factor,
    )
    destination = open_destination(config.on_failure, redis_client=client, group=config.group, region=region)
    filters = FilterCriteria.parse(config.filter_patterns) if config.filter_patterns else None
    executor = (ThreadPoolExecutor(max_workers=LANE_THREADS, thread_name_prefix="lane")
                if config.parallelization_factor > 1 else None)
    return DeliveryFactory(call=styled.handle, policy=policy, destination=destination, metrics=metrics, filters=filters,
                           executor=executor)


class Worker:
    def __init__(
        self,
        config: RunConfig,
        *,
        handler: Handler | None = None,
        streams: StreamsClient | None = None,
    ) -> None:
        """Load the handler (unless given), connect to AWS and Redis, resolve the stream: the start-up
        errors (ConfigError, RetryableError once the start-up retries are spent, ...) are raised here.
        The worker owns ``handler`` from here on: it is closed when the worker stops, or here on an error."""
        self._given_streams = streams
        self.config = config
        # What start-up opened is closed again if a later step fails (Redis unreachable, no stream, a bad
        # filter, ...), so a caller that retries (the embedding API) leaks no thread, client or handler.
        with contextlib.ExitStack() as undo:
            self.handler = handler or load_handler(config.handler or "")
            undo.callback(_close_quietly, "the handler", self.handler.close)
            self._open(undo)
            undo.pop_all()

    def _open(self, undo: contextlib.ExitStack) -> None:
        """Connect to AWS and Redis, resolve the stream and set up everything :meth:`run` needs; each
        resource that needs closing is pushed on ``undo``."""
        config = self.config
        # boto3 reads AWS_DEFAULT_REGION; AWS_REGION (what Lambda and newer SDKs set) is honoured too.
        region = config.region or os.environ.get("AWS_REGION") or None
        self.streams = self._given_streams or StreamsClient(
            region_name=region, endpoint_url=config.endpoint_url, lean_http=None)  # None: the lean GetRecords path
        undo.callback(self.streams.close)
        self.metrics = Metrics(config.worker_id, config.group, per_shard=config.per_shard_metrics)
        self.client, self.redis_shown = open_redis(
            config.redis_url, data_dir=config.data_dir, ca_file=config.redis_ca_file,
            cert_file=config.redis_cert_file, key_file=config.redis_key_file,
            socket_timeout_s=redis_timeout_s(config.lease_ttl_s), metrics=self.metrics,
        )
        undo.callback(self.client.close)
        self.stream_arn = resolve_stream(self.streams, config)
        lease_config = LeaseConfig(
            lease_ttl_s=config.lease_ttl_s,
            renew_interval_s=config.renew_interval_s,
            handoff_timeout_s=config.handoff_timeout_s,
            max_leases=config.max_shards,
        )
        self.store = LeaseStore(self.client, config.group, lease_config)
        self.manager = LeaseManager(self.store, config.worker_id)
        self.health = HealthState()
        self.discovery = ShardDiscovery(self.streams, self.store, self.stream_arn, self.metrics)
        self.scheduler = Scheduler(ASYNC_HANDLER_THREADS if self.handler.is_async else DEFAULT_THREADS)
        undo.callback(self.scheduler.close, wait=True)
        # Every consumer asks the snapshot gate, --snapshot or not: a snapshot started by any worker or by
        # `shardlease snapshot` must hold back the records it has to precede (docs/snapshot.md).
        self.gate = StreamGate(SnapshotStore(self.client, config.group, notice_s=notice_s()))
        self.snapshot = None
        if config.snapshot:
            from worker.snapshot.command import prepare as prepare_snapshot  # only with --snapshot

            self.snapshot = prepare_snapshot(config, self.client, self.stream_arn, region,
                                             registry=self.metrics.registry)
        if self.snapshot is not None:
            undo.callback(self.snapshot.reader.close)
        self.deliveries = build_deliveries(config, self.handler, self.stream_arn, region, self.client, self.metrics)
        if self.snapshot is not None:
            self.snapshot.deliveries = self.deliveries
        self.settings = ConsumerSettings(
            stream_arn=self.stream_arn,
            group=config.group,
            worker_id=config.worker_id,
            batch_size=config.batch_size,
            initial_position=config.initial_position,
            idle_poll_interval_s=config.idle_poll_interval_s,
            lease_ttl_s=config.lease_ttl_s,
            batching_window_s=config.batching_window_s,
            active_poll_interval_s=config.active_poll_interval_s,
            quiet_after_s=config.quiet_after_s,
            checkpoint_interval_s=config.checkpoint_interval_s,
        )
        scheduler = self.scheduler
        self.waker = QuietWaker(
            self.settings.poll_policy.wake_gap_s,
            lambda now: scheduler.pull_forward(now, lambda c: c.wake(now)), time.monotonic)
        self.budget = (ReadBudget(config.max_getrecords_per_second, quiet_yield_s=config.idle_poll_interval_s,
                                  ceiling_s=config.idle_poll_interval_s)
                       if config.max_getrecords_per_second > 0 else None)
        """This worker's share of --max-getrecords-per-second (None: no budget), set at each heartbeat and
        whenever consumers start (a handoff grant polled between heartbeats)."""
        self._ready = 0
        """The group's readable shards at the last heartbeat (the budget share's denominator)."""
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._woken = False
        """True once a wake-up has triggered a heartbeat (later ones wait WAKE_MIN_GAP_S first)."""
        self._signals = 0
        self._leader = False
        self._leader_thread: threading.Thread | None = None
        self._sync_now = False
        self._http: HealthServer | None = None
        self._hung: set[ShardConsumer] = set()
        """Consumers whose handler call passed handler_timeout_s (reported once each)."""
        self._hung_exit = False
        self._wake_listener: threading.Thread | None = None
        self.failure: BaseException | None = None
        """The error that stopped the coordinator, when one did (a bug): the stop is then not a requested one."""
        self.abandoned: frozenset[str] = frozenset()
        """Shards whose handler call was still running when :meth:`run` returned (their leases not released)."""
        self._repaired = 0
        self._reported: dict[str, str] = {}
        self._reported_at = 0.0
        self._report_meta: dict[str, str] = {}

    # -- signals -------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"shardlease: second signal, exiting at once\n")
            # Async handler calls in flight are cancelled and get a moment to unwind (their finally blocks);
            # leases are not released: they expire, and the next owners re-read the unfinished batches.  Not
            # even those of calls that unwound within that moment: a thread such a call started may still run.
            try:
                self.manager.leave_leases_to_expire()
                if self.snapshot is not None:  # nor are snapshot segments given back, nor pages taken out of flight
                    self.snapshot.leave_segments_to_expire()
                self.handler.cancel_running()
            finally:  # exit at once whatever the cancellation raised: the leases are left to expire either way
                os._exit(1)
        log.info("%s received: finishing in-flight batches, then releasing leases (up to %.0f s)",
                 signal.Signals(signum).name, self.config.shutdown_grace_s)
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    @property
    def stopped_on_hung_call(self) -> bool:
        """True once a handler call past handler_timeout_s made the worker stop (on_handler_timeout=exit)."""
        return self._hung_exit

    # -- the main loop -------------------------------------------------------------------------

    def run(self, on_started: Callable[[], None] | None = None) -> int:
        """Coordinate until :meth:`stop` (or a signal, a hung handler with on_handler_timeout=exit, a bug in
        the coordinator: then :attr:`failure` is set); returns 0, or :data:`EXIT_ABANDONED` with the shards
        whose calls still run in :attr:`abandoned`.  ``on_started`` is called once the metrics server (a
        taken port raises ConfigError before it) and the wake-up listener are up.  Everything the worker
        started is stopped and joined before it returns, except what waits on an abandoned call."""
        cfg = self.config
        try:
            self._http = start_health_server(cfg.metrics_host, cfg.metrics_port, self.metrics, self.health,
                                             renew_interval_s=cfg.renew_interval_s)
            self._report_meta = {REPORT_METRICS: advertised_address(self._http), REPORT_VERSION: __version__}
            log.info("shardlease %s: worker %s joining group %r on %s; stream %s; handler %s; metrics on %s",
                     __version__, cfg.worker_id, cfg.group, self.redis_shown, self.stream_arn, self.handler.name,
                     self._report_meta[REPORT_METRICS])
            self._wake_listener = threading.Thread(target=self._listen_for_wakeups, name="wake", daemon=True)
            self._wake_listener.start()
            if self.snapshot is not None:
                self.snapshot.start()
            if on_started is not None:
                on_started()
            try:
                while not self._stopping.is_set():
                    self._heartbeat()
                    self._watch_handlers()
                    self._wait_until_next_tick()
            except Exception as exc:
                # A bug in the coordinator: stop the way a SIGTERM does (batches finish, leases go back,
                # calls still running keep their leases and the process exits hard).
                log.exception("the coordinator failed; shutting down")
                self.failure = exc
                self._stopping.set()
            return self._shutdown()
        finally:
            self._close()

    def _close(self) -> None:
        """Stop and join the worker's threads, close the handler and the clients.  A handler call still
        running (hung, or past the grace) cannot be stopped: then nothing that would wait for it is waited
        for, and ``handler.close()`` is not called (it would race the call)."""
        self._stopping.set()
        if self._http is not None:
            self._http.stop()
        in_flight = self.scheduler.close(wait=True)
        self.abandoned = frozenset(in_flight)
        if self.deliveries.executor is not None:
            self.deliveries.executor.shutdown(wait=not in_flight, cancel_futures=True)
        for thread in (self._wake_listener, self._leader_thread):
            if thread is not None:
                thread.join(THREAD_JOIN_S)
                if thread.is_alive():
                    log.warning("the %s thread did not stop within %.0f s", thread.name, THREAD_JOIN_S)
        try:
            if in_flight:
                log.error("handler.close() not called: a handler call is still running on %s",
                          ", ".join(sorted(in_flight)))
            else:
                self.handler.close()  # the user's code: what it raises goes up, after the clients are closed
        finally:
            self.streams.close()
            self.client.close()

    def _heartbeat(self) -> TickResult | None:
        try:
            result = self.metrics.timed_heartbeat(self.manager.tick)
        except CoordinationUnavailable as exc:
            log.warning("heartbeat failed: %s", exc)
            self.health.set_ready(False, "Redis unreachable")
            self._reconcile()
            return None
        except Exception:
            # The coordinator must outlive any error (a Redis error we do not know, a bug): leases not
            # renewed expire, consumers stop on their own checks, the next tick tries again.
            log.exception("heartbeat failed unexpectedly; retrying at the next tick")
            self.health.set_ready(False, "heartbeat failing")
            self._reconcile()
            return None
        self.health.beat()
        self.health.set_ready(True)
        if result.error:
            log.warning("heartbeat done, the rest of the tick failed: %s (what it did is applied; the next "
                        "tick tries again)", result.error)
        self._apply(result)
        self._reconcile()
        self._report()
        return result

    def _apply(self, result: TickResult) -> None:
        if result.group_reset:
            if self.config.initial_position == "LATEST":
                consequence = ("every shard open now restarts at LATEST: records written since the last checkpoints "
                               "and not handled yet are SKIPPED (lost to this group)")
            else:
                consequence = ("every shard restarts at TRIM_HORIZON: records still in the stream are handled "
                               "again (up to 24 h of them)")
            log.error("REDIS LOST THE GROUP'S STATE (restarted without persistence?): every lease and checkpoint "
                      "is gone; %s. Run Redis with append-only persistence to avoid this.", consequence)
        self._ready = result.heartbeat.ready
        self._share_budget()  # before the gained shards' consumers start reading
        for shard, reason in result.lost.items():
            if self.scheduler.stop(shard, StopReason.LOST, detail=reason):
                log.warning("lease lost (%s); stopping the shard", reason, extra={"shard_id": shard})
        self._start(result.gained)
        for shard, taker in result.give:
            if not self.scheduler.stop(shard, StopReason.HANDOFF, handoff_to=taker):
                self._release_given(shard, taker)
        self.metrics.leases_held(len(self.manager.held()))
        hb = result.heartbeat
        if result.is_leader != self._leader:
            self._leader = result.is_leader
            self.metrics.is_leader(self._leader)
            if self._leader:
                log.info("this worker is now the group's leader: it lists the stream's shards")
                self._sync_now = True
                if self._leader_thread is None or not self._leader_thread.is_alive():
                    self._leader_thread = threading.Thread(target=self._lead, name="leader", daemon=True)
                    self._leader_thread.start()
        if self._leader:
            self.metrics.shards_unowned(hb.free + hb.expired)
            if result.group_reset:
                self._sync_now = True

    def _release_given(self, shard: str, taker: str) -> None:
        """Hand over a lease that has no consumer; on a Redis error the next tick's reconcile retries."""
        try:
            self.manager.release(shard, to=taker)
        except CoordinationUnavailable as exc:
            log.warning("could not hand over to %s yet (%s); retrying at the next heartbeat", taker, exc,
                        extra={"shard_id": shard})

    def _reconcile(self) -> None:
        """Make the consumers match the leases: every lease held has a consumer (or is being handed
        over), every consumer's lease is still held with its token.  Repairs are logged and counted."""
        held = self.manager.held()
        giving = self.manager.giving()
        repaired = 0
        for consumer in self.scheduler.consumers():
            if consumer.stop_reason is None:
                why = self.manager.why_not_held(consumer.shard_id, consumer.token)
                if why is not None:
                    # This consumer only (not scheduler.stop, which addresses the shard's current consumer:
                    # a newer one for a re-acquired lease must go on); it stops at its next step.
                    self.scheduler.stop_consumer(consumer, StopReason.LOST, detail=why)
        for shard, acquired in held.items():
            current = self.scheduler.get(shard)
            if current is not None and current.token == acquired.token:
                continue
            if shard in giving:
                if current is None:
                    self._release_given(shard, giving[shard])
                continue
            repaired += 1
            log.warning("lease held (token %d) with no consumer for it; starting one", acquired.token,
                        extra={"shard_id": shard})
            self._start([acquired])
        self._repaired = repaired

    def _watch_handlers(self) -> None:
        """Mark handler calls older than handler_timeout_s as hung; with on_handler_timeout=exit, stop."""
        now = time.monotonic()
        counts = dict.fromkeys(STUCK_STATES, 0)
        counts["no_consumer"] = self._repaired
        for consumer in self.scheduler.consumers():
            stuck = self._stuck(consumer, now)
            if stuck is None:
                continue
            counts[stuck[0]] += 1
            if stuck[0] == "hung" and consumer not in self._hung:
                self._hung.add(consumer)
                self._on_hung(consumer, now - stuck[1])
        self._hung = {c for c in self._hung if c.calls.oldest_start() is not None}
        self.metrics.shards_stuck(counts)
        running_s = self.snapshot.hung_for(self.config.handler_timeout_s) if self.snapshot is not None else None
        if running_s is not None:
            exits = self.config.on_handler_timeout == "exit"
            log.error("a handler call on a snapshot page has run %.0f s, past --handler-timeout %.0f s: it is hung; "
                      "its page holds the group's stream records back while this process lives; %s", running_s,
                      self.config.handler_timeout_s, "the worker exits (code 3) without giving the segment back"
                      if exits else "the call is left running (--on-handler-timeout warn)")
            if exits and not self._hung_exit:
                self._hung_exit = True
                self.stop()

    def _stuck(self, consumer: ShardConsumer, now: float) -> tuple[str, float] | None:
        """(state, since: monotonic s) while a shard makes no progress, else None: ``hung`` once a handler
        call has run longer than handler_timeout_s, else what the consumer itself reports."""
        started = consumer.calls.oldest_start()
        if started is not None and now - started > self.config.handler_timeout_s:
            return "hung", started
        return consumer.stuck()

    def _on_hung(self, consumer: ShardConsumer, running_s: float) -> None:
        exits = self.config.on_handler_timeout == "exit"
        action = ("the worker hands its other shards back and exits (code 3) without releasing this lease, "
                  "so a healthy worker takes the shard over once it expires"
                  if exits else "the call is left running (--on-handler-timeout warn)")
        log.error("handler call has run %.0f s, past --handler-timeout %.0f s: it is hung; %s", running_s,
                  self.config.handler_timeout_s, action, extra={"shard_id": consumer.shard_id})
        if self.config.on_handler_timeout == "exit" and not self._hung_exit:
            self._hung_exit = True
            self.stop()

    def _report(self) -> None:
        """Publish this worker's shards and how they fare, for ``shardlease status`` (on change, and
        often enough to outlive the report's TTL).  Notes: ``ok`` or ``<state>:<since, Unix ms>``."""
        now = time.monotonic()
        wall_ms = int(time.time() * 1000)
        report: dict[str, str] = {}
        for consumer in self.scheduler.consumers():
            if consumer.stop_reason is not None:
                continue
            stuck = self._stuck(consumer, now)
            since_ms = wall_ms - int((now - stuck[1]) * 1000) if stuck is not None else 0
            report[consumer.shard_id] = "ok" if stuck is None else f"{stuck[0]}:{since_ms}"
        report.update(self._report_meta)
        ttl_s = max(30.0, 10 * self.config.renew_interval_s)
        if report != self._reported or now - self._reported_at > ttl_s / 3:
            try:
                self.store.report(self.config.worker_id, report, ttl_s=ttl_s)
                self._reported, self._reported_at = report, now
            except CoordinationUnavailable as exc:
                log.debug("could not publish the shard report: %s", exc)

    def _share_budget(self) -> None:
        """Set this worker's share of the GetRecords budget from the leases it holds now (no budget: nothing)."""
        if self.budget is not None:
            self.budget.set_share(len(self.manager.held()), self._ready)
            self.metrics.budget_share(self.budget.rate)

    def _start(self, gained: list[Any]) -> None:
        if gained:
            # Gained between heartbeats too (grants polled while waiting for a handoff): the share counts them
            # before they read, else a worker that held nothing has 0 calls/s until its next heartbeat.
            self._share_budget()
        for acquired in gained:
            self.metrics.lease_gained(
                {"free": "acquired_free", "expired": "took_expired", "handoff": "handoff", "takeover": "stolen",
                 "reclaimed": "reclaimed"}.get(acquired.how, "acquired_free")
            )
            log.info("lease gained (%s, token %d), resuming after %s", acquired.how, acquired.token,
                     acquired.checkpoint or self.config.initial_position, extra={"shard_id": acquired.shard_id})
            consumer = ShardConsumer(
                acquired, settings=self.settings, streams=self.streams, manager=self.manager,
                handler=self.handler, metrics=self.metrics, on_shard_ended=self._on_shard_ended,
                deliveries=self.deliveries, on_quiet_activity=self.waker.activity, gate=self.gate,
                budget=self.budget,
            )
            self.scheduler.add(consumer)

    def _on_shard_ended(self, shard_id: str, ready_children: list[str]) -> None:
        if not ready_children:
            children = self.discovery.children_of(shard_id)
            if children:
                log.info("children of %s registered: %s", shard_id, ", ".join(children))
        self._wake.set()

    def _lead(self) -> None:
        """While leader: sync the shard graph now and every ``shard_sync_interval_s``; clean up."""
        next_sync = 0.0
        next_cleanup = time.monotonic() + CLEANUP_INTERVAL_S
        full = True
        while self._leader and not self._stopping.is_set():
            now = time.monotonic()
            if now >= next_sync or self._sync_now:
                if self._sync_now:
                    full = True
                self._sync_now = False
                try:
                    if self.discovery.sync(full=full):
                        self._wake.set()
                    full = False
                    next_sync = now + self.config.shard_sync_interval_s
                except Exception as exc:
                    log.warning("shard sync failed (%s); retrying in 5 s", exc)
                    next_sync = now + 5.0
            if now >= next_cleanup:
                try:
                    deleted = self.store.cleanup()
                    if deleted:
                        log.info("cleaned up %d ended leases", len(deleted))
                except CoordinationUnavailable as exc:
                    log.warning("cleanup failed: %s", exc)
                next_cleanup = now + CLEANUP_INTERVAL_S
            self._stopping.wait(0.2)

    def _listen_for_wakeups(self) -> None:
        """Turn releases and shard ends published by any worker into an early heartbeat."""
        while not self._stopping.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
            try:
                pubsub.subscribe(self.store.keys.wake_channel)
                while not self._stopping.is_set():
                    if pubsub.get_message(timeout=WAKE_LISTEN_S) is not None:
                        self._wake.set()
            except (redis.RedisError, redis.exceptions.RedisClusterException):
                self._stopping.wait(1.0)
            finally:
                with contextlib.suppress(redis.RedisError):
                    pubsub.close()

    def _wait_until_next_tick(self) -> None:
        deadline = time.monotonic() + self.config.renew_interval_s
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self.manager.waiting_for_handoff:
                self._wake.wait(min(left, GRANT_POLL_S))
                with contextlib.suppress(CoordinationUnavailable):
                    self._start(self.manager.poll_grants())
            else:
                self._wake.wait(left)
            if self._wake.is_set():
                self._wake.clear()
                if self._woken:
                    time.sleep(WAKE_MIN_GAP_S)
                self._woken = True
                return

    def _shutdown(self) -> int:
        grace = self.config.shutdown_grace_s
        hung = {c.shard_id for c in self._hung}
        log.info("shutting down: %d shards to hand back%s", len(self.scheduler.shard_ids()),
                 f" (a hung handler call keeps {', '.join(sorted(hung))})" if hung else "")
        self._leader = False
        self.manager.leave()
        self.health.set_ready(False, "shutting down")
        # Leave the membership first, so the others count the fleet without this worker when the
        # released leases come free.
        try:
            self.manager.tick()
        except CoordinationUnavailable as exc:
            log.warning("could not leave the group's membership (%s); it lapses in %.0f s", exc,
                        self.config.lease_ttl_s)
        self.scheduler.stop_all(StopReason.SHUTDOWN)
        if self.snapshot is not None:
            self.snapshot.stop()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            # Keep renewing (without membership) until every consumer has released its lease; a hung
            # call is not waited for.
            if not set(self.scheduler.shard_ids()) - hung:
                break
            self.scheduler.wait_idle(min(self.config.renew_interval_s, max(deadline - time.monotonic(), 0)))
            try:
                self.manager.tick()
            except CoordinationUnavailable as exc:
                log.warning("heartbeat during shutdown failed: %s", exc)
        if self.snapshot is not None and not self.snapshot.join(max(deadline - time.monotonic(), 0.0)):
            log.error("the snapshot's scanners did not stop within the grace period; their segments expire")
        in_flight = self.scheduler.in_flight()
        calls_running = self.scheduler.in_handler_calls()  # the steps in flight that run user code
        if calls_running:
            why = "a handler call is hung" if calls_running <= hung else "the grace period is over"
            log.error("%s with handler calls still running on %s: their leases are NOT released (the next owner "
                      "must not start while a call runs); they expire %.0f s after this process exits, and the "
                      "next owner re-reads their batches", why, ", ".join(sorted(calls_running)),
                      self.config.lease_ttl_s)
        if in_flight - calls_running:
            log.warning("the grace period is over with steps still running on %s (no handler call: a Redis or AWS "
                        "call); their leases are left to expire", ", ".join(sorted(in_flight - calls_running)))
        for shard in list(self.manager.held()):
            if shard in in_flight:
                continue
            try:
                self.manager.release(shard)
            except CoordinationUnavailable as exc:
                log.warning("could not release %s (%s); it expires in %.0f s", shard, exc, self.config.lease_ttl_s)
        with contextlib.suppress(CoordinationUnavailable):
            self.manager.tick()  # leave the membership; resign the leadership; renew what is in flight once more
        if calls_running or self._hung_exit:
            log.error("stopped with a handler call abandoned; exiting with code %d", EXIT_ABANDONED)
            return EXIT_ABANDONED
        log.info("stopped")
        return 0
