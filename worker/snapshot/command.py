"""Starting the snapshot (``run --snapshot``, ``shardlease snapshot``) and showing its progress."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any

from prometheus_client import CollectorRegistry

from leaser.errors import ConfigError
from leaser.snapshot import SnapshotStore
from worker.config import RunConfig
from worker.snapshot.gate import notice_s
from worker.snapshot.progress import SnapshotMetrics, progress_lines
from worker.snapshot.runner import SnapshotRunner, SnapshotSettings
from worker.snapshot.scan import TableReader, default_segments, table_of_stream_arn

log = logging.getLogger("shardlease.snapshot")


def prepare(config: RunConfig, client: Any, stream_arn: str, region: str | None, *,
            registry: CollectorRegistry | None = None, restart: bool = False) -> SnapshotRunner | None:
    """Check the table (one-line ConfigErrors), start the group's snapshot unless it runs or is done
    (``restart`` starts a new one), and return this worker's runner (set its ``deliveries`` before
    starting it); None when the snapshot is done."""
    table = config.table or table_of_stream_arn(stream_arn)
    reader = TableReader(table, region=region, endpoint_url=config.endpoint_url, stream_arn=stream_arn)
    try:
        facts = reader.check(config.snapshot_segments)
        store = SnapshotStore(client, config.group, notice_s=notice_s())
        wanted = config.snapshot_segments or default_segments(facts.size_bytes)
        status, segments = store.start(wanted, restart=restart, note=f"{facts.item_count} {facts.size_bytes}")
    except BaseException:
        reader.close()
        raise
    if status == "done":
        log.info("snapshot: the group's snapshot is done (shardlease snapshot --restart redoes it)")
        reader.close()
        return None
    log.info("snapshot: %s the group's snapshot of table %s (%d segments, about %d items)",
             "started" if status == "started" else "joining", table, segments, facts.item_count)
    settings = SnapshotSettings(
        worker_id=config.worker_id, group=config.group, stream_arn=stream_arn,
        region=reader.region or "", key_names=facts.key_names, view_type=facts.view_type,
        batch_size=config.batch_size, lease_ttl_s=config.lease_ttl_s, renew_interval_s=config.renew_interval_s,
        read_units_per_s=config.snapshot_read_units, max_stream_lag_s=config.snapshot_max_stream_lag_s,
    )
    return SnapshotRunner(store, reader, settings, segments=segments,
                          metrics=SnapshotMetrics(registry) if registry is not None else None)


def run_snapshot_only(config: RunConfig, *, restart: bool) -> int:
    """``shardlease snapshot``: the snapshot alone, then exit 0 (SIGTERM/SIGINT: give segments back, exit 0)."""
    from worker.handling.handler import load_handler
    from worker.observability import Metrics
    from worker.reading.streams import StreamsClient
    from worker.redis_setup import open_redis
    from worker.runtime import build_deliveries, redis_timeout_s, resolve_stream

    region = config.region or os.environ.get("AWS_REGION") or None
    handler = load_handler(config.handler or "")
    streams = StreamsClient(region_name=region, endpoint_url=config.endpoint_url)
    metrics = Metrics(config.worker_id, config.group)
    client, _shown = open_redis(config.redis_url, data_dir=config.data_dir, ca_file=config.redis_ca_file,
                                cert_file=config.redis_cert_file, key_file=config.redis_key_file,
                                socket_timeout_s=redis_timeout_s(config.lease_ttl_s), metrics=metrics)
    try:
        stream_arn = resolve_stream(streams, config)
        runner = prepare(config, client, stream_arn, region, restart=restart)
        if runner is None:
            print("snapshot: already done (give --restart to redo it)")
            return 0
        runner.deliveries = build_deliveries(config, handler, stream_arn, region, client, metrics)
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        runner.start()
        while not stop.is_set() and not runner.finished.is_set():
            stop.wait(0.5)
        runner.stop()
        runner.join(config.shutdown_grace_s)
        state = runner.store.state()
        for line in progress_lines(state, int(time.time() * 1000)):
            print(line)
        return 0
    except ConfigError:
        raise
    finally:
        handler.close()
        streams.close()
        client.close()
