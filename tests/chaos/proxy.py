"""A small TCP proxy between the workers and Redis that can cut every connection at once."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from leaser.embedded import free_port


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to ``target``; :meth:`cut` closes every open connection (both sides).

    New connections are accepted again right after a cut (a dropped connection, not an outage).
    When the target refuses, the client's connection is closed at once.  :meth:`retarget` points
    new connections at another port (a failover: cut the old connections after it).  Setting
    :attr:`reply_delay_s` above 0 holds every chunk from the target that long before passing it
    on (a slow network to Redis, for a while); 0, the default, forwards at once.
    """

    def __init__(self, target_port: int, port: int | None = None) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self.cuts = 0
        self.connections_cut = 0
        self.accepted = 0
        self.reply_delay_s = 0.0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> CuttableProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            target = self.target_port
            try:
                upstream = socket.create_connection(("127.0.0.1", target), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                current = target == self.target_port
                if current:
                    self._pairs.add(pair)
                    self.accepted += 1
            if not current:  # retargeted while connecting: never hand out a connection to the old target
                for s in pair:
                    s.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, pair), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, pair, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: tuple[socket.socket, socket.socket],
              replies: bool = False) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                delay = self.reply_delay_s if replies else 0.0
                if delay > 0:
                    time.sleep(delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close_pair(pair)

    def _close_pair(self, pair: tuple[socket.socket, socket.socket]) -> None:
        with self._lock:
            known = pair in self._pairs
            self._pairs.discard(pair)
        if not known:
            return
        for s in pair:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def retarget(self, port: int) -> int:
        """Send every new connection to ``port`` from now on; returns the previous target port.

        Connections already open stay on the old target until :meth:`cut`; a connection being set
        up to the old target while this runs is closed instead of being handed out."""
        with self._lock:
            previous, self.target_port = self.target_port, port
        return previous

    def cut(self) -> int:
        """Close every connection going through the proxy; returns how many were cut."""
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close_pair(pair)
        self.cuts += 1
        self.connections_cut += len(pairs)
        return len(pairs)

    def stop(self) -> None:
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        self.cut()
