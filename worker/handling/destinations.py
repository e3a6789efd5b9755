"""On-failure destinations ("dead letters"): where a batch goes once its retries or its age run out.

Lambda's on-failure destination sends only metadata (shard, sequence range); ours keeps the full
records (their wire JSON, exactly as received) with the error, so ``shardlease dlq replay`` can
re-drive them through a handler later.

``--on-failure`` (see :func:`open_destination`):

* ``redis`` (default): a Redis stream in the group's slot, ``shardlease:{<group>}:dlq``
  (:class:`RedisStreamDestination`), trimmed approximately to the newest 100,000 entries;
* ``sqs:<queue URL or ARN>``: one SQS message per entry, split when over 256 KiB
  (:class:`SqsDestination`);
* ``file:<path>``: one JSON line per entry, appended (:class:`JsonLinesDestination`);
* ``none``: the entry's metadata is logged at ERROR and the records are dropped (:class:`NoDestination`).

Errors: a destination that cannot be reached raises :class:`DestinationUnavailable` (retryable;
Redis errors become :class:`~leaser.errors.CoordinationUnavailable`, also retryable); one that
refuses the entry for good raises :class:`DestinationFailed` (fatal).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Protocol, runtime_checkable

import orjson

from leaser.errors import ConfigError, FatalError, RetryableError
from leaser.keys import GroupKeys
from leaser.store import translate_redis_errors

__all__ = [
    "ON_FAILURE_SETTING",
    "Destination",
    "DestinationFailed",
    "DestinationUnavailable",
    "FailureEntry",
    "JsonLinesDestination",
    "NoDestination",
    "RedisStreamDestination",
    "SqsDestination",
    "open_destination",
]

log = logging.getLogger(__name__)

ON_FAILURE_SETTING = "on_failure (--on-failure / SHARDLEASE_ON_FAILURE)"
ERROR_MAX_CHARS = 1000
"""``FailureEntry.error`` is one line of at most this many characters."""
DEFAULT_REDIS_MAXLEN = 100_000
SQS_MAX_BYTES = 256 * 1024
_SQS_BODY_BUDGET = SQS_MAX_BYTES - 2048  # room for the message attributes, which count towards the limit
_SQS_URL_REGION_RE = re.compile(r"^https?://sqs\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/")
_SQS_ARN_RE = re.compile(r"^arn:(?P<partition>aws[\w-]*):sqs:(?P<region>[\w-]+):(?P<account>\d{12}):(?P<name>[\w.-]+)$")


class DestinationUnavailable(RetryableError):
    """The destination could not be reached or throttled us; sending the same entry later may work."""


class DestinationFailed(FatalError):
    """The destination refused the entry (missing queue, no permission, too large); retrying will not help."""


# ----------------------------------------------------------------------------
# The entry.
# ----------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    # Records decoded by botocore (not from the HTTP body) may hold datetimes and bytes; store the wire forms.
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot store a {type(value).__name__} in a dead letter")


_DUMPS_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default, option=_DUMPS_OPTIONS)


def one_line(text: str, limit: int = ERROR_MAX_CHARS) -> str:
    """``text`` on one line (whitespace runs collapsed), cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class FailureEntry:
    """One failed batch of one shard, with its records in full.

    ``records`` are the records' wire JSON dicts (``Record.raw``) exactly as received;
    ``Record.from_wire(raw, shard_id)`` rebuilds each one.  ``id`` is assigned by the destination
    ("" before sending).  ``part``/``parts`` are 1/1 unless an SQS destination had to split the
    records over several messages (each one a complete entry).  ``truncated`` is true when a single
    record was too large for the destination and was left out (its sequence numbers stay in the entry).
    """

    group: str
    stream_arn: str
    shard_id: str
    first_sequence_number: str
    last_sequence_number: str
    record_count: int
    attempts: int
    reason: str
    """``retries_exhausted``, ``record_too_old`` or another short code."""
    error_type: str
    error: str
    """The last error's message: one line, at most :data:`ERROR_MAX_CHARS` characters."""
    failed_at: str
    """ISO-8601 UTC, e.g. ``2026-01-31T12:00:00.123Z``."""
    worker_id: str
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    id: str = ""
    part: int = 1
    parts: int = 1
    truncated: bool = False

    @classmethod
    def create(
        cls,
        records: Sequence[Any],
        *,
        group: str,
        stream_arn: str,
        shard_id: str,
        attempts: int,
        reason: str,
        error: BaseException | str | None,
        worker_id: str,
        error_type: str | None = None,
        failed_at: str | None = None,
    ) -> FailureEntry:
        """An entry for ``records`` (:class:`~worker.reading.records.Record` objects or raw wire dicts), in order.

        ``error`` may be the exception itself: its type name and message are taken from it.
        """
        raws = [r if isinstance(r, dict) else r.raw for r in records]
        seqs = [str(raw.get("dynamodb", {}).get("SequenceNumber", "")) for raw in raws]
        if isinstance(error, BaseException):
            etype = error_type or type(error).__name__
            message = str(error) or etype
        else:
            etype = error_type or ""
            message = error or ""
        return cls(
            group=group,
            stream_arn=stream_arn,
            shard_id=shard_id,
            first_sequence_number=seqs[0] if seqs else "",
            last_sequence_number=seqs[-1] if seqs else "",
            record_count=len(raws),
            attempts=int(attempts),
            reason=reason,
            error_type=etype,
            error=one_line(message),
            failed_at=failed_at or utc_now_iso(),
            worker_id=worker_id,
            records=list(raws),
        )

    def to_dict(self, *, with_records: bool = True) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if not with_records:
            del out["records"]
        return out

    def metadata(self) -> dict[str, Any]:
        """Everything but the records (safe to log: no images)."""
        return self.to_dict(with_records=False)

    def to_json(self) -> bytes:
        return _dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: bytes | str, *, id: str | None = None) -> FailureEntry:
        obj = orjson.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("a dead-letter entry is a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in obj.items() if k in names}
        if id is not None:
            kwargs["id"] = id
        return cls(**kwargs)

    def with_id(self, id: str) -> FailureEntry:
        return dataclasses.replace(self, id=id)


# ----------------------------------------------------------------------------
# Destinations.
# ----------------------------------------------------------------------------


@runtime_checkable
class Destination(Protocol):
    """Where failed batches go.  ``send`` returns the id the destination gave the entry ("" if none)."""

    def send(self, entry: FailureEntry) -> str: ...

    def close(self) -> None: ...


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStreamDestination:
    """A Redis stream in the group's slot (``shardlease:{<group>}:dlq``), one entry per failed batch.

    Each stream entry holds the :class:`FailureEntry` JSON in field ``entry`` plus small fields for
    inspection with redis-cli (``shard``, ``reason``, ``first_seq``, ``last_seq``, ``records``).
    XADD trims approximately (``MAXLEN ~``) to ``maxlen`` entries, dropping the oldest; 0 disables
    trimming.  The id is the stream entry id.  Redis errors become ``CoordinationUnavailable``.
    """

    def __init__(self, client: Any, group: str, *, maxlen: int = DEFAULT_REDIS_MAXLEN) -> None:
        self.client = client
        self.group = group
        self.key = GroupKeys.for_group(group).namespaced("dlq")
        self.maxlen = maxlen

    def __repr__(self) -> str:
        return f"RedisStreamDestination(group={self.group!r}, key={self.key!r})"

    def describe(self) -> str:
        return f"Redis stream {self.key}"

    def send(self, entry: FailureEntry) -> str:
        fields = {
            "entry": entry.with_id("").to_json(),
            "shard": entry.shard_id,
            "reason": entry.reason,
            "first_seq": entry.first_sequence_number,
            "last_seq": entry.last_sequence_number,
            "records": str(entry.record_count),
        }
        with translate_redis_errors():
            if self.maxlen > 0:
                added = self.client.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)
            else:
                added = self.client.xadd(self.key, fields)
        return _s(added)

    def _decode(self, item: Any) -> FailureEntry | None:
        entry_id, fields = item
        data = {_s(k): v for k, v in fields.items()}.get("entry")
        try:
            return FailureEntry.from_json(data, id=_s(entry_id)) if data is not None else None
        except (ValueError, TypeError) as exc:
            log.warning("dead-letter entry %s in %s is unreadable: %s", _s(entry_id), self.key, exc)
            return None

    def list(self, limit: int = 100, start_id: str | None = None) -> list[FailureEntry]:
        """Up to ``limit`` entries, oldest first, from ``start_id`` (inclusive; default: the oldest)."""
        with translate_redis_errors():
            items = self.client.xrange(self.key, min=start_id or "-", max="+", count=max(1, limit))
        return [e for e in map(self._decode, items) if e is not None]

    def iter_entries(self, batch: int = 100) -> Iterator[FailureEntry]:
        """Every entry, oldest first, read ``batch`` at a time (entries deleted meanwhile are skipped)."""
        start: str | None = None
        while True:
            with translate_redis_errors():
                items = self.client.xrange(self.key, min=start or "-", max="+", count=batch)
            if not items:
                return
            for item in items:
                entry = self._decode(item)
                if entry is not None:
                    yield entry
            ms, _, seq = _s(items[-1][0]).partition("-")
            start = f"{ms}-{int(seq or 0) + 1}"
            if len(items) < batch:
                return

    def get(self, ids: Iterable[str]) -> dict[str, FailureEntry]:
        """The entries with these ids that exist (id -> entry)."""
        found: dict[str, FailureEntry] = {}
        with translate_redis_errors():
            for entry_id in ids:
                for item in self.client.xrange(self.key, min=entry_id, max=entry_id, count=1):
                    entry = self._decode(item)
                    if entry is not None:
                        found[entry_id] = entry
        return found

    def delete(self, ids: Iterable[str]) -> int:
        """Remove these entries; returns how many existed."""
        ids = list(ids)
        if not ids:
            return 0
        with translate_redis_errors():
            return int(self.client.xdel(self.key, *ids))

    def count(self) -> int:
        with translate_redis_errors():
            return int(self.client.xlen(self.key))

    def close(self) -> None:
        return None  # the client belongs to the caller


def parse_sqs_queue(queue: str) -> tuple[str | None, str | None, str | None, str | None]:
    """(url, name, account, region) of a queue URL or ``arn:aws:sqs:<region>:<account>:<name>``.

    For a URL ``url`` is set (and ``region`` when the host names it); for an ARN all but ``url``.
    Anything else is a ConfigError.
    """
    queue = queue.strip()
    match = _SQS_ARN_RE.match(queue)
    if match:
        return None, match["name"], match["account"], match["region"]
    if queue.startswith(("https://", "http://")):
        host = _SQS_URL_REGION_RE.match(queue)
        return queue, None, None, host["region"] if host else None
    raise ConfigError(ON_FAILURE_SETTING, f"{queue!r} is neither an SQS queue URL nor an SQS queue ARN",
                      "use sqs:https://sqs.<region>.amazonaws.com/<account>/<name> or "
                      "sqs:arn:aws:sqs:<region>:<account>:<name>")


class SqsDestination:
    """An SQS queue (URL, or ARN resolved with GetQueueUrl on first use); one message per entry.

    The body is the :class:`FailureEntry` JSON.  SQS takes at most 256 KiB per message: a larger
    entry is **split** — its records are spread over several messages, each a complete entry (same
    metadata, its own slice of records, ``first/last_sequence_number`` and ``record_count`` of that
    slice) numbered with ``part``/``parts`` (1-based).  A single record too large for a message on
    its own goes in a part of its own with no records and ``truncated: true`` (and is logged).
    ``send`` returns the MessageId, or the parts' MessageIds joined with ``,``.

    FIFO queues (``.fifo``) get ``MessageGroupId`` = shard id and a deduplication id derived from
    the entry.  Throttling, 5xx and connection errors raise :class:`DestinationUnavailable`; other
    errors (no such queue, access denied) :class:`DestinationFailed`.
    """

    def __init__(
        self,
        queue: str,
        session: Any = None,
        region: str | None = None,
        endpoint_url: str | None = None,
        *,
        max_bytes: int = _SQS_BODY_BUDGET,
    ) -> None:
        self.queue = queue
        url, self._name, self._account, arn_region = parse_sqs_queue(queue)
        self._url = url
        self.max_bytes = max_bytes
        if session is None:
            import boto3

            session = boto3.session.Session()
        from botocore.exceptions import NoRegionError

        try:
            self.client = session.client("sqs", region_name=region or arn_region, endpoint_url=endpoint_url)
        except NoRegionError as exc:
            raise ConfigError("region (--region / SHARDLEASE_REGION)", f"no AWS region for the SQS queue {queue}",
                              "give --region, set AWS_REGION, or use the queue's ARN") from exc
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SqsDestination(queue={self.queue!r})"

    def describe(self) -> str:
        return f"SQS queue {self.queue}"

    @property
    def queue_url(self) -> str:
        with self._lock:
            if self._url is None:
                kwargs = {"QueueName": self._name, "QueueOwnerAWSAccountId": self._account}
                with _translate_aws_errors("GetQueueUrl", self.queue):
                    self._url = str(self.client.get_queue_url(**kwargs)["QueueUrl"])
            return self._url

    def split(self, entry: FailureEntry) -> list[FailureEntry]:
        """``entry`` as the messages it will be sent as (just ``[entry]`` when it fits)."""
        if len(entry.to_json()) <= self.max_bytes or not entry.records:
            return [entry]
        overhead = len(dataclasses.replace(entry, records=[], part=9999, parts=9999).to_json())
        chunks: list[tuple[list[dict[str, Any]], bool]] = []
        current: list[dict[str, Any]] = []
        size = overhead
        for raw in entry.records:
            n = len(_dumps(raw)) + 1
            if overhead + n > self.max_bytes:  # alone it does not fit: a part of its own, records left out
                if current:
                    chunks.append((current, False))
                    current, size = [], overhead
                chunks.append(([raw], True))
                continue
            if current and size + n > self.max_bytes:
                chunks.append((current, False))
                current, size = [], overhead
            current.append(raw)
            size += n
        if current:
            chunks.append((current, False))
        parts: list[FailureEntry] = []
        for i, (raws, too_big) in enumerate(chunks, start=1):
            seqs = [str(r.get("dynamodb", {}).get("SequenceNumber", "")) for r in raws]
            if too_big:
                log.error("dead letter: record %s of shard %s is too large for an SQS message; sent without it",
                          seqs[0], entry.shard_id)
            parts.append(dataclasses.replace(
                entry, records=[] if too_big else raws, first_sequence_number=seqs[0],
                last_sequence_number=seqs[-1], record_count=len(raws), part=i, parts=len(chunks), truncated=too_big,
            ))
        return parts

    def send(self, entry: FailureEntry) -> str:
        url = self.queue_url
        fifo = url.endswith(".fifo")
        ids: list[str] = []
        for part in self.split(entry):
            body = part.with_id("").to_json()
            kwargs: dict[str, Any] = {
                "QueueUrl": url,
                "MessageBody": body.decode("utf-8"),
                "MessageAttributes": {
                    "shard_id": {"DataType": "String", "StringValue": part.shard_id},
                    "reason": {"DataType": "String", "StringValue": part.reason or "-"},
                },
            }
            if fifo:
                kwargs["MessageGroupId"] = part.shard_id
                kwargs["MessageDeduplicationId"] = hashlib.sha256(
                    f"{part.group}|{part.shard_id}|{part.first_sequence_number}|{part.last_sequence_number}|"
                    f"{part.part}/{part.parts}|{part.failed_at}".encode()).hexdigest()[:128]
            with _translate_aws_errors("SendMessage", self.queue):
                ids.append(str(self.client.send_message(**kwargs)["MessageId"]))
        return ",".join(ids)

    def list(self, limit: int = 100, start_id: str | None = None) -> list[FailureEntry]:
        """Peek at up to ``limit`` messages (ReceiveMessage with VisibilityTimeout=0: nothing is hidden or
        deleted).  SQS has no order and no cursor: ``start_id`` is ignored and the sample may be incomplete."""
        url = self.queue_url
        seen: dict[str, FailureEntry] = {}
        empty = 0
        while len(seen) < limit and empty < 3:
            with _translate_aws_errors("ReceiveMessage", self.queue):
                answer = self.client.receive_message(
                    QueueUrl=url, MaxNumberOfMessages=min(10, limit - len(seen)), VisibilityTimeout=0,
                    WaitTimeSeconds=0)
            new = 0
            for message in answer.get("Messages", []):
                mid = str(message["MessageId"])
                if mid in seen:
                    continue
                try:
                    seen[mid] = FailureEntry.from_json(message["Body"], id=mid)
                    new += 1
                except (ValueError, TypeError) as exc:
                    log.warning("SQS message %s is not a dead-letter entry: %s", mid, exc)
            empty = empty + 1 if new == 0 else 0
        return list(seen.values())[:limit]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


@contextlib.contextmanager
def _translate_aws_errors(operation: str, queue: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

    try:
        yield
    except ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"SQS {operation} on {queue}: {code}: {one_line(str(err.get('Message', '')), 300)}"
        if status >= 500 or "Throttl" in code or code in ("RequestThrottled", "ServiceUnavailable", "InternalError"):
            raise DestinationUnavailable(text) from exc
        raise DestinationFailed(text) from exc
    except (ConnectionError, HTTPClientError) as exc:
        raise DestinationUnavailable(f"SQS {operation} on {queue}: {type(exc).__name__}: {exc}") from exc
    except BotoCoreError as exc:  # no credentials, no region, bad parameters
        raise DestinationFailed(f"SQS {operation} on {queue}: {type(exc).__name__}: {exc}") from exc


class JsonLinesDestination:
    """A file of JSON lines, one :class:`FailureEntry` per line, appended.

    Every entry is written with a single ``write`` on a descriptor opened with ``O_APPEND``, so
    processes (and threads) appending to the same local file never interleave their lines.  The
    id of an entry is the byte offset of its line.  ``fsync=True`` syncs after every entry.

    Replayed entries are never removed from the file: their ids are appended to the sidecar
    ``<path>.replayed`` (see :meth:`delete`), and :meth:`list` hides them.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = os.fspath(path)
        self.replayed_path = self.path + ".replayed"
        self.fsync = fsync

    def __repr__(self) -> str:
        return f"JsonLinesDestination(path={self.path!r})"

    def describe(self) -> str:
        return f"file {self.path}"

    @staticmethod
    def _append(path: str, data: bytes, fsync: bool) -> int:
        """Append ``data`` with O_APPEND; returns the offset it was written at."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            written = os.write(fd, data)
            end = os.lseek(fd, 0, os.SEEK_CUR)  # this descriptor's position: the end of our own write
            while written < len(data):  # a short write to a regular file only happens when the disk is full
                n = os.write(fd, data[written:])
                if n <= 0:
                    raise OSError(f"short write to {path}")
                written += n
                end = os.lseek(fd, 0, os.SEEK_CUR)
            if fsync:
                os.fsync(fd)
            return end - len(data)
        finally:
            os.close(fd)

    def send(self, entry: FailureEntry) -> str:
        line = entry.with_id("").to_json() + b"\n"
        try:
            return str(self._append(self.path, line, self.fsync))
        except OSError as exc:
            raise DestinationFailed(f"cannot append to {self.path}: {exc.strerror or exc}") from exc

    def replayed(self) -> set[str]:
        try:
            with open(self.replayed_path, encoding="utf-8") as fh:
                return {line.strip() for line in fh if line.strip()}
        except FileNotFoundError:
            return set()

    def _scan(self, start: int = 0) -> Iterator[FailureEntry]:
        hidden = self.replayed()
        try:
            fh = open(self.path, "rb")  # noqa: SIM115 - a generator holds it
        except FileNotFoundError:
            return
        with fh:
            fh.seek(start)
            offset = start
            for line in fh:
                here, offset = offset, offset + len(line)
                if not line.endswith(b"\n") or str(here) in hidden:
                    continue  # a line still being written, or replayed already
                try:
                    yield FailureEntry.from_json(line, id=str(here))
                except (ValueError, TypeError) as exc:
                    log.warning("line at offset %d of %s is not a dead-letter entry: %s", here, self.path, exc)

    def list(self, limit: int = 100, start_id: str | None = None) -> list[FailureEntry]:
        """Up to ``limit`` entries not replayed yet, in file order, from offset ``start_id`` (inclusive)."""
        out: list[FailureEntry] = []
        for entry in self._scan(self._offset(start_id)):
            if len(out) >= limit:
                break
            out.append(entry)
        return out

    def iter_entries(self, batch: int = 100) -> Iterator[FailureEntry]:
        return self._scan(0)

    def get(self, ids: Iterable[str]) -> dict[str, FailureEntry]:
        found: dict[str, FailureEntry] = {}
        for entry_id in ids:
            offset = self._offset(entry_id)
            for entry in self._scan(offset):
                if entry.id == entry_id:
                    found[entry_id] = entry
                break
        return found

    @staticmethod
    def _offset(entry_id: str | None) -> int:
        if not entry_id:
            return 0
        if not entry_id.isdigit():
            raise ConfigError("id", f"{entry_id!r} is not an entry id of a file destination",
                              "use the id shown by shardlease dlq list (a byte offset)")
        return int(entry_id)

    def delete(self, ids: Iterable[str]) -> int:
        """Mark these entries replayed (appends their ids to ``<path>.replayed``); the file is not rewritten."""
        ids = [str(i) for i in ids]
        if ids:
            self._append(self.replayed_path, "".join(f"{i}\n" for i in ids).encode(), self.fsync)
        return len(ids)

    def count(self) -> int:
        return sum(1 for _ in self._scan(0))

    def close(self) -> None:
        return None


class NoDestination:
    """``--on-failure none``: the entry's metadata (never the records' images) is logged at ERROR; returns ""."""

    def describe(self) -> str:
        return "nowhere (logged only)"

    def send(self, entry: FailureEntry) -> str:
        log.error(
            "dropping %d records of shard %s (%s .. %s) after %d attempts: %s: %s: %s [no on-failure destination]",
            entry.record_count, entry.shard_id, entry.first_sequence_number, entry.last_sequence_number,
            entry.attempts, entry.reason, entry.error_type, entry.error,
            extra={"dead_letter": entry.metadata()},
        )
        return ""

    def close(self) -> None:
        return None


def open_destination(
    spec: str,
    *,
    redis_client: Any,
    group: str,
    region: str | None = None,
    endpoint_url: str | None = None,
    session: Any = None,
    redis_maxlen: int = DEFAULT_REDIS_MAXLEN,
) -> Destination:
    """The destination an ``--on-failure`` value names: ``redis`` | ``none`` | ``sqs:<queue>`` | ``file:<path>``.

    Nothing is contacted here (an SQS ARN is resolved on the first send).  A bad value raises a
    one-line ConfigError naming ``on_failure``.
    """
    from worker.config import parse_on_failure

    try:
        value = parse_on_failure(str(spec))
    except ValueError as exc:
        raise ConfigError(ON_FAILURE_SETTING, str(exc).rsplit("; ", 1)[0],
                          "use redis, none, sqs:<queue URL or ARN> or file:<path to a .jsonl file>") from exc
    if value == "redis":
        if redis_client is None:
            raise ConfigError(ON_FAILURE_SETTING, "redis needs the group's Redis", "give --redis-url")
        return RedisStreamDestination(redis_client, group, maxlen=redis_maxlen)
    if value == "none":
        return NoDestination()
    kind, _, target = value.partition(":")
    if kind == "sqs":
        return SqsDestination(target, session=session, region=region, endpoint_url=endpoint_url)
    if kind == "file":
        return JsonLinesDestination(os.path.expanduser(target))
    raise ConfigError(ON_FAILURE_SETTING, f"{spec!r} is not a destination",  # pragma: no cover - parse checks
                      "use redis, none, sqs:<queue URL or ARN> or file:<path>")
