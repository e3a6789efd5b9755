"""Worker: one ``shardlease run`` process.

The main thread is the coordinator: every ``renew_interval_s`` (sooner when a
release or a shard end is published on the group's wake channel) it sends one
heartbeat through the :class:`~leaser.LeaseManager`, starts consumers for leases
gained, stops those lost or handed over, and, while it holds the leader lease,
lets discovery sync the shard graph in a thread of its own.

Shutdown (first SIGTERM or SIGINT): leave the group's membership, stop polling,
let in-flight batches finish and checkpoint (at most ``shutdown_grace_s``),
release every lease so other workers take over at once, exit 0.  A second
signal exits at once.
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
from leaser.store import RedisClient
from worker.backoff import backoff_s
from worker.config import RunConfig
from worker.consumer import ConsumerSettings, ShardConsumer, StopReason
from worker.delivery import DeliveryFactory, DeliveryPolicy
from worker.destinations import open_destination
from worker.discovery import ShardDiscovery
from worker.errors import StreamDisabled, StreamNotFound, StreamServerError, StreamThrottled
from worker.filters import FilterCriteria
from worker.handler import Handler, load_handler
from worker.lambda_compat import ContextFactory, apply_handler_style
from worker.observability import HealthServer, HealthState, Metrics
from worker.redis_setup import open_redis
from worker.scheduler import Scheduler
from worker.streams import StreamsClient, parse_stream_arn

log = logging.getLogger("shardlease.worker")

CLEANUP_INTERVAL_S = 300.0
"""Seconds between the leader's cleanups of ended leases."""
WAKE_MIN_GAP_S = 0.1
"""Least time, in seconds, between two heartbeats triggered by wake-ups."""
GRANT_POLL_S = 0.2
"""Seconds between polls for handed-over leases while this worker waits for a handoff."""
LANE_THREADS = 32
"""Threads that run the extra lanes of batches when --parallelization-factor is above 1."""


@dataclass(frozen=True, slots=True)
class Resolved:
    stream_arn: str
    redis_shown: str


STARTUP_RETRY_S = 60.0
"""Seconds a starting worker keeps retrying a throttled or failing DescribeTable/DescribeStream."""


def _retrying(call: Callable[[], Any], what: str) -> Any:
    """``call()``, retried with backoff and jitter while AWS throttles or fails (many pods starting
    at once share the account's 10 DescribeStream calls per second)."""
    deadline = time.monotonic() + STARTUP_RETRY_S
    attempt = 0
    while True:
        try:
            return call()
        except (StreamThrottled, StreamServerError) as exc:
            attempt += 1
            delay = backoff_s(attempt + 3)
            if time.monotonic() + delay > deadline:
                raise
            log.info("%s: %s; retrying in %.1f s", what, exc, delay)
            time.sleep(delay)


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
        self.config = config
        self.handler = handler or load_handler(config.handler)
        # boto3 reads AWS_DEFAULT_REGION; AWS_REGION (what Lambda and newer SDKs set) is honoured too.
        region = config.region or os.environ.get("AWS_REGION") or None
        self.streams = streams or StreamsClient(region_name=region, endpoint_url=config.endpoint_url)
        self.client, self.redis_shown = open_redis(
            config.redis_url, data_dir=config.data_dir, ca_file=config.redis_ca_file,
            cert_file=config.redis_cert_file, key_file=config.redis_key_file,
        )
        self.stream_arn = resolve_stream(self.streams, config)
        lease_config = LeaseConfig(
            lease_ttl_s=config.lease_ttl_s,
            renew_interval_s=config.renew_interval_s,
            handoff_timeout_s=config.handoff_timeout_s,
            max_leases=config.max_shards,
        )
        self.store = LeaseStore(self.client, config.group, lease_config)
        self.manager = LeaseManager(self.store, config.worker_id)
        self.metrics = Metrics(config.worker_id, config.group)
        self.health = HealthState()
        self.discovery = ShardDiscovery(self.streams, self.store, self.stream_arn, self.metrics)
        self.scheduler = Scheduler()
        self.deliveries = build_deliveries(config, self.handler, self.stream_arn, region, self.client, self.metrics)
        self.settings = ConsumerSettings(
            stream_arn=self.stream_arn,
            group=config.group,
            worker_id=config.worker_id,
            batch_size=config.batch_size,
            initial_position=config.initial_position,
            idle_poll_interval_s=config.idle_poll_interval_s,
            lease_ttl_s=config.lease_ttl_s,
            batching_window_s=config.batching_window_s,
        )
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._signals = 0
        self._leader = False
        self._leader_thread: threading.Thread | None = None
        self._sync_now = False
        self._http: HealthServer | None = None

    # -- signals -------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            os.write(2, b"shardlease: second signal, exiting at once\n")
            os._exit(1)
        log.info("%s received: finishing in-flight batches, then releasing leases (up to %.0f s)",
                 signal.Signals(signum).name, self.config.shutdown_grace_s)
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    # -- the main loop -------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        if cfg.metrics_port:
            self._http = HealthServer(cfg.metrics_host, cfg.metrics_port, self.metrics, self.health,
                                      renew_interval_s=cfg.renew_interval_s).start()
        log.info("worker %s joining group %r on %s; stream %s; handler %s", cfg.worker_id, cfg.group,
                 self.redis_shown, self.stream_arn, self.handler.name)
        wake_listener = threading.Thread(target=self._listen_for_wakeups, name="wake", daemon=True)
        wake_listener.start()
        try:
            while not self._stopping.is_set():
                self._heartbeat()
                self._wait_until_next_tick()
            return self._shutdown()
        finally:
            if self._http is not None:
                self._http.stop()
            self.scheduler.close()
            self.handler.close()
            self.streams.close()

    def _heartbeat(self) -> TickResult | None:
        try:
            result = self.manager.tick()
        except CoordinationUnavailable as exc:
            log.warning("heartbeat failed: %s", exc)
            self.health.set_ready(False, "Redis unreachable")
            return None
        self.health.beat()
        self.health.set_ready(True)
        self._apply(result)
        return result

    def _apply(self, result: TickResult) -> None:
        if result.group_reset:
            log.error("REDIS LOST THE GROUP'S STATE (restarted without persistence?): every lease and checkpoint "
                      "is gone; the group starts over from its initial position (%s); records will be handled "
                      "again. Run Redis with append-only persistence to avoid this.", self.config.initial_position)
        for shard, reason in result.lost.items():
            if self.scheduler.stop(shard, StopReason.LOST, detail=reason):
                log.warning("lease lost (%s); stopping the shard", reason, extra={"shard_id": shard})
        self._start(result.gained)
        for shard, taker in result.give:
            if not self.scheduler.stop(shard, StopReason.HANDOFF, handoff_to=taker):
                self.manager.release(shard, to=taker)
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

    def _start(self, gained: list[Any]) -> None:
        for acquired in gained:
            self.metrics.lease_gained(
                {"free": "acquired_free", "expired": "took_expired", "handoff": "handoff", "takeover": "stolen"}.get(
                    acquired.how, "acquired_free"
                )
            )
            log.info("lease gained (%s, token %d), resuming after %s", acquired.how, acquired.token,
                     acquired.checkpoint or self.config.initial_position, extra={"shard_id": acquired.shard_id})
            consumer = ShardConsumer(
                acquired, settings=self.settings, streams=self.streams, manager=self.manager,
                handler=self.handler, metrics=self.metrics, on_shard_ended=self._on_shard_ended,
                deliveries=self.deliveries,
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
                    if pubsub.get_message(timeout=1.0) is not None:
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
                time.sleep(WAKE_MIN_GAP_S)
                return

    def _shutdown(self) -> int:
        grace = self.config.shutdown_grace_s
        log.info("shutting down: %d shards to hand back", len(self.scheduler.shard_ids()))
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
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            # Keep renewing (without membership) until every consumer has released its lease.
            if self.scheduler.wait_idle(min(self.config.renew_interval_s, max(deadline - time.monotonic(), 0))):
                break
            try:
                self.manager.tick()
            except CoordinationUnavailable as exc:
                log.warning("heartbeat during shutdown failed: %s", exc)
        left = self.scheduler.shard_ids()
        if left:
            log.warning("grace period over with %d batches still in flight; releasing without their checkpoint "
                        "(the next owner re-reads them): %s", len(left), ", ".join(left))
        for shard in list(self.manager.held()):
            try:
                self.manager.release(shard)
            except CoordinationUnavailable as exc:
                log.warning("could not release %s (%s); it expires in %.0f s", shard, exc, self.config.lease_ttl_s)
        with contextlib.suppress(CoordinationUnavailable):
            self.manager.tick()  # leave the membership; resign the leadership
        log.info("stopped")
        return 0
