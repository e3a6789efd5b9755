"""Backoff: the jittered waits, and the start-up retry policy (tenacity) around AWS and Redis."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest

from leaser import ConfigError, CoordinationUnavailable
from leaser.embedded import RedisServer, free_port
from worker import backoff
from worker.backoff import FIRST_BACKOFF_S, MAX_BACKOFF_S, backoff_s, startup_retrying
from worker.errors import StreamThrottled
from worker.redis_setup import open_redis


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 30])
def test_backoff_is_full_jitter_up_to_the_documented_ceiling(attempt: int) -> None:
    ceiling = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempt - 1))
    waits = [backoff_s(attempt) for _ in range(500)]
    assert all(0.0 <= w <= ceiling for w in waits)
    assert max(waits) > ceiling * 0.8  # the whole range is used, not half of it


def test_startup_retrying_retries_then_gives_up_within_the_window(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(backoff, "STARTUP_RETRY_S", 0.5)
    monkeypatch.setattr(backoff, "STARTUP_FIRST_BACKOFF_S", 0.05)
    calls: list[float] = []

    def throttled() -> None:
        calls.append(time.monotonic())
        raise StreamThrottled("DescribeStream rate exceeded")

    log = logging.getLogger("test.backoff")
    with caplog.at_level(logging.INFO, logger="test.backoff"), pytest.raises(StreamThrottled):
        startup_retrying("DescribeStream", StreamThrottled, log)(throttled)
    assert len(calls) >= 2 and calls[-1] - calls[0] <= 0.5
    assert "DescribeStream: DescribeStream rate exceeded; retrying in" in caplog.text


def test_startup_retrying_passes_other_errors_and_results_through() -> None:
    log = logging.getLogger("test.backoff")
    assert startup_retrying("x", StreamThrottled, log)(lambda: 7) == 7
    with pytest.raises(ValueError):
        startup_retrying("x", StreamThrottled, log)(lambda: int("nope"))


def test_redis_not_up_yet_is_waited_for(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """open_redis keeps trying a Redis that starts a little later (a pod starting before its Redis)."""
    monkeypatch.setattr(backoff, "STARTUP_RETRY_S", 20.0)
    monkeypatch.setattr(backoff, "STARTUP_FIRST_BACKOFF_S", 0.1)
    port = free_port()
    server = RedisServer(port=port)
    starter = threading.Timer(0.7, server.start)
    starter.start()
    try:
        client, shown = open_redis(f"redis://127.0.0.1:{port}/0", data_dir="/nonexistent")
        assert client.ping() and shown == f"redis://127.0.0.1:{port}/0"
        client.close()
    finally:
        starter.join()
        server.stop()


def test_redis_that_stays_unreachable_is_coordination_unavailable_in_one_redacted_line() -> None:
    with socket.socket() as held:  # a port nothing listens on
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(CoordinationUnavailable) as info:
            open_redis(f"redis://u:Secr3t@127.0.0.1:{port}/0", data_dir="/nonexistent")
    text = str(info.value)
    assert time.monotonic() - started < 5  # the 1 s window of the tests (conftest), not 60 s
    assert "\n" not in text and "Secr3t" not in text and f"127.0.0.1:{port}" in text and "retried for" in text


def test_wrong_credentials_are_a_config_error_at_once(redis_url: str) -> None:
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0]
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        open_redis(f"redis://nobody:Wr0ng@{host_port}/0", data_dir="/nonexistent")
    assert time.monotonic() - started < 0.5
    assert "credentials" in str(info.value) and "Wr0ng" not in str(info.value)


def test_status_and_dlq_retry_an_unreachable_redis_briefly(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """An operator's read-only command waits seconds for Redis, a starting worker up to a minute."""
    from worker import redis_setup

    seen: list[float | None] = []
    real = redis_setup.startup_retrying

    def spy(*args: Any, within_s: float | None = None, **kwargs: Any) -> Any:
        seen.append(within_s)
        return real(*args, within_s=0.2, **kwargs)

    monkeypatch.setattr(redis_setup, "startup_retrying", spy)
    with pytest.raises(CoordinationUnavailable):
        redis_setup.open_existing_redis("redis://127.0.0.1:1/0", data_dir=str(tmp_path))
    with pytest.raises(CoordinationUnavailable):
        redis_setup.open_redis("redis://127.0.0.1:1/0", data_dir=str(tmp_path))
    assert seen == [redis_setup.TOOL_RETRY_S, None]  # None: the worker's STARTUP_RETRY_S
