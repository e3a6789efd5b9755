"""Latency and errors of every Redis round trip the worker makes, measured at its client.

:func:`instrument` wraps one client built by :func:`leaser.connect` (a ``redis.Redis`` or a
``redis.cluster.RedisCluster``): its ``execute_command`` (every command, and the Lua scripts of
the lease protocol, which redis-py sends with EVALSHA through it), its ``register_script`` (to
learn each script's name from its SHA) and its ``pipeline`` (one observation per pipeline sent).
The leaser knows nothing of it: it keeps calling the client's public API.

Labels stay bounded: ``command`` is a Redis command from :data:`COMMANDS` in lower case,
``script:<name>`` for a script of :data:`SCRIPTS`, ``pipeline`` for a pipeline of different
commands (a pipeline of one kind, such as the pipelined acquires, is labelled by that kind), and
``other`` for anything else.  Publish/subscribe connections (the wake-up listener) are not
measured: they block by design.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import redis
import redis.cluster

from worker.observability import Metrics

COMMANDS: frozenset[str] = frozenset({
    "ping", "time", "info", "client", "script", "eval", "evalsha", "multi", "exec", "publish", "scan",
    "get", "set", "del", "unlink", "exists", "expire", "pexpire", "ttl", "pttl", "type",
    "hget", "hgetall", "hmget", "hset", "hsetnx", "hdel", "hincrby", "hlen",
    "sadd", "srem", "smembers", "scard", "sismember",
    "zadd", "zrem", "zcard", "zscore", "zrange", "zrangebyscore", "zremrangebyscore",
    "xadd", "xrange", "xrevrange", "xlen", "xdel", "xtrim", "xinfo",
})
"""Redis commands labelled by name; any other is labelled ``other``."""

SCRIPTS: frozenset[str] = frozenset({
    "register", "acquire", "heartbeat", "checkpoint", "end_shard", "release", "ask", "leader", "cleanup", "offer",
    "begin", "reposition", "report",
    "snapshot_start", "snapshot_claim", "snapshot_renew", "snapshot_announce", "snapshot_page_done",
    "snapshot_release", "snapshot_gate", "snapshot_spend",
})
"""The lease protocol's and the snapshot's scripts (leaser/lua/<name>.lua, each starting ``-- <name>: ...``), labelled
``script:<name>``; an unknown script is ``script:other``.  tests/test_redis_metrics.py checks this
list against the scripts the leaser registers."""

_SCRIPT_NAME = re.compile(r"^-- ([a-z_]+): ", re.MULTILINE)
_MAX_SCRIPTS = 64
"""At most this many SHAs are remembered (the leaser registers 21: 13 per store, 8 per snapshot store)."""


def error_kind(exc: BaseException) -> str | None:
    """The ``error`` label of a failed round trip: one of :data:`worker.observability.REDIS_ERRORS`, or None
    for NOSCRIPT, which is no failure: a script not loaded on that server yet (every script's first call,
    and after a restart or failover), which redis-py and the leaser load and send again at once."""
    if isinstance(exc, redis.exceptions.NoScriptError):
        return None
    if isinstance(exc, redis.exceptions.TimeoutError):
        return "timeout"
    if isinstance(exc, (redis.exceptions.ClusterDownError, redis.exceptions.TryAgainError, redis.exceptions.AskError,
                        redis.exceptions.ClusterError, redis.exceptions.SlotNotCoveredError,
                        redis.exceptions.RedisClusterException)):
        return "cluster"
    if isinstance(exc, redis.exceptions.ConnectionError):
        return "connection"
    if isinstance(exc, redis.exceptions.ResponseError):
        return "response"
    return "other"


class _Labels:
    """Turns a command's arguments into its bounded label; remembers the scripts' SHAs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, str] = {}

    def learn_script(self, source: str, sha: str) -> None:
        match = _SCRIPT_NAME.search(source)
        name = match.group(1) if match and match.group(1) in SCRIPTS else "other"
        with self._lock:
            if len(self._scripts) < _MAX_SCRIPTS:
                self._scripts[sha] = f"script:{name}"

    def of(self, args: tuple[Any, ...]) -> str:
        if not args:
            return "other"
        first = args[0]
        name = (first.decode(errors="replace") if isinstance(first, bytes) else str(first)).split(" ", 1)[0].lower()
        if name == "evalsha" and len(args) > 1:
            with self._lock:
                return self._scripts.get(str(args[1]), "script:other")
        return name if name in COMMANDS else "other"


def _timed(metrics: Metrics, label: Callable[[], str], call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    try:
        result = call()
    except BaseException as exc:
        metrics.redis_command(label(), time.perf_counter() - started, error_kind(exc))
        raise
    metrics.redis_command(label(), time.perf_counter() - started)
    return result


def _instrument_pipeline(pipe: Any, labels: _Labels, metrics: Metrics) -> Any:
    """Record the label of each command queued on ``pipe``; time its ``execute`` as one round trip."""
    queued: list[str] = []
    queue, execute = pipe.execute_command, pipe.execute

    @functools.wraps(queue)
    def queue_command(*args: Any, **options: Any) -> Any:
        queued.append(labels.of(args))
        return queue(*args, **options)

    @functools.wraps(execute)
    def execute_pipeline(*args: Any, **kwargs: Any) -> Any:
        kinds = set(queued)
        queued.clear()
        if not kinds:  # an empty pipeline sends nothing
            return execute(*args, **kwargs)
        label = kinds.pop() if len(kinds) == 1 else "pipeline"
        return _timed(metrics, lambda: label, lambda: execute(*args, **kwargs))

    pipe.execute_command = queue_command
    pipe.execute = execute_pipeline
    return pipe


def instrument(client: redis.Redis | redis.cluster.RedisCluster, metrics: Metrics) -> None:
    """Measure every round trip of ``client`` into ``metrics`` (idempotent; the client is changed in place)."""
    if getattr(client, "_shardlease_instrumented", False):
        return
    labels = _Labels()
    execute: Callable[..., Any] = client.execute_command
    register_script: Callable[[Any], Any] = client.register_script
    pipeline: Callable[..., Any] = client.pipeline

    @functools.wraps(execute)
    def execute_command(*args: Any, **options: Any) -> Any:
        return _timed(metrics, lambda: labels.of(args), lambda: execute(*args, **options))

    @functools.wraps(register_script)
    def register(script: Any) -> Any:
        registered = register_script(script)
        source = script.decode(errors="replace") if isinstance(script, bytes) else str(script)
        labels.learn_script(source, registered.sha)
        return registered

    @functools.wraps(pipeline)
    def new_pipeline(*args: Any, **kwargs: Any) -> Any:
        return _instrument_pipeline(pipeline(*args, **kwargs), labels, metrics)

    # Instance attributes shadow the class's methods: redis-py's Script objects and pipelines call
    # back through ``client.execute_command`` and ``client.pipeline``, so they are measured too.
    client.execute_command = execute_command  # type: ignore[method-assign]
    client.register_script = register  # type: ignore[method-assign]
    client.pipeline = new_pipeline  # type: ignore[method-assign]
    client._shardlease_instrumented = True  # type: ignore[union-attr]
