"""The snapshot end to end: real workers, a real Redis, the local endpoint (docs/snapshot.md)."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from leaser.snapshot import SnapshotStore
from tests.e2e.fleet import Fleet
from tests.e2e.sink_handler import _plain
from worker.local import LocalStreamsServer
from worker.reading.records import from_typed_item

pytestmark = pytest.mark.e2e

SINK = "tests.e2e.sink_handler:handle"


class Churn:
    """Puts, updates and deletes items in the background (each write gives the item a new, larger ``v``)."""

    def __init__(self, table: Any, keys: int, *, per_tick: int = 20, tick_s: float = 0.05, seed: int = 7) -> None:
        self.table, self.keys, self.per_tick, self.tick_s = table, keys, per_tick, tick_s
        self.rng = random.Random(seed)
        self.version = 1_000_000
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="churn")

    def _run(self) -> None:
        while not self._stop.is_set():
            for _ in range(self.per_tick):
                self.version += 1
                pk = f"k{self.rng.randrange(self.keys + self.keys // 10):05d}"  # some new keys too
                roll = self.rng.random()
                if roll < 0.15:
                    self.table.delete_item({"pk": pk})
                elif roll < 0.5:
                    self.table.update_item({"pk": pk}, {"v": self.version})
                else:
                    self.table.put_item({"pk": pk, "v": self.version, "pad": "y" * 16})
                self.writes += 1
            self._stop.wait(self.tick_s)

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def table_items(table: Any) -> dict[str, dict[str, Any]]:
    with table.model.lock:
        items = [dict(v) for v in table.items.values()]
    return {i["pk"]["S"]: _plain(from_typed_item(i)) for i in items}


def sink_items(client: redis.Redis, key: str) -> dict[str, dict[str, Any]]:
    return {k.decode(): orjson.loads(v) for k, v in client.hgetall(key).items()}


def check_journal(client: redis.Redis, key: str) -> int:
    """No snapshot item of a key was applied after a stream record of a later write to it; returns how many
    snapshot items the journal holds."""
    newest_write: dict[str, int] = {}
    snapshot_items = 0
    for raw in client.lrange(key + ":journal", 0, -1):
        kind, pk, version = raw.decode().split(" ")
        if kind == "w":
            newest_write[pk] = max(newest_write.get(pk, -1), int(version))
        elif kind == "s":
            snapshot_items += 1
            assert int(version) >= newest_write.get(pk, -1), (
                f"snapshot item of {pk} (v={version}) applied after the record of a later write "
                f"(v={newest_write[pk]})")
    return snapshot_items


def start_fleet(tmp_path: Path, redis_url: str, server: LocalStreamsServer, arn: str, group: str,
                sink_key: str, **settings: str) -> Fleet:
    fleet = Fleet(tmp_path, redis_url, server.endpoint_url, arn, group, snapshot="true", **settings)
    env = {"SHARDLEASE_TEST_SINK_URL": redis_url, "SHARDLEASE_TEST_SINK_KEY": sink_key}
    for name in ("w1", "w2", "w3"):
        fleet.start(name, handler=SINK, **env)
    return fleet


def wait_converged(client: redis.Redis, store: SnapshotStore, table: Any, sink_key: str,
                   timeout_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        want, got = table_items(table), sink_items(client, sink_key)
        if (store.state().status == "done" and want == got) or time.monotonic() > deadline:
            return want, got
        time.sleep(0.5)


def test_three_workers_bootstrap_a_sink_through_writes_split_rollover_sigterm_and_sigkill(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    sink_key = f"sink:{group}"
    with LocalStreamsServer(port=0, seed=5, empty_page_probability=0.0) as server:
        model = server.model
        table = server.create_table("items", shards=4, stream_enabled=False)
        for i in range(20_000):
            table.put_item({"pk": f"k{i:05d}", "v": i, "pad": "x" * 16})
        arn = model.enable_stream(table, "NEW_AND_OLD_IMAGES")
        # About 15 read units a page of 1,000 items: 60 units/s make the scan last several seconds.
        fleet = start_fleet(tmp_path, redis_url, server, arn, group, sink_key, **{
            "snapshot-segments": "12", "snapshot-read-units": "60", "batch-size": "200"})
        store = SnapshotStore(redis.Redis.from_url(redis_url, decode_responses=True), group)
        try:
            with Churn(table, 20_000):
                deadline = time.monotonic() + 30
                while store.state().pages < 3 and time.monotonic() < deadline:  # the workers start up
                    time.sleep(0.1)
                assert store.state().status == "running"
                model.split_shard(table, model.shard_ids(table, open_only=True)[0])
                time.sleep(1)
                fleet.signal("w2", signal.SIGTERM)  # hands its segments and shards back
                time.sleep(1)
                model.rollover_shard(table, model.shard_ids(table, open_only=True)[1])
                time.sleep(0.5)
                fleet.signal("w3", signal.SIGKILL)  # its segments and pages in flight expire
                mid = store.state()
                time.sleep(2)
            assert mid.status == "running" and mid.segments_done < mid.segments, "the kills were not mid-scan"
            want, got = wait_converged(client, store, table, sink_key, timeout_s=60)
            codes = fleet.stop_all()
        finally:
            fleet.stop_all()
        state = store.state()
        assert state.status == "done" and state.segments_done == 12
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        differ = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        assert not (missing or extra or differ), (
            f"sink != table: {len(missing)} missing {missing[:5]}, {len(extra)} extra {extra[:5]}, "
            f"{len(differ)} differ {differ[:5]}")
        assert len(want) > 15_000
        assert check_journal(client, sink_key) >= state.items > 15_000
        assert codes["w1"] == 0 and codes["w2"] == 0
        assert "segment" in fleet.log_text("w2") and "given back" in fleet.log_text("w2")


class Trimmer:
    """Trims the stream's records older than ``retention_s``, as DynamoDB does after 24 hours."""

    def __init__(self, model: Any, arn: str, retention_s: float) -> None:
        self.model, self.arn, self.retention_s = model, arn, retention_s
        self.trimmed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="trimmer")

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self.trimmed += self.model.trim(self.arn, before=time.time() - self.retention_s)

    def __enter__(self) -> Trimmer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_a_snapshot_longer_than_the_streams_retention_loses_nothing(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    sink_key = f"sink:{group}"
    retention_s = 3.0
    with LocalStreamsServer(port=0, seed=6, empty_page_probability=0.0) as server:
        model = server.model
        table = server.create_table("items", shards=2, stream_enabled=False)
        for i in range(4_000):
            table.put_item({"pk": f"k{i:05d}", "v": i, "pad": "x" * 16})
        arn = model.enable_stream(table, "NEW_IMAGE")
        # 4 segments of ~1,000 items, ~17 read units a page: at 8 units/s the scan takes about 9 s, 3x the
        # retention.
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, arn, group, snapshot="true",
                      **{"snapshot-segments": "4", "snapshot-read-units": "8", "batch-size": "100"})
        env = {"SHARDLEASE_TEST_SINK_URL": redis_url, "SHARDLEASE_TEST_SINK_KEY": sink_key}
        for name in ("w1", "w2"):
            fleet.start(name, handler=SINK, **env)
        store = SnapshotStore(redis.Redis.from_url(redis_url, decode_responses=True), group)
        try:
            with Churn(table, 4_000, per_tick=5, tick_s=0.1), Trimmer(model, arn, retention_s) as trimmer:
                deadline = time.monotonic() + 60
                while store.state().status != "done" and time.monotonic() < deadline:
                    time.sleep(0.2)
                state = store.state()
                assert state.status == "done"
                assert (state.done_ms - state.started_ms) / 1000 > 2 * retention_s
                time.sleep(1)
            assert trimmer.trimmed > 0
            want, got = wait_converged(client, store, table, sink_key, timeout_s=30)
        finally:
            fleet.stop_all()
        assert want == got, f"sink != table: {len(set(want) ^ set(got))} keys differ in presence"
        check_journal(client, sink_key)
        for name in ("w1", "w2"):
            assert "retention" not in fleet.log_text(name), fleet.log_text(name)[-2000:]


def test_a_hung_call_on_a_snapshot_page_stops_its_worker_and_another_finishes_the_snapshot(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    sink_key = f"sink:{group}"
    with LocalStreamsServer(port=0, seed=8, empty_page_probability=0.0) as server:
        table = server.create_table("items", shards=1, stream_enabled=False)
        for i in range(1_000):
            table.put_item({"pk": f"k{i:05d}", "v": i})
        arn = server.model.enable_stream(table, "NEW_IMAGE")
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, arn, group, snapshot="true",
                      **{"snapshot-segments": "2", "handler-timeout": "1", "shutdown-grace": "1"})
        env = {"SHARDLEASE_TEST_SINK_URL": redis_url, "SHARDLEASE_TEST_SINK_KEY": sink_key}
        store = SnapshotStore(redis.Redis.from_url(redis_url, decode_responses=True), group)
        try:
            hung = fleet.start("w1", handler=SINK, SHARDLEASE_TEST_HANG_ON_SNAPSHOT="1", **env)
            assert hung.wait(30) == 3
            assert "snapshot page" in fleet.log_text("w1") and store.state().status == "running"
            fleet.start("w2", handler=SINK, **env)
            want, got = wait_converged(client, store, table, sink_key, timeout_s=30)
        finally:
            fleet.stop_all()
        assert store.state().status == "done"
        assert want == got
