"""Log formats and credential redaction."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import orjson
import pytest

from leaser.errors import ConfigError
from worker.logs import configure_logging, redact, redact_url

TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    yield out
    for handler in [h for h in root.handlers if getattr(h, "_shardlease", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:secret@host", "redis://:***@host"),
        ("rediss://default:p@ss@cache.example.com:6380", "rediss://default:***@cache.example.com:6380"),
        ("unix://u:pw@/var/run/redis.sock", "unix://u:***@/var/run/redis.sock"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host", "redis://user@host"),
        ("redis://host:6379/0?password=hunter2&db=1", "redis://host:6379/0?password=***&db=1"),
        ("http://localhost:8000", "http://localhost:8000"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_in_text() -> None:
    text = "connecting to redis://a:b1@h1 and rediss://:c2@h2/3, then stop"
    assert redact(text) == "connecting to redis://a:***@h1 and rediss://:***@h2/3, then stop"


def test_text_format(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream=stream, context={"worker_id": "w-1"})
    log = logging.getLogger("worker.test")
    log.info("took lease %s", "shardId-9", extra={"shard_id": "shardId-9", "token": 4})
    log.debug("not shown")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(rf"{TS} INFO worker=w-1 shard=shardId-9 took lease shardId-9 token=4", lines[0]), lines


def test_text_without_context(stream: io.StringIO) -> None:
    configure_logging("text", "warning", stream=stream)
    logging.getLogger("worker.test").warning("plain")
    assert re.fullmatch(rf"{TS} WARNING plain\n", stream.getvalue())


def test_json_format(stream: io.StringIO) -> None:
    configure_logging("json", "DEBUG", stream=stream, context={"worker_id": "w-2", "group": "g"})
    log = logging.getLogger("worker.test")
    log.debug("batch %d", 3, extra={"shard_id": "s-1", "obj": object()})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("handler failed")
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(TS, first["ts"])
    assert first["level"] == "DEBUG" and first["logger"] == "worker.test" and first["msg"] == "batch 3"
    assert first["worker_id"] == "w-2" and first["group"] == "g" and first["shard_id"] == "s-1"
    assert first["obj"].startswith("<object")
    assert second["level"] == "ERROR"
    assert second["exc"].startswith("Traceback") and "RuntimeError: boom" in second["exc"]


def test_secrets_are_redacted_everywhere(stream: io.StringIO) -> None:
    configure_logging("json", "INFO", stream=stream)
    log = logging.getLogger("worker.test")
    log.info("url redis://u:topsecret@h:1/0")
    log.info("url %s", "redis://:topsecret@h")
    log.info("config %r", {"redis_url": "rediss://u:topsecret@h"})
    log.info("extra", extra={"redis_url": "redis://u:topsecret@h"})
    try:
        raise ConnectionError("cannot reach redis://u:topsecret@h")
    except ConnectionError:
        log.exception("failed")
    out = stream.getvalue()
    assert "topsecret" not in out
    assert out.count("***") == 6  # the traceback shows the raising line and the message


def test_text_exceptions_are_redacted(stream: io.StringIO) -> None:
    configure_logging("text", "INFO", stream=stream)
    try:
        raise ValueError("redis://:pw123@h")
    except ValueError:
        logging.getLogger("x").exception("oops redis://:pw123@h")
    out = stream.getvalue()
    assert "pw123" not in out and "Traceback" in out


def test_reconfigure_replaces_our_handler_only(stream: io.StringIO) -> None:
    root = logging.getLogger()
    others = [h for h in root.handlers if not getattr(h, "_shardlease", False)]
    configure_logging("text", "INFO", stream=stream)
    configure_logging("json", "INFO", stream=stream)
    ours = [h for h in root.handlers if getattr(h, "_shardlease", False)]
    assert len(ours) == 1
    assert [h for h in root.handlers if not getattr(h, "_shardlease", False)] == others
    logging.getLogger("x").info("once")
    assert stream.getvalue().count("once") == 1


def test_noisy_libraries_quieted(stream: io.StringIO) -> None:
    configure_logging("text", "DEBUG", stream=stream)
    assert logging.getLogger("botocore").level == logging.WARNING


def test_bad_format_or_level() -> None:
    with pytest.raises(ConfigError, match=r"log_format .*use one of text, json"):
        configure_logging("xml", "INFO")
    with pytest.raises(ConfigError, match=r"log_level .*use one of DEBUG"):
        configure_logging("text", "LOUD")
