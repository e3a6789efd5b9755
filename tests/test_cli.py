"""The shardlease command: bad input is one line and exit 2; status; the embedded Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leaser import LeaseStore, ShardSpec, connect
from worker.cli import main
from worker.local import LocalStreamsServer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def stream() -> Iterator[tuple[str, str, LocalStreamsServer]]:
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=2)
        yield server.endpoint_url, table.stream_arn, server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("SHARDLEASE_") and name != "SHARDLEASE_TEST_REDIS_URL":
            monkeypatch.delenv(name)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shardlease: error: ") and "\n" not in err and "Traceback" not in err
    return err


def unreachable_redis_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """An unreachable Redis is retried at start-up (each retry logged), then the command fails on one line;
    returns all of stderr (the password must be in none of it)."""
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("shardlease: error: ") and "redis_url" in last and "Traceback" not in err
    return err


def test_malformed_arn(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    err = one_line_error(capsys, ["run", "--stream-arn", "arn:aws:dynamodb:us-east-1:123:table/x", "--redis-url",
                                  redis_url])
    assert "stream_arn" in err


def test_unknown_flag_value(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["run", "--table", "orders", "--initial-position", "SOMEWHERE"])
    assert "initial_position" in err and "TRIM_HORIZON" in err


def test_handler_that_does_not_import(
    capsys: pytest.CaptureFixture[str], redis_url: str, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, _ = stream
    err = one_line_error(capsys, ["run", "--stream-arn", arn, "--endpoint-url", endpoint, "--redis-url", redis_url,
                                  "--handler", "no_such_module_xyz:handle", "--metrics-port", "0"])
    assert "handler" in err and "no_such_module_xyz" in err


def test_unreachable_redis_is_named_without_its_password(
    capsys: pytest.CaptureFixture[str], stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, _ = stream
    err = unreachable_redis_error(capsys, ["run", "--stream-arn", arn, "--endpoint-url", endpoint,
                                           "--redis-url", "redis://user:hunter2@127.0.0.1:1/0", "--metrics-port", "0"])
    assert "redis_url" in err and "hunter2" not in err


def test_disabled_stream(
    capsys: pytest.CaptureFixture[str], redis_url: str, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, server = stream
    server.model.disable_stream(server.model.table("orders"))
    err = one_line_error(capsys, ["run", "--stream-arn", arn, "--endpoint-url", endpoint, "--redis-url", redis_url,
                                  "--metrics-port", "0"])
    assert "DISABLED" in err
    err = one_line_error(capsys, ["run", "--table", "orders", "--endpoint-url", endpoint, "--redis-url", redis_url,
                                  "--metrics-port", "0"])
    assert "table" in err and "disabled" in err


def test_unknown_stream(
    capsys: pytest.CaptureFixture[str], redis_url: str, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, _ = stream
    other = arn.replace("table/orders", "table/nothere")
    err = one_line_error(capsys, ["run", "--stream-arn", other, "--endpoint-url", endpoint, "--redis-url", redis_url,
                                  "--metrics-port", "0"])
    assert "does not exist" in err


def test_unknown_flag_exits_2_as_a_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "worker", "run", "--no-such-flag"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "--no-such-flag" in proc.stderr


def test_status_shows_workers_and_shards(
    capsys: pytest.CaptureFixture[str], redis_url: str, group: str, redis_client: object
) -> None:
    store = LeaseStore(connect(redis_url), group)
    store.register_shards([ShardSpec("shard-a", (), 1), ShardSpec("shard-b", ("shard-a",), 2)])
    store.heartbeat("w1", {})
    [a], _ = store.acquire("w1", ["shard-a"])
    store.checkpoint("w1", "shard-a", a.token, "100000000000000000042")
    assert main(["status", "--group", group, "--redis-url", redis_url]) == 0
    text = capsys.readouterr().out
    assert "w1 (1 leases)" in text
    assert "shard-a" in text and "owned" in text and "100000000000000000042" in text
    assert "shard-b" in text and "blocked" in text
    assert main(["status", "--group", group, "--redis-url", redis_url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["leader"] == "w1"
    states = {s["shard_id"]: (s["state"], s["owner"]) for s in doc["shards"]}
    assert states == {"shard-a": ("owned", "w1"), "shard-b": ("blocked", None)}


def test_status_never_prints_the_redis_password(capsys: pytest.CaptureFixture[str], group: str) -> None:
    err = unreachable_redis_error(capsys, ["status", "--group", group, "--redis-url", "redis://:s3cret@127.0.0.1:1/0"])
    assert "s3cret" not in err


def test_run_without_redis_url_uses_an_embedded_redis(
    tmp_path: Path, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, server = stream
    table = server.model.table("orders")
    for i in range(10):
        table.put_item({"pk": f"k{i}", "n": i})
    out = tmp_path / "handled.jsonl"
    env = dict(os.environ, SHARDLEASE_TEST_OUT=str(out), PYTHONPATH=str(ROOT),
               SHARDLEASE_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--stream-arn", arn, "--endpoint-url", endpoint,
                             "--handler", "tests.e2e.recording_handler:handle", "--metrics-port", "0"],
                            env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 10):
            time.sleep(0.2)
        assert out.exists() and len(out.read_text().splitlines()) == 10
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        subprocess.run([sys.executable, "-m", "worker", "stop-embedded", "--data-dir", str(tmp_path / "data")],
                       cwd=ROOT, env=env, check=True, timeout=30)
    assert proc.returncode == 0
    assert "embedded Redis" in stderr and "one host only" in stderr
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists() or any((tmp_path / "data" / "redis").iterdir())
