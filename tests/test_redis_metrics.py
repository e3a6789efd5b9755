"""Redis round trips measured at the worker's client (worker.redis_metrics), against a real Redis."""

from __future__ import annotations

import re

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

import leaser.scripts
import leaser.snapshot
from leaser import CoordinationUnavailable, LeaseConfig, LeaseManager, LeaseStore, ShardSpec
from worker.observability import REDIS_ERRORS, Metrics
from worker.redis_metrics import COMMANDS, SCRIPTS, error_kind, instrument
from worker.redis_setup import open_redis


def _labels(m: Metrics, name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of the samples named ``name`` that are above 0."""
    return {tuple(sorted(s.labels.items())) for family in m.registry.collect() for s in family.samples
            if s.name == name and s.value > 0}


def _commands(m: Metrics) -> set[str]:
    return {dict(labels)["command"] for labels in _labels(m, "shardlease_redis_command_duration_seconds_count")}


def test_the_script_list_is_the_leasers() -> None:
    """The lease protocol's scripts and the snapshot's (a script missing here was labelled script:other)."""
    snapshot = {f"snapshot_{name}" for name in leaser.snapshot.SCRIPTS}
    assert set(leaser.scripts.NAMES) | snapshot == SCRIPTS
    for name in sorted(SCRIPTS):  # each header names its script, as the label needs
        assert re.search(rf"^-- {name}: ", leaser.scripts.source(name), re.MULTILINE), name


def test_every_round_trip_of_the_lease_protocol_is_measured(redis_url: str, group: str) -> None:
    m = Metrics("w-1", group)
    client, _ = open_redis(redis_url, data_dir="/nonexistent", metrics=m)
    try:
        store = LeaseStore(client, group, LeaseConfig(lease_ttl_s=3, renew_interval_s=1))
        store.register_shards([ShardSpec("p", (), 1), ShardSpec("c", ("p",), 2)])  # pipelined script calls
        manager = LeaseManager(store, "w-1")
        manager.tick()
        manager.tick()
        assert list(manager.held()) == ["p"]
        manager.checkpoint("p", "100")
        assert store.leases()  # a pipeline of HGETALLs
        store.candidates(5)  # a pipeline of TIME and ZRANGEs
        store.report("w-1", {"p": "ok"}, ttl_s=30)  # a MULTI/EXEC pipeline of different commands
        commands = _commands(m)
        assert {"ping", "script:register", "script:acquire", "script:heartbeat", "script:checkpoint", "hgetall",
                "pipeline"} <= commands, commands
        assert all(c in COMMANDS or c == "pipeline" or c.removeprefix("script:") in SCRIPTS for c in commands)
        assert "script:other" not in commands and "other" not in commands
        heartbeats = m.value("shardlease_redis_command_duration_seconds_count", {"command": "script:heartbeat"})
        assert heartbeats is not None and heartbeats >= 2  # one per tick at least
        assert not _labels(m, "shardlease_redis_command_errors_total")

        # Scripts flushed (a Redis restart): EVALSHA answers NOSCRIPT once, then the script is loaded again:
        # both round trips are measured, neither counts as an error (every script's first call does the same).
        client.script_flush()
        manager.tick()
        assert not _labels(m, "shardlease_redis_command_errors_total")
        after = m.value("shardlease_redis_command_duration_seconds_count", {"command": "script:heartbeat"})
        assert after is not None and after >= heartbeats + 2  # the refused call, then the one after SCRIPT LOAD
        assert "script" in _commands(m)  # SCRIPT LOAD
        text = m.render().decode()
        assert "_created" not in text and "shard_id" not in text
    finally:
        client.close()


def test_a_failing_redis_is_counted_by_error(redis_url: str, group: str) -> None:
    m = Metrics("w-1", group)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    instrument(client, m)
    instrument(client, m)  # idempotent: counted once
    client.ping()
    assert m.value("shardlease_redis_command_duration_seconds_count", {"command": "ping"}) == 1
    with pytest.raises(redis.ResponseError):
        client.execute_command("NOSUCHCOMMAND")
    assert m.value("shardlease_redis_command_errors_total", {"command": "other", "error": "response"}) == 1
    client.close()

    # Nothing listens on this port: the connection fails, and is counted under the command tried.
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, decode_responses=True,
                       retry=Retry(NoBackoff(), 0))
    instrument(dead, m)
    store = LeaseStore(dead, group)
    with pytest.raises(CoordinationUnavailable):
        store.heartbeat("w-1", {})
    assert m.value("shardlease_redis_command_errors_total",
                   {"command": "script:heartbeat", "error": "connection"}) == 1
    errors = {dict(labels)["error"] for labels in _labels(m, "shardlease_redis_command_errors_total")}
    assert errors <= set(REDIS_ERRORS)


def test_error_kinds() -> None:
    assert error_kind(redis.exceptions.TimeoutError()) == "timeout"
    assert error_kind(redis.exceptions.ConnectionError()) == "connection"
    assert error_kind(redis.exceptions.ClusterDownError("down")) == "cluster"
    assert error_kind(redis.exceptions.MovedError("1 127.0.0.1:7000")) == "cluster"
    assert error_kind(redis.exceptions.ReadOnlyError()) == "response"
    assert error_kind(redis.exceptions.NoScriptError()) is None
    assert error_kind(ValueError()) == "other"
    assert set(map(error_kind, (redis.exceptions.TimeoutError(), ValueError()))) <= set(REDIS_ERRORS)
