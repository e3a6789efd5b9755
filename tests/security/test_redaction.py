"""A Redis password given in the URL is never printed: worker logs, ``shardlease status`` output and errors."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leaser.embedded import RedisServer
from tests.security.servers import need_binary

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Sup3r-Secret_pw"
ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/2024-01-01T00:00:00.000"


def _shardlease(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLEASE_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
               SHARDLEASE_TEST_STARTUP_RETRY_S="1")  # an unreachable Redis is retried for 1 s, not 60
    return subprocess.run([sys.executable, "-m", "worker", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    need_binary("redis-server")
    server = RedisServer(tmp_path_factory.mktemp("pw"), extra_args=(
        "--user", "default", "off", "--user", "shard", "on", f">{SECRET}", "~shardlease:{*}:*", "&*", "+@all",
    )).start()
    yield server
    server.stop()


@pytest.mark.parametrize("scheme", ["redis", "rediss"])
def test_worker_run_with_unreachable_redis_prints_no_password(scheme: str, tmp_path: Path) -> None:
    url = f"{scheme}://shard:{SECRET}@127.0.0.1:1/0"
    done = _shardlease("run", "--stream-arn", ARN, "--region", "us-east-1", "--group", "g", "--redis-url", url,
                       "--handler", "worker.handling.handler:log_records",
                       "--data-dir", str(tmp_path), "--log-level", "DEBUG")
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert SECRET not in output
    assert f"{scheme}://shard:***@127.0.0.1:1/0" in done.stderr and "redis_url" in done.stderr


def test_worker_run_with_the_url_in_the_environment_prints_no_password(tmp_path: Path) -> None:
    env_url = f"rediss://shard:{SECRET}@127.0.0.1:1/0?password={SECRET}"
    done = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--stream-arn", ARN, "--region", "us-east-1", "--group", "g",
         "--data-dir", str(tmp_path), "--log-format", "json", "--log-level", "DEBUG",
         "--handler", "worker.handling.handler:log_records"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={**os.environ, "SHARDLEASE_REDIS_URL": env_url, "AWS_ACCESS_KEY_ID": "testing",
             "AWS_SECRET_ACCESS_KEY": "testing", "SHARDLEASE_TEST_STARTUP_RETRY_S": "1"},
    )
    assert done.returncode != 0 and SECRET not in done.stdout + done.stderr and "***" in done.stderr


def test_status_errors_print_no_password(password_server: RedisServer) -> None:
    unreachable = _shardlease("status", "--redis-url", f"redis://shard:{SECRET}@127.0.0.1:1/0")
    wrong = _shardlease("status", "--redis-url", f"redis://shard:{SECRET}x@127.0.0.1:{password_server.port}/0")
    for done in (unreachable, wrong):
        assert done.returncode != 0
        assert SECRET not in done.stdout + done.stderr
        assert done.stderr.count("\n") == 1 and "redis_url" in done.stderr and "shard:***@" in done.stderr
    assert "refused the credentials" in wrong.stderr


def test_status_output_prints_no_password(password_server: RedisServer) -> None:
    url = f"redis://shard:{SECRET}@127.0.0.1:{password_server.port}/0"
    for extra in ((), ("--json",)):
        done = _shardlease("status", "--group", "redacted", "--redis-url", url, *extra)
        assert done.returncode == 0, done.stderr
        assert SECRET not in done.stdout + done.stderr
        assert f"shard:***@127.0.0.1:{password_server.port}" in done.stdout
