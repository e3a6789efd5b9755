"""The worker's Redis client: no call is sent twice by the client, and every call is bounded below the
lease TTL (a reply lost after a script ran is handled by the scripts and the manager, not by a retry)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from leaser import CoordinationUnavailable, LeaseConfig, LeaseManager, LeaseStore
from worker.redis_setup import open_redis
from worker.runtime import redis_timeout_s


def test_the_worker_client_never_retries_and_times_out_below_the_lease_ttl(redis_url: str, tmp_path: Path) -> None:
    client, _ = open_redis(redis_url, data_dir=str(tmp_path), socket_timeout_s=redis_timeout_s(5.0))
    conn = client.connection_pool.make_connection()
    # redis-py 6 added Retry.get_retries(); 5.x (our lowest supported) keeps the count in _retries.
    retry = conn.retry
    assert (retry.get_retries() if hasattr(retry, "get_retries") else retry._retries) == 0
    assert conn.socket_timeout == 2.5 and conn.socket_connect_timeout == 2.5
    assert redis_timeout_s(60.0) == 5.0 and redis_timeout_s(1.0) == 0.5


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers (a Redis behind a black hole)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.timeout(30)
def test_a_heartbeat_to_a_redis_that_never_answers_fails_instead_of_hanging(silent_server: int) -> None:
    import redis

    client = redis.Redis.from_url(f"redis://127.0.0.1:{silent_server}/0", decode_responses=True,
                                  socket_timeout=redis_timeout_s(2.0), socket_connect_timeout=redis_timeout_s(2.0))
    manager = LeaseManager(LeaseStore(client, "g", LeaseConfig(lease_ttl_s=2.0, renew_interval_s=0.5)), "w1")
    with pytest.raises(CoordinationUnavailable):
        manager.tick()
    assert manager.held() == {}
