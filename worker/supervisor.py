"""``shardlease run --processes N``: N worker processes under one supervisor, for a pod with many cores.

Each worker process is an ordinary ``shardlease run`` with ``--processes 1`` and the supervisor's settings
(handed over in ``SHARDLEASE_*`` variables, so no secret shows on a command line), a worker of the group of
its own named ``<worker id>-p<i>``: the leaser balances shards over every process of every pod.  What
they share, through the supervisor:

- **one metrics endpoint**: each process serves /metrics, /healthz and /readyz on a private loopback port;
  the supervisor serves them on ``--metrics-host:--metrics-port``.  /metrics is every process's samples
  with a ``process="<i>"`` label (:mod:`worker.metrics_merge`) plus the supervisor's own
  ``shardlease_supervisor_*`` series; /healthz is 200 only while every process runs and its own /healthz
  is 200; /readyz is 200 only while every process is ready (and the supervisor is not stopping).
- **one graceful shutdown**: the first SIGTERM/SIGINT is sent on to every process (each hands its leases
  back within ``--shutdown-grace``); a second is sent on as a second (each exits at once).  A process still
  running ``--shutdown-grace`` + :data:`KILL_MARGIN_S` after the first signal is killed (SIGKILL): its
  leases expire after ``--lease-ttl``.  Exit code: 3 if any process abandoned a handler call or had to be
  killed, else 1 if any stopped otherwise than cleanly, else 0 (the codes of ``shardlease run``).

Failure paths, and the state each leaves:

- a process that dies while running (killed, a crash, exit 3 after a hung handler call): its leases are
  left to expire (a call may still have been running) and are taken by its siblings or other pods; the
  supervisor starts it again after a backoff (:data:`RESTART_BACKOFF_S` doubling to
  :data:`MAX_RESTART_BACKOFF_S`, reset once it has run :data:`STABLE_AFTER_S`).  /healthz fails meanwhile.
- a process that exits 2 (a configuration error: the handler does not import, bad Redis credentials...):
  restarting cannot help, so the supervisor stops the others and exits 2 with that process's one-line error
  (unless the error is about its private metrics port, taken between the supervisor's pick and its bind:
  then it is restarted on another).  Exit 75 (Redis or AWS unavailable at start-up) is restarted with
  backoff like a crash: it is temporary.
- the supervisor killed (SIGKILL): every process gets SIGTERM from the kernel (Linux ``PR_SET_PDEATHSIG``;
  elsewhere a thread that watches the parent pid), hands its leases back and exits: none runs on orphaned.
- a process that hangs at shutdown: killed as above; its leases expire.

Worker processes run in their own process group, so a terminal's Ctrl-C reaches only the supervisor
(which sends it on once), never a process twice.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from types import FrameType
from typing import IO

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from leaser.errors import ConfigError
from leaser.keys import validate_id
from worker.config import RUN_SETTINGS, SETTINGS_BY_NAME, RunConfig, _python_value_text
from worker.metrics_merge import merge_expositions
from worker.observability import HealthServer, start_health_server

log = logging.getLogger("shardlease.supervisor")

EXIT_OK, EXIT_FATAL, EXIT_USAGE, EXIT_ABANDONED = 0, 1, 2, 3
"""The codes of ``shardlease run`` (worker.cli.EXIT_CODES) a supervisor gives and reads."""
POLL_S = 0.1
"""Seconds between the supervisor's checks of its processes."""
RESTART_BACKOFF_S = 1.0
"""Seconds before a process that died is started again; doubles at each death in a row."""
MAX_RESTART_BACKOFF_S = 30.0
"""Longest wait before a restart."""
STABLE_AFTER_S = 60.0
"""A process that ran this long before it died is restarted after :data:`RESTART_BACKOFF_S` again."""
KILL_MARGIN_S = 5.0
"""Seconds past ``--shutdown-grace`` a process gets to release its leases and exit before it is killed."""
SCRAPE_TIMEOUT_S = 2.0
"""Seconds the supervisor waits for one process's /metrics, /healthz or /readyz."""
ERROR_PREFIX = b"shardlease: error: "
"""How ``shardlease run`` starts its one-line error on stderr."""
PR_SET_PDEATHSIG = 1
"""prctl(2): the signal a process gets when the thread that created it exits."""


def child_worker_id(base: str, index: int) -> str:
    """The worker id of process ``index`` of a supervisor whose worker id is ``base``."""
    return f"{base}-p{index}"


def child_environment(config: RunConfig, index: int, metrics_port: int,
                      environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker process ``index``: every setting of ``config`` as its ``SHARDLEASE_*``
    variable (unset ones empty, which counts as not given), one process, its own worker id, and its
    metrics server on loopback ``metrics_port`` (0: none)."""
    env = dict(os.environ if environ is None else environ)
    for setting in RUN_SETTINGS:
        value = getattr(config, setting.name)
        env[setting.env] = "" if value is None else _python_value_text(setting, value)
    env[SETTINGS_BY_NAME["processes"].env] = "1"
    env[SETTINGS_BY_NAME["worker_id"].env] = child_worker_id(config.worker_id, index)
    env[SETTINGS_BY_NAME["metrics_host"].env] = "127.0.0.1"
    env[SETTINGS_BY_NAME["metrics_port"].env] = str(metrics_port)
    return env


def free_loopback_port() -> int:
    """A port free on 127.0.0.1 now (the kernel's choice), for a worker process's private server."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the worker process's side ---------------------------------------------------------------------


def die_with_parent(parent_pid: int) -> None:
    """Get SIGTERM when the supervisor ``parent_pid`` is gone, so this process hands its leases back
    instead of running on orphaned: Linux's PR_SET_PDEATHSIG, else a thread polling the parent pid."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the supervisor died before the request took effect
                    os.kill(os.getpid(), signal.SIGTERM)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def child_main(argv: list[str] | None = None) -> int:
    """Entry of a worker process: ``python -P -c '...child_main()' <supervisor pid>``; its settings come
    from the environment (:func:`child_environment`)."""
    args = sys.argv[1:] if argv is None else argv
    die_with_parent(int(args[0]))
    from worker.cli import main

    return main(["run"])


CHILD_COMMAND = "from worker.supervisor import child_main; raise SystemExit(child_main())"


# -- the supervisor --------------------------------------------------------------------------------


@dataclass
class _Process:
    """One worker process slot; ``proc`` is None while it is not running (before a restart)."""

    index: int
    worker_id: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    started_at: float = 0.0
    restart_at: float = 0.0
    deaths_in_a_row: int = 0
    signals_sent: int = 0
    final_code: int | None = None
    last_error: bytes = b""
    relay: threading.Thread | None = None
    runs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Supervisor:
    """Runs ``config.processes`` worker processes until a signal or a fatal start-up error; see the module."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.processes = [_Process(i, child_worker_id(config.worker_id, i)) for i in range(config.processes)]
        longest = self.processes[-1].worker_id  # the ids differ only in their -p<i> suffix
        try:
            validate_id("worker_id", longest)
        except ConfigError:
            suffix = len(longest) - len(config.worker_id)
            raise SETTINGS_BY_NAME["worker_id"].error(
                f"{config.worker_id!r} with the suffix of worker process {longest.rsplit('-', 1)[1]} is not a valid "
                "worker id", f"give a --worker-id of at most {256 - suffix} characters from letters, digits, "
                "'_', '.', ':', '-'") from None
        self._signals = 0
        self._stopping = False
        self._stop_deadline = 0.0
        self._fatal: _Process | None = None
        self._wake = threading.Event()
        self._http: HealthServer | None = None
        self._pool = ThreadPoolExecutor(max_workers=min(16, len(self.processes)), thread_name_prefix="scrape")
        self.registry = CollectorRegistry(auto_describe=True)
        Gauge("shardlease_supervisor_processes", "Worker processes this supervisor runs (--processes).",
              registry=self.registry).set(len(self.processes))
        self._up = Gauge("shardlease_supervisor_process_up", "1 while the worker process runs, else 0.",
                         ("process",), registry=self.registry)
        self._restarts = Counter("shardlease_supervisor_restarts", "Worker processes started again after dying.",
                                 ("process",), registry=self.registry)
        for p in self.processes:
            self._up.labels(process=str(p.index)).set(0)
            self._restarts.labels(process=str(p.index))

    # -- signals -------------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s received: sending it on to %d worker processes (each hands its leases back within "
                     "%.0f s)", signal.Signals(signum).name, len(self.processes), self.config.shutdown_grace_s)
        else:
            os.write(2, b"shardlease: second signal, sending it on: the worker processes exit at once\n")
        self._begin_stop()

    def _begin_stop(self) -> None:
        if not self._stopping:
            self._stopping = True
            self._signals = max(self._signals, 1)
            self._stop_deadline = time.monotonic() + self.config.shutdown_grace_s + KILL_MARGIN_S
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        self._http = start_health_server(cfg.metrics_host, cfg.metrics_port, endpoints=self)
        log.info("supervising %d worker processes (%s .. %s); metrics, health and readiness of all on %s",
                 len(self.processes), self.processes[0].worker_id, self.processes[-1].worker_id,
                 f"{cfg.metrics_host}:{self._http.port}" if self._http else "off")
        try:
            while True:
                now = time.monotonic()
                for p in self.processes:
                    if p.proc is not None:
                        code = p.proc.poll()
                        if code is not None:
                            self._reaped(p, code, now)
                    if p.proc is None and not self._stopping and now >= p.restart_at:
                        self._spawn(p)
                if self._stopping:
                    self._send_signals()
                    if all(p.proc is None for p in self.processes):
                        break
                    if now > self._stop_deadline:
                        self._kill_stragglers()
                self._wake.wait(POLL_S)
                self._wake.clear()
        finally:
            if self._http is not None:
                self._http.stop()
            self._pool.shutdown(wait=False)
            for p in self.processes:
                if p.relay is not None:
                    p.relay.join(timeout=1.0)
        return self._exit_code()

    def _spawn(self, p: _Process) -> None:
        p.port = free_loopback_port() if self.config.metrics_port != 0 else 0
        env = child_environment(self.config, p.index, p.port)
        # -P: no current directory in front of sys.path (a ./worker/ of the user's must not shadow this package);
        # the handler loader appends it at the end, as under the console script.
        p.proc = subprocess.Popen([sys.executable, "-P", "-c", CHILD_COMMAND, str(os.getpid())], env=env,
                                  stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, process_group=0)
        p.started_at, p.signals_sent, p.last_error, p.final_code = time.monotonic(), 0, b"", None
        p.runs += 1
        if p.runs > 1:
            self._restarts.labels(process=str(p.index)).inc()
        self._up.labels(process=str(p.index)).set(1)
        assert p.proc.stderr is not None
        p.relay = threading.Thread(target=self._relay, args=(p, p.proc.stderr), name=f"stderr-p{p.index}",
                                   daemon=True)
        p.relay.start()
        log.info("worker process %s started (pid %d)", p.worker_id, p.proc.pid)

    @staticmethod
    def _relay(p: _Process, stream: IO[bytes]) -> None:
        """Copy the process's stderr to ours, line by line; keep its one-line error (``shardlease: error:``)
        for the supervisor to report once instead."""
        with stream:
            for line in stream:
                if line.startswith(ERROR_PREFIX):
                    with p.lock:
                        p.last_error = line.rstrip(b"\n")
                    continue
                with contextlib.suppress(OSError):
                    os.write(2, line)

    def _reaped(self, p: _Process, code: int, now: float) -> None:
        assert p.proc is not None
        pid, p.proc = p.proc.pid, None
        self._up.labels(process=str(p.index)).set(0)
        if p.relay is not None:
            p.relay.join(timeout=1.0)
        with p.lock:
            error = p.last_error.decode(errors="replace")
        if self._stopping:
            # A process our own first signal reached before it set up its handlers held nothing: a clean stop.
            clean_kill = code in (-signal.SIGTERM, -signal.SIGINT) and p.signals_sent == 1
            p.final_code = EXIT_OK if clean_kill else code
            log.info("worker process %s stopped (exit code %d)", p.worker_id, code)
            return
        private_port_taken = error.find("metrics_port") != -1  # our pick of a free loopback port raced: retry
        if code == EXIT_USAGE and not private_port_taken:
            log.error("worker process %s (pid %d) failed to start: %s; stopping the others", p.worker_id, pid,
                      error or "exit code 2")
            self._fatal = p
            p.final_code = code
            self._begin_stop()
            return
        ran_s = now - p.started_at
        if ran_s >= STABLE_AFTER_S:
            p.deaths_in_a_row = 0
        delay = min(MAX_RESTART_BACKOFF_S, RESTART_BACKOFF_S * 2 ** p.deaths_in_a_row)
        p.deaths_in_a_row += 1
        p.restart_at = now + delay
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        log.error("worker process %s (pid %d) %s after %.1f s%s; its leases expire and are taken over; "
                  "starting it again in %.0f s", p.worker_id, pid, how, ran_s,
                  f" ({error.removeprefix(ERROR_PREFIX.decode())})" if error else "", delay)

    def _send_signals(self) -> None:
        """Give every running process as many SIGTERMs as the supervisor received (at least one)."""
        for p in self.processes:
            while p.proc is not None and p.signals_sent < self._signals:
                with contextlib.suppress(OSError):
                    p.proc.send_signal(signal.SIGTERM)
                p.signals_sent += 1

    def _kill_stragglers(self) -> None:
        for p in self.processes:
            if p.proc is not None and p.proc.poll() is None:
                log.error("worker process %s still running %.0f s after the signal (--shutdown-grace %.0f s): "
                          "killing it; its leases expire in %.0f s", p.worker_id,
                          self.config.shutdown_grace_s + KILL_MARGIN_S, self.config.shutdown_grace_s,
                          self.config.lease_ttl_s)
                p.proc.kill()
                p.proc.wait()
                p.proc = None
                p.final_code = EXIT_ABANDONED
                self._up.labels(process=str(p.index)).set(0)

    def _exit_code(self) -> int:
        if self._fatal is not None:
            line = self._fatal.last_error or (
                f"shardlease: error: worker process {self._fatal.worker_id} failed to start with exit code 2 "
                "(a configuration error; see its log above)").encode()
            os.write(2, line + b"\n")
            return EXIT_USAGE
        codes = [p.final_code for p in self.processes if p.final_code is not None]
        if EXIT_ABANDONED in codes:
            return EXIT_ABANDONED
        if any(code != EXIT_OK for code in codes):
            return EXIT_FATAL
        return EXIT_OK

    # -- what the HTTP server answers ----------------------------------------------------------

    def _scrape(self, path: str) -> list[tuple[_Process, int | None, bytes]]:
        """(process, HTTP status or None when not running/unreachable, body) of ``path`` on each process."""

        def one(p: _Process) -> tuple[_Process, int | None, bytes]:
            proc, port = p.proc, p.port
            if proc is None or proc.poll() is not None or not port:
                return p, None, b"not running"
            # http.client, not urllib: urllib would send a loopback request through an HTTP_PROXY of the pod.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=SCRAPE_TIMEOUT_S)
            try:
                conn.request("GET", path)
                reply = conn.getresponse()
                return p, int(reply.status), reply.read()
            except (OSError, http.client.HTTPException) as exc:
                return p, None, f"unreachable ({exc})".encode()
            finally:
                conn.close()

        return list(self._pool.map(one, self.processes))

    # -- the answers of the one metrics/health server (worker.observability.Endpoints) -------------------

    def liveness(self) -> tuple[bool, str]:
        """Alive only if every worker process runs and answers /healthz with 200."""
        return self._check("/healthz")

    def readiness(self) -> tuple[bool, str]:
        """Ready only if every worker process answers /readyz with 200, and not while stopping."""
        if self._stopping:
            return False, "shutting down"
        return self._check("/readyz")

    def exposition(self) -> bytes:
        """The worker processes' metrics merged (a ``process`` label on every series) and the supervisor's."""
        parts = [(str(p.index), body) for p, status, body in self._scrape("/metrics") if status == HTTPStatus.OK]
        return merge_expositions(parts) + generate_latest(self.registry)

    def _check(self, path: str) -> tuple[bool, str]:
        problems = []
        for p, status, body in self._scrape(path):
            if status != HTTPStatus.OK:
                text = " ".join(body.decode(errors="replace").split())
                problems.append(f"process {p.index} ({p.worker_id}): {text or f'HTTP {status}'}")
        if problems:
            return False, "; ".join(problems)
        return True, "ok"


def supervise(config: RunConfig) -> int:
    """Run ``config.processes`` worker processes until signalled; the exit code of ``shardlease run``."""
    supervisor = Supervisor(config)
    supervisor.install_signal_handlers()
    return supervisor.run()
