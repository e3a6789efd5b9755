"""Fixtures: certificates, TLS + ACL redis-servers, and a Redis Cluster, all made at test time."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from leaser.embedded import RedisServer
from tests.security.servers import Certs, Cluster, make_certs, need_binary, tls_acl_server


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _start(server: RedisServer) -> RedisServer:
    need_binary("redis-server")
    try:
        return server.start()
    except Exception as exc:
        log = server.data_dir / "redis.log"
        raise AssertionError(f"{exc}\n{log.read_text() if log.exists() else ''}") from exc


@pytest.fixture(scope="session")
def mtls_server(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """TLS only, client certificates required (tls-auth-clients yes), ACL users, default user off."""
    server = _start(tls_acl_server(certs, tmp_path_factory.mktemp("mtls"), client_certs=True))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_server(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """TLS only, no client certificates (tls-auth-clients no), ACL users, default user off."""
    server = _start(tls_acl_server(certs, tmp_path_factory.mktemp("tls"), client_certs=False))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Three primaries and three replicas (the failover test changes which node is primary)."""
    need_binary("redis-server")
    root = Path(tempfile.mkdtemp(prefix="shardlease-cluster-"))
    cl = Cluster(root)
    try:
        cl.start()
        yield cl
    finally:
        cl.stop()
