"""Every setting of ``shardlease run``, declared once.

:data:`RUN_SETTINGS` is the single source for the command-line options
(:func:`add_run_arguments`), their ``SHARDLEASE_*`` environment variables
(:func:`env_names`), the README's configuration table (:func:`markdown_table`)
and the validated, frozen :class:`RunConfig` (:func:`load_run_config` from flags and
variables, :func:`build_run_config` from Python values: the embedding API's ``worker.build_config``).

Precedence: a command-line flag, else its environment variable, else the
default.  An empty value (``--table ''`` or ``SHARDLEASE_TABLE=``) counts as not
given, so Helm charts can leave optional settings blank.  Every value is
validated; a bad one raises :class:`~leaser.errors.ConfigError` whose one-line
message names the setting, its flag and environment variable, and the fix.

Adding a setting: one :class:`Setting` row in :data:`RUN_SETTINGS` and one field
of the same name in :class:`RunConfig` (a test checks they match).
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

from leaser.errors import ConfigError
from leaser.keys import validate_group, validate_id
from worker.logs import redact

ENV_PREFIX = "SHARDLEASE_"
REQUIRED = "(required)"
"""The ``default_doc`` of a setting without a default (``--handler``)."""
DEFAULT_METRICS_PORT = 9400
"""The metrics port when none is given; if taken (another worker on the host), the next free one is used."""

# ----------------------------------------------------------------------------
# Parsers: text -> value, raising ValueError("problem; fix") on bad input.
# ----------------------------------------------------------------------------

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_DURATION_RE = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*(ms|s|m)?\s*$")
_DURATION_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}


def parse_bool(text: str) -> bool:
    """``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case)."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean; use true/false, 1/0 or yes/no")


def parse_duration(text: str) -> float:
    """Seconds as a plain number (``"5"``, ``"1.5"``); ``"500ms"``, ``"2s"``, ``"1m"`` also work.

    Negative, NaN and infinite values are rejected.
    """
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a number of seconds; use a plain number such as 5 or 1.5")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r} is not a non-negative finite duration; use a number of seconds >= 0")
    return seconds


def parse_float_setting(text: str) -> float:
    """A finite decimal number."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number; use a number such as 1000") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not finite; use a number such as 1000")
    return value


def parse_calls_per_second(text: str) -> float:
    """A fleet-wide rate of calls per second: 0 (no limit) or a finite number from 0.01 to 1,000,000."""
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a number; use calls per second such as 50, or 0 for no budget") from None
    if not math.isfinite(value) or value < 0 or value > 1_000_000 or 0 < value < 0.01:
        raise ValueError(f"{text!r} is out of range; use 0 (no budget) or calls per second from 0.01 to 1000000")
    return value


def parse_int(text: str) -> int:
    """A base-10 integer."""
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer; use a whole number such as 100") from None


def _ranged(
    parse: Callable[[str], Any], low: float, high: float, *, low_open: bool = False
) -> Callable[[str], Any]:
    def parse_in_range(text: str) -> Any:
        value = parse(text)
        if value < low or (low_open and value == low) or value > high:
            bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
            raise ValueError(f"{text!r} is out of range; use a value {bound} and at most {high:g}")
        return value

    return parse_in_range


def _choice(*allowed: str, upper: bool = True) -> Callable[[str], str]:
    def parse_choice(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in allowed:
            raise ValueError(f"{text!r} is not allowed; use one of {', '.join(allowed)}")
        return value

    return parse_choice


# arn:<partition>:dynamodb:<region>:<account>:table/<name>/stream/<label>
_STREAM_ARN_RE = re.compile(
    r"^arn:[a-z][a-z0-9-]*:dynamodb:[a-z0-9-]+:\d{12}:table/[A-Za-z0-9_.\-]{1,255}/stream/[^/\s]+$"
)
_TABLE_RE = re.compile(r"^[A-Za-z0-9_.\-]{3,255}$")


def parse_stream_arn(text: str) -> str:
    value = text.strip()
    if not _STREAM_ARN_RE.match(value):
        raise ValueError(
            f"{value!r} is not a DynamoDB stream ARN; use "
            "arn:<partition>:dynamodb:<region>:<12-digit account>:table/<name>/stream/<label>"
        )
    return value


def parse_table(text: str) -> str:
    value = text.strip()
    if not _TABLE_RE.match(value):
        raise ValueError(
            f"{value!r} is not a DynamoDB table name; "
            "use 3-255 characters from letters, digits, '_', '.', '-'"
        )
    return value


def _parse_group(text: str) -> str:
    return validate_group(text.strip())


def _parse_worker_id(text: str) -> str:
    return validate_id("worker_id", text.strip())


_HANDLER_RE = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*$")


def parse_handler_path(text: str) -> str:
    value = text.strip()
    if not _HANDLER_RE.match(value):
        raise ValueError(f"{value!r} is not an import path; use package.module:function")
    return value


_REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+cluster://", "rediss+cluster://")


def parse_redis_url(text: str) -> str:
    value = text.strip()
    if not value.lower().startswith(_REDIS_SCHEMES):
        scheme = value.split("://", 1)[0] if "://" in value else "no scheme"
        raise ValueError(
            f"unsupported URL scheme ({scheme}); use redis://host:6379/0, rediss://host:6379/0, "
            "unix:///path/to/redis.sock, or redis+cluster://host:6379 (rediss+cluster:// with TLS) for a Redis Cluster"
        )
    return value


def parse_existing_file(text: str) -> str:
    path = Path(text.strip()).expanduser()
    if not path.is_file():
        raise ValueError(f"file {str(path)!r} does not exist; give the path of a readable PEM file")
    return str(path)


def parse_nonempty(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("empty value; give a non-empty value")
    return value


def parse_endpoint_url(text: str) -> str:
    value = text.strip()
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http(s) URL; use e.g. http://localhost:8000")
    return value


def parse_forever_or_duration(text: str) -> float:
    """-1 (forever) or a positive number of seconds."""
    if text.strip() in ("-1", "-1.0"):
        return -1.0
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} is not -1 or a positive number of seconds; use -1 for forever or e.g. 3600")
    return value


def parse_forever_or_int(text: str) -> int:
    """-1 (forever) or a whole number from 0 to 10,000."""
    value = parse_int(text)
    if value < -1 or value > 10_000:
        raise ValueError(f"{text!r} is out of range; use -1 for forever or 0 to 10000")
    return value


ON_FAILURE_KINDS = ("redis", "none", "sqs:", "file:")


def parse_on_failure(text: str) -> str:
    """redis | none | sqs:<queue URL or ARN> | file:<path>."""
    value = text.strip()
    if value.lower() in ("redis", "none"):
        return value.lower()
    kind, _, target = value.partition(":")
    if kind.lower() in ("sqs", "file") and target.strip():
        return f"{kind.lower()}:{target.strip()}"
    raise ValueError(
        f"{value!r} is not a destination; use redis, none, sqs:<queue URL or ARN> or file:<path to a .jsonl file>"
    )


def parse_filter_patterns(text: str) -> str:
    """Lambda filter patterns as JSON, or ``@path`` of a file holding them; validated, kept as given."""
    from worker.handling.filters import FilterCriteria

    FilterCriteria.parse(text)
    return text.strip()


MAX_PROCESSES = 256
"""Most worker processes one ``shardlease run`` supervises."""


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_cpu_quota() -> float | None:
    """The cgroup's CPU limit in CPUs (v2 ``cpu.max``, else v1 ``cfs_quota_us / cfs_period_us``); None if none."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def parse_processes(text: str) -> int:
    """A whole number from 1 to :data:`MAX_PROCESSES`, or ``auto``: :func:`available_cpus`."""
    if text.strip().lower() == "auto":
        return min(available_cpus(), MAX_PROCESSES)
    try:
        value = int(text.strip(), 10)
    except ValueError:
        raise ValueError(f"{text!r} is not a number of processes; use a whole number such as 4, or auto for one "
                         "per available CPU") from None
    if not 1 <= value <= MAX_PROCESSES:
        raise ValueError(f"{text!r} is out of range; use 1 to {MAX_PROCESSES}, or auto for one per available CPU")
    return value


def default_worker_id() -> str:
    """``<hostname>-<pid>``, with characters a worker id cannot hold replaced by ``-``."""
    host = re.sub(r"[^A-Za-z0-9_.:\-]", "-", socket.gethostname() or "host")
    return f"{host}-{os.getpid()}"


# ----------------------------------------------------------------------------
# The table.
# ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting: its flags, environment variable, parser, default and one-line help."""

    name: str
    flags: tuple[str, ...]
    parse: Callable[[str], Any]
    default: Any
    help: str
    metavar: str = "VALUE"
    default_factory: Callable[[], Any] | None = None
    default_doc: str | None = None
    group: str = "delivery"

    @property
    def is_switch(self) -> bool:
        """A yes/no setting: ``--flag`` / ``--no-flag`` on the command line, true/false in its variable."""
        return self.parse is parse_bool

    @property
    def no_flag(self) -> str:
        """``--no-bisect-on-error`` for ``--bisect-on-error`` (switches only)."""
        return "--no-" + self.flags[0].lstrip("-")

    @property
    def env(self) -> str:
        """``SHARDLEASE_`` + the first flag's name: ``--lease-ttl`` is ``SHARDLEASE_LEASE_TTL``."""
        return ENV_PREFIX + self.flags[0].lstrip("-").replace("-", "_").upper()

    @property
    def label(self) -> str:
        """How error messages name the setting: ``batch_size (--batch-size / SHARDLEASE_BATCH_SIZE)``."""
        return f"{self.name} ({self.flags[0]} / {self.env})"

    def default_value(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default

    def default_text(self, *, quote: bool = True) -> str:
        """The default as a reader wants it: ``5s``, ``off``, ``100``, ``"default"`` (unquoted with
        ``quote=False``), ``(none)``."""
        if self.default_doc is not None:
            return self.default_doc
        value = self.default
        if value is None:
            return "(none)"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, float) and self.name.endswith("_s"):
            return "-1 (no limit)" if value == -1 else f"{value:g}s"
        if isinstance(value, int) and value == -1:
            return "-1 (forever)"
        if isinstance(value, str):
            return f'"{value}"' if quote else value
        return str(value)

    def error(self, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.label, problem, fix)


def _s(
    name: str,
    flags: str | tuple[str, ...],
    parse: Callable[[str], Any],
    default: Any,
    help: str,
    **kwargs: Any,
) -> Setting:
    return Setting(name, (flags,) if isinstance(flags, str) else flags, parse, default, help, **kwargs)


GROUPS: tuple[tuple[str, str], ...] = (
    ("stream", "Stream: what to read, where from"),
    ("coordination", "Coordination: the group, its Redis and the leases"),
    ("delivery", "Delivery: how your handler is called"),
    ("failure handling", "Failure handling: when the handler fails or hangs"),
    ("observability", "Observability: metrics, health and logs"),
    ("redis security", "Redis security: TLS files for a rediss:// server"),
)
"""The groups of ``shardlease run --help`` and of the README's table, in order: (key, title)."""

RUN_SETTINGS: tuple[Setting, ...] = (
    _s("stream_arn", "--stream-arn", parse_stream_arn, None,
       "DynamoDB stream ARN to consume; give this or --table.", metavar="ARN",
       default_doc="(none)", group="stream"),
    _s("table", "--table", parse_table, None,
       "DynamoDB table whose latest stream to consume; give this or --stream-arn.", metavar="NAME",
       default_doc="(none)", group="stream"),
    _s("group", ("--group", "--app"), _parse_group, "default",
       "Consumer group: workers of one group share the stream's shards; each group reads everything.",
       metavar="NAME", group="coordination"),
    _s("handler", "--handler", parse_handler_path, None,
       "Your handler as package.module:function (or a class/instance with handle(records, ctx)); "
       "worker.handling.handler:log_records just logs each batch.",
       metavar="MODULE:ATTR", default_doc=REQUIRED, group="delivery"),
    _s("redis_url", "--redis-url", parse_redis_url, None,
       "Redis holding the leases (redis://, rediss:// or unix://); unset starts an embedded redis-server.",
       metavar="URL", default_doc="(embedded Redis)", group="coordination"),
    _s("data_dir", "--data-dir", parse_nonempty, ".shardlease",
       "Directory for the embedded Redis's files (used only without --redis-url).", metavar="DIR",
       group="coordination"),
    _s("initial_position", "--initial-position", _choice("TRIM_HORIZON", "LATEST"), "TRIM_HORIZON",
       "Where a shard with no checkpoint starts: TRIM_HORIZON (oldest record) or LATEST (new records only).",
       metavar="POSITION", group="stream"),
    _s("snapshot", "--snapshot", parse_bool, False,
       "First hand every existing item of the table to the handler (a parallel Scan shared by the group, once "
       "per group), bracketed with the stream so an upserting sink converges (docs/snapshot.md).",
       group="stream"),
    _s("snapshot_segments", "--snapshot-segments", _ranged(parse_int, 0, 1_000_000), 0,
       "Scan segments of the snapshot (1-1000000); 0 sizes it by the table (one per 256 MB, at least 4).",
       metavar="N", default_doc="0 (by table size)", group="stream"),
    _s("snapshot_read_units", "--snapshot-read-units", _ranged(parse_float_setting, 0, 1e9), 1000.0,
       "Read capacity units per second the snapshot may consume across the group; 0 means no limit.",
       metavar="UNITS", group="stream"),
    _s("snapshot_max_stream_lag_s", "--snapshot-max-stream-lag", _ranged(parse_duration, 1, 3600), 300.0,
       "Seconds after which no new handler call starts for a snapshot page that holds back the group's stream "
       "records (it is released and read again later); a call already running, and its retries, may hold "
       "them longer (docs/snapshot.md).", metavar="SECONDS", group="stream"),
    _s("handler_style", "--handler-style", _choice("auto", "native", "lambda", upper=False), "auto",
       "How the handler is called: native handle(records, ctx), lambda handler(event, context) with Lambda's "
       "exact event, or auto (lambda when its parameters are named event and context).", metavar="STYLE",
       group="delivery"),
    _s("batch_size", "--batch-size", _ranged(parse_int, 1, 10_000), 100,
       "Maximum records per handler call (1-10000; above 1000 a batch spans several GetRecords pages).",
       metavar="N", group="delivery"),
    _s("batching_window_s", "--batching-window", _ranged(parse_duration, 0, 300), 0.0,
       "Seconds to keep gathering records before calling the handler (Lambda's MaximumBatchingWindowInSeconds); "
       "0 calls it as soon as records arrive.", metavar="SECONDS", group="delivery"),
    _s("max_retry_attempts", "--max-retry-attempts", parse_forever_or_int, -1,
       "Retries of a failed batch before its records go to --on-failure; -1 retries forever (Lambda's default).",
       metavar="N", group="failure handling"),
    _s("max_record_age_s", "--max-record-age", parse_forever_or_duration, -1.0,
       "Records older than this many seconds when a batch fails go to --on-failure instead of being retried; "
       "-1 means no limit.", metavar="SECONDS", group="failure handling"),
    _s("bisect_on_error", "--bisect-on-error", parse_bool, False,
       "Split a failing batch in two and retry each half, down to the single record that fails.",
       group="failure handling"),
    _s("on_failure", "--on-failure", parse_on_failure, "redis",
       "Where records go once retries or age run out, in full with the error: redis (a stream in the group's "
       "namespace), sqs:<queue URL or ARN>, file:<path.jsonl>, or none (logged and skipped).", metavar="DEST",
       group="failure handling"),
    _s("stop_on_failure", "--stop-on-failure", parse_bool, False,
       "Strict order: a failing record stops its shard there (retried, reported, never skipped).",
       group="failure handling"),
    _s("filter_patterns", "--filter-patterns", parse_filter_patterns, None,
       "Lambda filter patterns (JSON list, or {\"Filters\": [...]}, or @file): only matching records reach the "
       "handler; the checkpoint moves past the others.", metavar="JSON", group="delivery"),
    _s("parallelization_factor", "--parallelization-factor", _ranged(parse_int, 1, 10), 1,
       "Batches of one shard handled at once (1-10), each item key always in the same lane, so per-key order "
       "holds.", metavar="N", group="delivery"),
    _s("handler_timeout_s", "--handler-timeout", _ranged(parse_duration, 0, 900, low_open=True), 300.0,
       "Seconds a handler call may run before it counts as hung (logged, counted, shown by status, then "
       "--on-handler-timeout applies); also a Lambda-style context's budget (get_remaining_time_in_millis).",
       metavar="SECONDS", group="failure handling"),
    _s("on_handler_timeout", "--on-handler-timeout", _choice("exit", "warn", upper=False), "exit",
       "What a hung handler call leads to: exit (hand the other shards back, keep the hung shard's lease "
       "unreleased and exit with code 3, so a healthy worker takes it over once it expires) or warn "
       "(report it and keep waiting).", metavar="ACTION", group="failure handling"),
    _s("lease_ttl_s", "--lease-ttl", _ranged(parse_duration, 1, 300), 5.0,
       "Seconds a lease lives without renewal; a crashed worker's shards move after about this long.",
       metavar="SECONDS", group="coordination"),
    _s("renew_interval_s", "--renew-interval", _ranged(parse_duration, 0, 150, low_open=True), 1.5,
       "Seconds between lease renewals; must be less than half of --lease-ttl.", metavar="SECONDS",
       group="coordination"),
    _s("worker_id", "--worker-id", _parse_worker_id, None,
       "This worker's unique name in the group (letters, digits, '_', '.', ':', '-').", metavar="ID",
       default_factory=default_worker_id, default_doc="<hostname>-<pid>", group="coordination"),
    _s("metrics_port", "--metrics-port", _ranged(parse_int, 0, 65535), None,
       "TCP port of the /metrics, /healthz and /readyz HTTP server; 0 disables it.  Unset: "
       f"{DEFAULT_METRICS_PORT}, or the next free port when another worker on the host has it (logged at "
       "start, shown by status); a port given explicitly must be free.", metavar="PORT",
       default_doc=f"{DEFAULT_METRICS_PORT} (or the next free)", group="observability"),
    _s("metrics_host", "--metrics-host", parse_nonempty, "0.0.0.0",
       "Address the metrics/health HTTP server listens on.", metavar="HOST", group="observability"),
    _s("per_shard_metrics", "--per-shard-metrics", parse_bool, False,
       "Also export each held shard's iterator age (shardlease_shard_iterator_age_seconds{shard_id}): one "
       "series per shard, and shard ids change at every split, so only for fleets of up to a few hundred "
       "shards.", group="observability"),
    _s("log_format", "--log-format", _choice("text", "json", upper=False), "text",
       "Log line format: text (one readable line) or json (one JSON object per line).", metavar="FORMAT",
       group="observability"),
    _s("log_level", "--log-level", _choice("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), "INFO",
       "Minimum log level: DEBUG, INFO, WARNING, ERROR or CRITICAL.", metavar="LEVEL", group="observability"),
    _s("idle_poll_interval_s", "--idle-poll-interval", _ranged(parse_duration, 0, 300, low_open=True), 4.0,
       "Longest wait in seconds between GetRecords calls on a caught-up shard: a shard quiet for --quiet-after "
       "is polled this often (the price: its first new record waits up to this long); 1 polls every shard "
       "once a second as before.", metavar="SECONDS", group="stream"),
    _s("active_poll_interval_s", "--active-poll-interval", _ranged(parse_duration, 0, 300, low_open=True), 1.0,
       "Seconds between GetRecords calls on a caught-up shard that had records within --quiet-after (at most "
       "--idle-poll-interval).", metavar="SECONDS", group="stream"),
    _s("quiet_after_s", "--quiet-after", _ranged(parse_duration, 0, 86400), 60.0,
       "Seconds without records after which a shard is polled at --idle-poll-interval instead of "
       "--active-poll-interval; records on a quiet shard wake the worker's other quiet shards.",
       metavar="SECONDS", group="stream"),
    _s("max_getrecords_per_second", "--max-getrecords-per-second", parse_calls_per_second, 0.0,
       "Fleet-wide GetRecords budget: all workers of the group together make at most about this many calls a "
       "second, each its share by shards held, busy shards first; below one call per shard per "
       "--idle-poll-interval every shard's poll interval stretches, never past 300 s.  0: no budget.", metavar="CALLS",
       default_doc="0 (no budget)", group="stream"),
    _s("checkpoint_interval_s", "--checkpoint-interval", _ranged(parse_duration, 0, 300), 0.0,
       "At most one checkpoint per shard per this many seconds (always at handoff, shutdown and shard end); "
       "0 checkpoints every batch.  A crash re-delivers up to this many seconds of records.",
       metavar="SECONDS", group="delivery"),
    _s("shutdown_grace_s", "--shutdown-grace", _ranged(parse_duration, 0, 3600), 20.0,
       "Maximum seconds to finish in-flight batches and hand off leases after SIGTERM.", metavar="SECONDS",
       group="coordination"),
    _s("processes", "--processes", parse_processes, 1,
       "Worker processes to run under one supervisor sharing one metrics endpoint, one health answer and one "
       "graceful shutdown (each a worker of the group named <worker id>-p<i>): 1 runs one process as always; "
       "auto is one per CPU this process may use (affinity and cgroup CPU quota).", metavar="N|auto",
       group="coordination"),
    _s("shard_sync_interval_s", "--shard-sync-interval",
       _ranged(parse_duration, 0, 86400, low_open=True), 60.0,
       "Seconds between DescribeStream scans for new and closed shards (done by the leader).",
       metavar="SECONDS", group="stream"),
    _s("handoff_timeout_s", "--handoff-timeout", _ranged(parse_duration, 0, 300), 10.0,
       "Seconds a worker waits for a live owner to hand a shard over before taking it by force (fenced).",
       metavar="SECONDS", group="coordination"),
    _s("max_shards", "--max-shards", _ranged(parse_int, 0, 1_000_000), 0,
       "Maximum leases this worker holds at once; 0 means no cap.", metavar="N", group="coordination"),
    _s("endpoint_url", "--endpoint-url", parse_endpoint_url, None,
       "DynamoDB Streams endpoint URL; unset uses boto3's sources (AWS_ENDPOINT_URL_DYNAMODB_STREAMS, ...).",
       metavar="URL", default_doc="(from boto3)", group="stream"),
    _s("region", "--region", parse_nonempty, None,
       "AWS region; unset uses boto3's sources (AWS_REGION, AWS_DEFAULT_REGION, profile).",
       metavar="REGION", default_doc="(from boto3)", group="stream"),
    _s("redis_ca_file", "--redis-ca-file", parse_existing_file, None,
       "PEM file of CA certificates to verify a rediss:// server.", metavar="FILE", group="redis security"),
    _s("redis_cert_file", "--redis-cert-file", parse_existing_file, None,
       "PEM client certificate for rediss:// mutual TLS.", metavar="FILE", group="redis security"),
    _s("redis_key_file", "--redis-key-file", parse_existing_file, None,
       "PEM private key of --redis-cert-file.", metavar="FILE", group="redis security"),
)

SETTINGS_BY_NAME: dict[str, Setting] = {s.name: s for s in RUN_SETTINGS}


@dataclass(frozen=True, slots=True)
class RunConfig:
    """The validated settings of one ``shardlease run``.  Field meanings: :data:`RUN_SETTINGS`."""

    stream_arn: str | None = None
    table: str | None = None
    group: str = "default"
    handler: str | None = None
    redis_url: str | None = None
    data_dir: str = ".shardlease"
    initial_position: str = "TRIM_HORIZON"
    snapshot: bool = False
    snapshot_segments: int = 0
    snapshot_read_units: float = 1000.0
    snapshot_max_stream_lag_s: float = 300.0
    handler_style: str = "auto"
    batch_size: int = 100
    batching_window_s: float = 0.0
    max_retry_attempts: int = -1
    max_record_age_s: float = -1.0
    bisect_on_error: bool = False
    on_failure: str = "redis"
    stop_on_failure: bool = False
    filter_patterns: str | None = None
    parallelization_factor: int = 1
    handler_timeout_s: float = 300.0
    on_handler_timeout: str = "exit"
    lease_ttl_s: float = 5.0
    renew_interval_s: float = 1.5
    worker_id: str = field(default_factory=default_worker_id)
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    per_shard_metrics: bool = False
    log_format: str = "text"
    log_level: str = "INFO"
    idle_poll_interval_s: float = 4.0
    active_poll_interval_s: float = 1.0
    quiet_after_s: float = 60.0
    max_getrecords_per_second: float = 0.0
    checkpoint_interval_s: float = 0.0
    shutdown_grace_s: float = 20.0
    processes: int = 1
    shard_sync_interval_s: float = 60.0
    handoff_timeout_s: float = 10.0
    max_shards: int = 0
    endpoint_url: str | None = None
    region: str | None = None
    redis_ca_file: str | None = None
    redis_cert_file: str | None = None
    redis_key_file: str | None = None

    def __post_init__(self) -> None:
        validate_run_config(self, require_stream=False)

    def __repr__(self) -> str:
        # Never show a Redis password, wherever a config gets printed.
        items = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return redact(f"RunConfig({items})")


def _check_relations(values: Mapping[str, Any], *, require_stream: bool, require_handler: bool = False) -> None:
    """Checks that involve more than one setting."""
    ttl, renew = values["lease_ttl_s"], values["renew_interval_s"]
    if not renew < ttl / 2:
        ren, lease = SETTINGS_BY_NAME["renew_interval_s"], SETTINGS_BY_NAME["lease_ttl_s"]
        raise ConfigError(
            f"{ren.label} and {lease.label}",
            f"renew interval {renew:g}s is not less than half the lease TTL {ttl:g}s",
            f"lower {ren.flags[0]} below {ttl / 2:g} or raise {lease.flags[0]} above {2 * renew:g}",
        )
    arn, table = values["stream_arn"], values["table"]
    if arn is not None and table is not None:
        raise ConfigError(
            "stream_arn/table (--stream-arn / SHARDLEASE_STREAM_ARN, --table / SHARDLEASE_TABLE)",
            "both are set",
            "give only one of them",
        )
    if require_stream and arn is None and table is None:
        raise ConfigError(
            "stream_arn/table (--stream-arn / SHARDLEASE_STREAM_ARN, --table / SHARDLEASE_TABLE)",
            "no stream to consume",
            "give --stream-arn <ARN> or --table <name>",
        )
    if values.get("snapshot") and values["initial_position"] == "LATEST":
        snap, pos = SETTINGS_BY_NAME["snapshot"], SETTINGS_BY_NAME["initial_position"]
        raise ConfigError(f"{snap.label} and {pos.label}",
                          "a snapshot needs every write after its first page, which LATEST may skip",
                          "drop --initial-position LATEST (TRIM_HORIZON is the default)")
    if require_handler and values["handler"] is None:
        handler = SETTINGS_BY_NAME["handler"]
        raise handler.error(
            "no handler given: run needs the function your records go to",
            "give --handler package.module:function (worker.handling.handler:log_records only logs each batch)",
        )
    if values["stop_on_failure"] and (values["max_retry_attempts"] != -1 or values["max_record_age_s"] != -1):
        stop = SETTINGS_BY_NAME["stop_on_failure"]
        raise stop.error(
            "strict mode never skips a record, so it cannot be combined with --max-retry-attempts or "
            "--max-record-age",
            "drop those two, or drop --stop-on-failure",
        )
    _check_tls(values)


def _check_tls(values: Mapping[str, Any]) -> None:
    url = values["redis_url"]
    if url is None or not url.lower().startswith(("rediss://", "rediss+cluster://")):
        for name in ("redis_ca_file", "redis_cert_file", "redis_key_file"):
            if values[name] is not None:
                setting = SETTINGS_BY_NAME[name]
                raise setting.error(
                    "TLS files only apply to a rediss:// server", "also give --redis-url rediss://host:port/0"
                )


def validate_run_config(config: RunConfig, *, require_stream: bool = True) -> None:
    """Validate a :class:`RunConfig` built directly (tests, the demo); raises ConfigError.

    Each set value goes through the same parser as its flag (on its ``str()``), then the
    checks across settings run.
    """
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    for name, value in values.items():
        if value is not None:
            _parse_setting(SETTINGS_BY_NAME[name], str(value), "RunConfig")
    _check_relations(values, require_stream=require_stream)


# ----------------------------------------------------------------------------
# argparse, environment, README.
# ----------------------------------------------------------------------------


REDIS_SETTINGS: tuple[str, ...] = ("group", "redis_url", "data_dir", "redis_ca_file", "redis_cert_file",
                                   "redis_key_file")
"""The settings every command that reads the group's Redis takes (``status``, ``dlq list/replay``)."""


def help_text(setting: Setting) -> str:
    """The setting's ``--help`` line: what it does, then its variable and its default, once each."""
    env = f"{setting.env}=true/false" if setting.is_switch else setting.env
    default = setting.default_text()
    return f"{setting.help} [env {env}; {'required' if default == REQUIRED else 'default: ' + default}]"


def add_run_arguments(parser: argparse.ArgumentParser, settings: Iterable[Setting] = RUN_SETTINGS) -> None:
    """Add one option per setting, under the titles of :data:`GROUPS`.  Values stay strings (``None``
    if absent; a switch gives True/False): :func:`load_run_config` parses them, so a flag and its
    environment variable are validated the same way."""
    chosen = list(settings)
    for key, title in GROUPS:
        members = [s for s in chosen if s.group == key]
        if not members:
            continue
        group = parser.add_argument_group(title)
        for setting in members:
            if setting.is_switch:
                group.add_argument(*setting.flags, dest=setting.name, default=None,
                                   action=argparse.BooleanOptionalAction, help=help_text(setting))
            else:
                group.add_argument(*setting.flags, dest=setting.name, default=None, metavar=setting.metavar,
                                   help=help_text(setting))


def env_names() -> set[str]:
    """Every ``SHARDLEASE_*`` environment variable ``shardlease run`` reads."""
    return {s.env for s in RUN_SETTINGS}


NOT_SETTINGS_ENV = ("SHARDLEASE_SKIP_IMAGE", "SHARDLEASE_CI_RUN")
"""``SHARDLEASE_*`` variables that are not settings: CI's image stage.  ``SHARDLEASE_TEST_*`` are the tests' hooks,
and ``..._OUT`` the files the demo's, tests' and benchmarks' handlers write."""


def unknown_env(environ: Mapping[str, str]) -> list[str]:
    """One warning per ``SHARDLEASE_*`` variable in ``environ`` that no setting reads (a typo such as
    ``SHARDLEASE_BATCHSIZE`` would otherwise be ignored without a word), naming the closest setting's."""
    known = env_names()
    lines = []
    for name in sorted(environ):
        if (not name.startswith(ENV_PREFIX) or name in known or name in NOT_SETTINGS_ENV
                or name.startswith(ENV_PREFIX + "TEST_") or name.endswith("_OUT")):
            continue
        close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else " (`shardlease run --help` lists the settings)"
        lines.append(f"{name} is set but no setting reads it: ignored{hint}")
    return lines


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The README's configuration tables, one per group of :data:`GROUPS`: setting | flag |
    environment variable | default | meaning.  A switch shows both its flags and true/false."""
    lines: list[str] = []
    for key, title in GROUPS:
        lines += [f"**{title}**", "", "| Setting | Flag | Environment variable | Default | Meaning |",
                  "|---|---|---|---|---|"]
        for s in RUN_SETTINGS:
            if s.group != key:
                continue
            flags = ", ".join(f"`{f}`" for f in s.flags)
            env = f"`{s.env}`"
            if s.is_switch:
                flags += f" / `{s.no_flag}` (a switch)"
                env += " (`true`/`false`)"
            default = s.default_text(quote=False)
            default = default if default.startswith("(") else f"`{default}`"
            lines.append(f"| {s.name} | {flags} | {env} | {_md(default)} | {_md(s.help)} |")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _raw_value(
    setting: Setting, args: argparse.Namespace | None, environ: Mapping[str, str]
) -> tuple[str | None, str]:
    """The setting's text and where it came from, flag before environment."""
    if args is not None:
        value = getattr(args, setting.name, None)
        if value is not None and str(value).strip() != "":
            return str(value), setting.flags[0]
    value = environ.get(setting.env)
    if value is not None and value.strip() != "":
        return value, setting.env
    return None, "default"


def _parse_setting(setting: Setting, text: str, source: str) -> Any:
    try:
        return setting.parse(text)
    except ConfigError as err:  # validators shared with leaser raise ConfigError themselves
        raise setting.error(f"{err.problem} (from {source})", err.fix) from None
    except ValueError as err:
        problem, _, fix = str(err).partition("; ")
        raise setting.error(f"{problem} (from {source})", fix or "see shardlease run --help") from None


def load_run_config(
    args: argparse.Namespace | Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    require_stream: bool = True,
    require_handler: bool = True,
) -> RunConfig:
    """Build a validated :class:`RunConfig` from flags (a parsed namespace or an argv list),
    ``SHARDLEASE_*`` variables (default ``os.environ``) and defaults.

    ``require_stream=False`` lets a caller that supplies its own stream (the demo) omit
    ``--stream-arn``/``--table``; ``require_handler=False`` one that supplies its own handler
    object omit ``--handler``.
    """
    if environ is None:
        environ = os.environ
    if args is not None and not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="shardlease run", exit_on_error=False)
        add_run_arguments(parser)
        try:
            args, extra = parser.parse_known_args(list(args))
        except argparse.ArgumentError as err:
            raise ConfigError("arguments", str(err), "see shardlease run --help") from None
        if extra:
            unknown = " ".join(extra)
            raise ConfigError("arguments", f"unrecognized arguments: {unknown}", "see shardlease run --help")
    values: dict[str, Any] = {}
    for setting in RUN_SETTINGS:
        text, source = _raw_value(setting, args, environ)
        if text is None:
            values[setting.name] = setting.default_value()
        else:
            values[setting.name] = _parse_setting(setting, text, source)
    _check_relations(values, require_stream=require_stream, require_handler=require_handler)
    return RunConfig(**values)


def load_settings(
    names: Iterable[str], args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Some settings of the table (e.g. :data:`REDIS_SETTINGS`, for ``status``), parsed and checked
    exactly as ``shardlease run`` does: flag, else variable, else default."""
    if environ is None:
        environ = os.environ
    values: dict[str, Any] = {}
    for name in names:
        setting = SETTINGS_BY_NAME[name]
        text, source = _raw_value(setting, args, environ)
        values[name] = setting.default_value() if text is None else _parse_setting(setting, text, source)
    if {"redis_url", "redis_ca_file", "redis_cert_file", "redis_key_file"} <= values.keys():
        _check_tls(values)
    return values


def _python_value_text(setting: Setting, value: Any) -> str:
    """The text a Python value stands for, for its setting's parser: ``True`` -> ``"true"``,
    ``timedelta(seconds=3)`` -> ``"3.0"`` (durations only), anything else ``str(value)``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta) and setting.name.endswith("_s"):
        return str(value.total_seconds())
    return str(value)


def build_run_config(
    settings: Mapping[str, Any],
    *,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    source: str = "keyword argument",
) -> RunConfig:
    """A validated :class:`RunConfig` from Python values keyed by setting name (``batch_size=10``,
    ``lease_ttl_s=3.0``, ``bisect_on_error=True``; a duration may be a ``timedelta``).

    Each value goes through its setting's parser, exactly as its flag's text does, so a bad one raises the
    same one-line :class:`~leaser.errors.ConfigError` naming the setting and the fix; ``None`` counts as
    not given.  A setting not given comes from ``environ``'s ``SHARDLEASE_*`` variable (only when
    ``environ`` is passed, e.g. ``os.environ``), else from ``defaults``, else from the table.  A stream
    (``stream_arn`` or ``table``) is required; ``handler`` is not (a handler object may come separately).
    """
    unknown = sorted(set(settings) - SETTINGS_BY_NAME.keys())
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(SETTINGS_BY_NAME), n=1, cutoff=0.6)
        raise ConfigError(
            unknown[0], "no such setting",
            (f"did you mean {close[0]}? " if close else "")
            + "the settings are the names in the README's configuration tables (worker.config.RUN_SETTINGS)",
        )
    values: dict[str, Any] = {}
    for setting in RUN_SETTINGS:
        given = settings.get(setting.name)
        if given is not None:
            values[setting.name] = _parse_setting(setting, _python_value_text(setting, given), source)
            continue
        text, origin = _raw_value(setting, None, environ if environ is not None else {})
        if text is not None:
            values[setting.name] = _parse_setting(setting, text, origin)
        elif defaults is not None and setting.name in defaults:
            values[setting.name] = defaults[setting.name]
        else:
            values[setting.name] = setting.default_value()
    _check_relations(values, require_stream=True)
    return RunConfig(**values)
