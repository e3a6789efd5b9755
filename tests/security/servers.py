"""Test servers for the security tests: certificates, a TLS + ACL redis-server, a Redis Cluster.

Everything is made at test time on loopback ports: a CA, a server certificate for
127.0.0.1/localhost, a client certificate, and redis-server processes started from
:class:`leaser.RedisServer` with extra arguments.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from leaser.embedded import RedisServer, find_redis_server, free_port

# The worker's ACL rule, exactly as docs/security.md gives it (a test compares the two): the group's keys
# and wake channel, and only the commands shardlease sends (the Lua scripts' redis.call()s are checked too).
WORKER_USER = "shard"
WORKER_PASSWORD = "s3cret-Pw_42"
WORKER_ACL_COMMANDS = (
    "-@all +ping +time +evalsha +script|load +script|exists "
    "+hget +hgetall +hmget +hset +hsetnx +hdel +hexists +hincrby +sadd +srem +smembers "
    "+zadd +zrem +zrange +zrangebyscore +zremrangebyscore +zscore +zcard +zcount "
    "+incr +incrby +del +exists +pexpire +publish +subscribe +unsubscribe +xadd +xrange +xlen +xdel "
    "+cluster|slots +command +asking"
)
WORKER_ACL = ("on", f">{WORKER_PASSWORD}", "resetkeys", "~shardlease:{*}:*", "resetchannels",
              "&shardlease:{*}:wake", *WORKER_ACL_COMMANDS.split())
ADMIN_USER = "admin"
ADMIN_PASSWORD = "admin-pw-9"


def need_binary(name: str) -> str:
    """Path of a binary the test needs; skips when missing, but fails in CI (CI=true)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{message} (required in CI)")
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing here: trusting it must fail the handshake."""


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _ca(name: str, directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey, Path]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = directory / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key, path


def _leaf(name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, directory: Path,
          *, server: bool) -> tuple[Path, Path]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)
    return cert_path, key_path


def make_certs(directory: Path) -> Certs:
    ca, ca_key, ca_path = _ca("test-ca", directory)
    server_cert, server_key = _leaf("redis-server", ca, ca_key, directory, server=True)
    client_cert, client_key = _leaf("shard-worker", ca, ca_key, directory, server=False)
    _, _, other = _ca("other-ca", directory)
    return Certs(ca_path, server_cert, server_key, client_cert, client_key, other)


def tls_acl_server(certs: Certs, data_dir: Path, *, client_certs: bool) -> RedisServer:
    """A redis-server with TLS only (no plain port) and ACL users; the default user is off.

    ``client_certs``: ``tls-auth-clients yes`` (mutual TLS) or ``no``.
    """
    tls_port = free_port()
    acl_file = data_dir / "users.acl"
    data_dir.mkdir(parents=True, exist_ok=True)
    acl_file.write_text(
        "user default off nopass -@all\n"
        f"user {WORKER_USER} {' '.join(WORKER_ACL)}\n"
        f"user {ADMIN_USER} on >{ADMIN_PASSWORD} ~* &* +@all\n"
    )
    server = RedisServer(data_dir, port=tls_port, extra_args=(
        "--port", "0", "--tls-port", str(tls_port),
        "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
        "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "yes" if client_certs else "no",
        "--aclfile", str(acl_file),
    ))
    return server


# -- Redis Cluster ---------------------------------------------------------------------------------------


def cluster_port() -> int:
    """A free loopback port below 55536 whose cluster bus port (+10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node")


class Cluster:
    """Three primaries and three replicas on loopback, created with ``redis-cli --cluster create``."""

    def __init__(self, root: Path, size: int = 6) -> None:
        self.root = root
        self.servers: list[RedisServer] = []
        self.size = size

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, decode_responses=True, socket_timeout=5)

    def start(self) -> Cluster:
        cli = need_binary("redis-cli")
        find_redis_server()
        for i in range(self.size):
            port = cluster_port()
            server = RedisServer(self.root / f"n{i}", port=port, persistent=True, extra_args=(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1000", "--cluster-replica-validity-factor", "0",
                "--appendfilename", "appendonly.aof",
            ))
            self.servers.append(server.start())
        subprocess.run(
            [cli, "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_ok(60)
        return self

    def wait_ok(self, timeout_s: float) -> None:
        """Until every live node says cluster_state:ok and agrees all 16384 slots are served."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = []
            for server in self.servers:
                if server.process is None:
                    continue
                try:
                    info = self.node(server.port).cluster("info")
                    states.append(info["cluster_state"] == "ok" and int(info["cluster_slots_ok"]) == 16384)
                except redis.RedisError:
                    states.append(False)
            if all(states):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"cluster not ok within {timeout_s} s")
            time.sleep(0.1)

    def primary_of(self, key: str) -> int:
        """Port of the primary serving ``key``'s slot, as the first live node sees it."""
        for server in self.servers:
            if server.process is None:
                continue
            client = self.node(server.port)
            slot = client.cluster("keyslot", key)
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= int(slot) <= int(end):
                    return int(primary[1])
        raise AssertionError("no live node")

    def replicas_of(self, primary_port: int, timeout_s: float = 15.0) -> list[int]:
        """Ports of the primary's replicas (waits until it has one: after a failover the old primary rejoins)."""
        client = self.node(primary_port)
        my_id = client.execute_command("CLUSTER", "MYID")
        deadline = time.monotonic() + timeout_s
        while True:
            lines = client.execute_command("CLUSTER", "REPLICAS", my_id)
            ports = [int(line.split()[1].split("@")[0].rsplit(":", 1)[1]) for line in lines
                     if "fail" not in line.split()[2]]
            if ports or time.monotonic() > deadline:
                return ports
            time.sleep(0.1)

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        shutil.rmtree(self.root, ignore_errors=True)
