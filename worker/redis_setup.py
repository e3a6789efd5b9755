"""Connecting to the group's Redis: a URL, or the embedded one for a single host.

Without ``--redis-url`` the worker uses an embedded redis-server (one on PATH, or the one
``shardlease[embedded]`` installs: see :func:`leaser.embedded.find_redis_server`) with its files in
``<data_dir>/redis`` and append-only persistence.  The first worker on the host
starts it in the background and records its port; later workers (and restarts)
find it there and share it.  It keeps running after the workers exit so their
leases and checkpoints survive; ``shardlease stop-embedded`` stops it.  It
listens on loopback only: fit for one host, not a fleet.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import cast

import redis
import tenacity

from leaser import ConfigError, CoordinationUnavailable, connect
from leaser.embedded import find_redis_server, free_port
from leaser.store import RedisClient
from worker.backoff import STARTUP_RETRY_S, startup_retrying
from worker.logs import redact_url
from worker.observability import Metrics
from worker.redis_metrics import instrument

log = logging.getLogger("shardlease.redis")


def _alive(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def embedded_redis_url(data_dir: str | os.PathLike[str]) -> str:
    """Start (or find) the host's embedded redis-server under ``data_dir``; returns its URL."""
    root = Path(data_dir) / "redis"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError("data_dir (--data-dir / SHARDLEASE_DATA_DIR)", f"cannot create {root}: {exc.strerror}",
                          "point it at a writable directory, or pass --redis-url") from exc
    port_file, pid_file = root / "port", root / "pid"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if port_file.exists():
            with contextlib.suppress(ValueError):
                port = int(port_file.read_text().strip())
                if _alive(port):
                    return f"redis://127.0.0.1:{port}/0"
        port = free_port()
        args = [
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root.resolve()),
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction", "--logfile", str((root / "redis.log").resolve()),
        ]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not _alive(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CoordinationUnavailable(f"the embedded redis-server did not start; see {root / 'redis.log'}")
            time.sleep(0.05)
        port_file.write_text(str(port))
        pid_file.write_text(str(proc.pid))
        return f"redis://127.0.0.1:{port}/0"


def running_embedded_redis_url(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL of the embedded redis-server under ``data_dir`` if one is running, else None.
    Never starts one (``shardlease status`` reads only what exists)."""
    try:
        port = int((Path(data_dir) / "redis" / "port").read_text().strip())
    except (OSError, ValueError):
        return None
    return f"redis://127.0.0.1:{port}/0" if _alive(port) else None


def stop_embedded_redis(data_dir: str | os.PathLike[str]) -> bool:
    """Stop the embedded redis-server under ``data_dir``; False if none was running."""
    root = Path(data_dir) / "redis"
    try:
        pid = int((root / "pid").read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    (root / "port").unlink(missing_ok=True)
    return True


_URL_SETTING = "redis_url (--redis-url / SHARDLEASE_REDIS_URL)"


def _tls_problem(text: str) -> str | None:
    """A short explanation when a connection error is a TLS failure, else None."""
    lowered = text.lower()
    if "certificate verify failed" in lowered or "certificate_verify_failed" in lowered:
        return ("the TLS handshake failed: the server's certificate is not trusted "
                "(set --redis-ca-file to the CA that signed it) or does not name this host")
    if "certificate required" in lowered or "alert_certificate_required" in lowered or "peer did not return" in lowered:
        return "the server requires a client certificate (set --redis-cert-file and --redis-key-file)"
    if any(word in lowered for word in ("ssl", "tls", "wrong version number", "handshake")):
        return "the TLS handshake failed (a rediss:// URL needs a TLS port; redis:// a plain one)"
    return None


def _may_pass(exc: BaseException) -> bool:
    """Whether a failure to connect may pass if retried (Redis starting, loading, failing over, a cluster
    not reachable yet), as opposed to credentials, ACL or TLS settings that retrying cannot fix."""
    cause = exc.__cause__ if isinstance(exc, CoordinationUnavailable) and exc.__cause__ is not None else exc
    if isinstance(cause, (redis.AuthenticationError, redis.exceptions.NoPermissionError)) or isinstance(
            cause.__cause__, redis.AuthenticationError):
        return False
    if _tls_problem(f"{cause} {cause.__cause__ or ''}") is not None:
        return False
    if isinstance(cause.__cause__ or cause.__context__, ConnectionResetError):
        return False  # accepted, then reset at the first command: not Redis's protocol (redis:// to a TLS port)
    if isinstance(exc, CoordinationUnavailable):
        return True  # leaser translated it as transient (e.g. "Redis Cluster cannot be connected")
    return isinstance(cause, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.TryAgainError,
                              redis.exceptions.ClusterDownError))


def _unreachable(shown: str, exc: BaseException) -> ConfigError:
    """Why a connection failure that retrying cannot fix stopped us: credentials, ACL, TLS, or something that
    is not Redis at that address (exit 2: the settings must change).  One line, never the password."""
    text = f"{exc} {exc.__cause__ or ''}"
    if isinstance(exc, redis.AuthenticationError) or isinstance(exc.__cause__, redis.AuthenticationError):
        return ConfigError(_URL_SETTING, f"{shown} refused the credentials",
                           "check the user and password in the URL or its Secret")
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return ConfigError(_URL_SETTING, f"{shown} accepted the user but its ACL denies a command the worker needs",
                           "grant the ACL rule in docs/security.md")
    tls = _tls_problem(text)
    if tls is not None:
        return ConfigError(_URL_SETTING, f"cannot connect to Redis at {shown}: {tls}",
                           "check the TLS settings against the server's")
    return ConfigError(_URL_SETTING, f"cannot speak to Redis at {shown} ({type(exc).__name__})",
                       "check the host, port and TLS settings: is it a Redis server?")


def open_redis(
    url: str | None,
    *,
    data_dir: str,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    socket_timeout_s: float = 5.0,
    retry_s: float | None = None,
    metrics: Metrics | None = None,
) -> tuple[redis.Redis, str]:
    """A checked client for the group's Redis and a printable (redacted) description of it.

    With ``metrics`` every round trip of the client (its first PING included) is measured there
    (:mod:`worker.redis_metrics`).

    ``socket_timeout_s`` bounds every call (connect, then each reply): a worker passes less than its
    lease TTL, so one heartbeat against an unreachable Redis fails before the leases would expire.

    ``url`` may name a Redis Cluster (``redis+cluster://`` / ``rediss+cluster://``); the client is
    then a ``redis.cluster.RedisCluster``, typed here as ``redis.Redis`` until its callers take
    :data:`leaser.store.RedisClient`.  A Redis that cannot be reached (yet) is retried with backoff for
    ``retry_s`` (default :data:`worker.backoff.STARTUP_RETRY_S`), each retry logged, then raises
    CoordinationUnavailable; a failure
    to authenticate, pass the ACL or verify TLS is a ConfigError naming ``redis_url`` at once.  Either is
    one line, no traceback, never the password.
    """
    embedded = url is None
    if url is None:
        url = embedded_redis_url(data_dir)
    shown = redact_url(url)
    for setting, path in (("redis_ca_file (--redis-ca-file / SHARDLEASE_REDIS_CA_FILE)", ca_file),
                          ("redis_cert_file (--redis-cert-file / SHARDLEASE_REDIS_CERT_FILE)", cert_file),
                          ("redis_key_file (--redis-key-file / SHARDLEASE_REDIS_KEY_FILE)", key_file)):
        if path and not os.path.isfile(path):
            raise ConfigError(setting, f"{path} is not a readable file", "point it at a PEM file")
    if (cert_file is None) != (key_file is None):
        raise ConfigError("redis_cert_file / redis_key_file", "a client certificate needs both files",
                          "set both --redis-cert-file and --redis-key-file, or neither")

    def connected() -> RedisClient:
        client: RedisClient = connect(url, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                                      socket_timeout_s=socket_timeout_s)
        if metrics is not None:
            instrument(client, metrics)
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
        return client

    started = time.monotonic()
    try:
        # Redis may not be up yet (starting, loading its data, failing over): retried like DescribeStream at
        # start-up; credentials, ACL and TLS problems are not retried.
        client = startup_retrying(f"Redis at {shown}", (CoordinationUnavailable, redis.RedisError), log,
                                  retry_if=tenacity.retry_if_exception(_may_pass), within_s=retry_s)(connected)
    except (CoordinationUnavailable, redis.RedisError) as exc:  # a cluster client connects in connect()
        cause = exc.__cause__ if isinstance(exc, CoordinationUnavailable) and exc.__cause__ else exc
        if _may_pass(exc):
            raise CoordinationUnavailable(
                f"{_URL_SETTING}: cannot reach Redis at {shown} ({type(cause).__name__}), retried for "
                f"{time.monotonic() - started:.0f} s; check the host, port and TLS settings, and that Redis is running"
            ) from None
        raise _unreachable(shown, cause) from None
    if embedded:
        shown += f" (embedded, data in {Path(data_dir) / 'redis'}; fit for one host only)"
    return cast(redis.Redis, client), shown


TOOL_RETRY_S = min(5.0, STARTUP_RETRY_S)
"""Seconds ``status`` and ``dlq`` keep retrying an unreachable Redis: an operator waits for an answer, not a
minute; a worker starting up waits longer (:data:`worker.backoff.STARTUP_RETRY_S`)."""


def open_existing_redis(
    url: str | None,
    *,
    data_dir: str,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> tuple[redis.Redis, str] | None:
    """As :func:`open_redis` for tools that only read (``status``, ``dlq``): without ``url`` it opens
    the embedded Redis only if one is running under ``data_dir`` (None otherwise), never starting one."""
    if url is None:
        url = running_embedded_redis_url(data_dir)
        if url is None:
            return None
        client, shown = open_redis(url, data_dir=data_dir, retry_s=TOOL_RETRY_S)
        return client, f"{shown} (embedded, data in {Path(data_dir) / 'redis'})"
    return open_redis(url, data_dir=data_dir, ca_file=ca_file, cert_file=cert_file, key_file=key_file,
                      retry_s=TOOL_RETRY_S)
