"""Logging: one line per event, as text or JSON, with credentials redacted.

:func:`configure_logging` installs one handler on the root logger::

    text: 2026-11-26T13:00:00.123Z INFO worker=w-1 shard=shardId-0001 message
    json: {"ts":"2026-11-26T13:00:00.123Z","level":"INFO","logger":"worker.runtime","msg":"message",
           "worker_id":"w-1","shard_id":"shardId-0001"}

Context comes from ``extra=`` (``worker_id``, ``shard_id``, ``group``, any other
field) and from the ``context`` given to :func:`configure_logging` (fields put on
every line, such as the worker id).  The handler's :class:`RedactingFilter`
replaces passwords in URLs (``redis://user:secret@host`` ->
``redis://user:***@host``) in messages, arguments, extra fields and tracebacks.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

from leaser.errors import ConfigError

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

# Libraries whose DEBUG output is noise or prints request signatures and session tokens.
QUIET_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")

# scheme://user:password@  (user may be empty; greedy up to the last '@' before the path,
# which is how urllib splits a netloc, so a password holding a raw '@' is covered).
_URL_CREDENTIALS_RE = re.compile(r"(?P<prefix>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:@/\s]*:)(?P<secret>[^\s/]*)@")
# ...?password=secret&...
_QUERY_SECRET_RE = re.compile(r"(?P<prefix>[?&](?:password|passwd|pwd|token)=)(?P<secret>[^&\s#]+)", re.I)

MASK = "***"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """``text`` with every URL password (and ``password=`` query value) replaced by ``***``."""
    if "://" not in text and "=" not in text:
        return text
    text = _URL_CREDENTIALS_RE.sub(lambda m: f"{m['prefix']}{MASK}@", text)
    return _QUERY_SECRET_RE.sub(lambda m: f"{m['prefix']}{MASK}", text)


def redact_url(url: str) -> str:
    """A URL safe to log: ``redis://user:secret@host`` -> ``redis://user:***@host``."""
    return redact(url)


class RedactingFilter(logging.Filter):
    """Redact credentials in a record before any formatter sees it.

    The message is formatted here (``msg % args``), redacted, and stored back with no
    args, so ``%r`` of an object holding a URL is covered too.  Installed on the handler,
    so it sees records from every logger.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: let logging report it as usual
            return True
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class ContextFilter(logging.Filter):
    """Put fixed fields (the worker id, the group) on every record that lacks them."""

    def __init__(self, context: Mapping[str, Any]) -> None:
        super().__init__()
        self.context = dict(context)

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.context.items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record got from ``extra=`` (or the context filter)."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> worker=<id> shard=<id> <message> [key=value ...]``, traceback on following lines."""

    # Shown right after the level, in this order, under these short names.
    LEADING = (("worker_id", "worker"), ("shard_id", "shard"))

    def format(self, record: logging.LogRecord) -> str:
        extras = extra_fields(record)
        parts = [_timestamp(record), record.levelname]
        for key, short in self.LEADING:
            if extras.get(key) is not None:
                parts.append(f"{short}={extras.pop(key)}")
            else:
                extras.pop(key, None)
        parts.append(record.getMessage())
        parts.extend(f"{k}={v}" for k, v in extras.items() if v is not None)
        line = " ".join(parts)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the extra fields, and ``exc`` as one string."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


def _is_ours(handler: logging.Handler) -> bool:
    return getattr(handler, "_shardlease", False) is True


def configure_logging(
    fmt: str = "text",
    level: str = "INFO",
    *,
    stream: TextIO | None = None,
    context: Mapping[str, Any] | None = None,
) -> logging.Handler:
    """Log to ``stream`` (default stderr) in ``fmt`` ("text" or "json") at ``level`` and above.

    Replaces a handler installed by an earlier call (safe to call twice); leaves other
    handlers (pytest's, an application's) alone.  ``context`` fields (e.g.
    ``{"worker_id": ..., "group": ...}``) go on every line.  Returns the installed handler.
    """
    fmt_name = str(fmt).strip().lower()
    if fmt_name not in LOG_FORMATS:
        raise ConfigError(
            "log_format (--log-format / SHARDLEASE_LOG_FORMAT)",
            f"{fmt!r} is not allowed",
            f"use one of {', '.join(LOG_FORMATS)}",
        )
    level_name = str(level).strip().upper()
    if level_name not in LOG_LEVELS:
        raise ConfigError(
            "log_level (--log-level / SHARDLEASE_LOG_LEVEL)",
            f"{level!r} is not allowed",
            f"use one of {', '.join(LOG_LEVELS)}",
        )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._shardlease = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt_name == "json" else TextFormatter())
    if context:
        handler.addFilter(ContextFilter(context))
    handler.addFilter(RedactingFilter())

    root = logging.getLogger()
    for old in [h for h in root.handlers if _is_ours(h)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    numeric = logging.getLevelNamesMapping()[level_name]
    root.setLevel(numeric)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    return handler
