"""Shared fixtures: one private redis-server per test session, a fresh group per test."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, settings

from leaser.embedded import RedisServer, env_redis_url

# Property tests run the same examples on every run ("ci", the default): a red CI is a real failure.
# HYPOTHESIS_PROFILE=explore (or --hypothesis-profile=explore) tries many more, from random seeds;
# HYPOTHESIS_EXAMPLES sets how many.  Tests that set max_examples use max(theirs, the profile's).
settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=int(os.environ.get("HYPOTHESIS_EXAMPLES", "10000")),
    derandomize=False,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A snapshot's first page waits out a notice after its start (leaser.snapshot.NOTICE_S, 10 s): 1 s in tests, for
# this process and every worker process a test starts (they inherit the environment).
os.environ.setdefault("SHARDLEASE_TEST_SNAPSHOT_NOTICE_S", "1")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): at least 4 test processes, even on 2 cores, at most 8.

    The slow tests run real workers that mostly wait on lease timers and polls, not on the CPU.  Every test
    starts its own servers on free ports, so tests in different processes never share a Redis or a port.
    """
    return max(4, min(os.cpu_count() or 1, 8))


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """URL of a moto server (real DynamoDB and DynamoDB Streams APIs, in memory) for the module's tests.  moto is
    imported here, not at the top: importing it adds a before-send hook to every botocore session made after."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis: ``REDIS_URL`` if set, else a throwaway redis-server for this session."""
    url = env_redis_url()
    if url:
        yield url
        return
    server = RedisServer().start()
    os.environ["SHARDLEASE_TEST_REDIS_URL"] = server.url
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _short_startup_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process start-up retries (a Redis not reachable yet, DescribeStream throttled) give up after 1 s
    instead of 60 s, so tests of unreachable settings stay fast; a test of the window sets its own."""
    from worker import backoff

    monkeypatch.setattr(backoff, "STARTUP_RETRY_S", 1.0)


@pytest.fixture(autouse=True)
def _no_leftover_log_handler() -> Iterator[None]:
    """A test that ran the CLI in-process leaves the handler configure_logging installed on the root
    logger, writing to that test's captured stderr: remove it, so later tests' logs do not hit a closed stream."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if getattr(h, "_shardlease", False)]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)


@pytest.fixture
def group() -> str:
    """A consumer-group name no other test uses: each test gets its own key namespace."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_client(redis_url: str, group: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        for key in client.scan_iter(match=f"shardlease:{{{group}}}:*", count=1000):
            client.delete(key)
        client.close()
