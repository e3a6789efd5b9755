"""The table side of the snapshot: DescribeTable facts, consistent Scan pages, items as Records.

A page is read with ``ConsistentRead=True`` (docs/snapshot.md: an eventually consistent page could be
older than a stream record already applied) and ``ReturnConsumedCapacity=TOTAL`` (the fleet's read-unit
bucket is debited with it).  Items are decoded by the same unmarshaller as stream records
(:func:`worker.reading.records.from_typed_item`), so a snapshot item's ``new_image`` equals the
``new_image`` of a stream INSERT of the same item.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import boto3
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from leaser.errors import ConfigError, RetryableError
from leaser.snapshot import MAX_SEGMENTS
from worker.reading.records import Record, from_typed_item

PAGE_ITEMS = 1000
"""Items per Scan page at most (DynamoDB also ends a page at 1 MB): a killed worker repeats at most this many."""
BYTES_PER_SEGMENT = 256 * 1024 * 1024
"""The default segment count gives each segment about this many bytes of the table (TableSizeBytes)."""
MAX_DEFAULT_SEGMENTS = 1000
THROTTLE_CODES = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException",
                            "RequestLimitExceeded"})
DENIED_CODES = frozenset({"AccessDeniedException", "UnrecognizedClientException"})
UPSERT_VIEW_TYPES = ("NEW_IMAGE", "NEW_AND_OLD_IMAGES")


class ScanThrottled(RetryableError):
    """Scan was throttled: back off and read the same page again."""


class ScanFailed(RetryableError):
    """Scan failed in a way worth retrying (a server error, a timeout, a dropped connection)."""


@dataclass(frozen=True, slots=True)
class TableFacts:
    name: str
    key_names: tuple[str, ...]
    size_bytes: int
    item_count: int
    stream_enabled: bool
    view_type: str


@dataclass(frozen=True, slots=True)
class ScanPage:
    items: list[dict[str, Any]]
    """Items as botocore parsed them (typed JSON; ``B`` values are bytes)."""
    next_key: dict[str, Any] | None
    """``LastEvaluatedKey``: None at the segment's end."""
    consumed_units: float
    read_at: datetime


def table_of_stream_arn(arn: str) -> str:
    """``arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/LABEL`` -> NAME."""
    try:
        return arn.split(":table/", 1)[1].split("/stream/", 1)[0]
    except IndexError:
        raise ConfigError("stream_arn", f"{arn} names no table", "pass --table NAME with --snapshot") from None


def default_segments(size_bytes: int) -> int:
    """One segment per BYTES_PER_SEGMENT of the table, at least 4 (so a small fleet shares even a small
    table), at most MAX_DEFAULT_SEGMENTS."""
    return max(4, min(MAX_DEFAULT_SEGMENTS, math.ceil(size_bytes / BYTES_PER_SEGMENT)))


def encode_key(key: dict[str, Any] | None) -> str:
    """A LastEvaluatedKey as the checkpoint text ('' = none); ``B`` bytes become base64."""
    if key is None:
        return ""
    return orjson.dumps(_wire(key), option=orjson.OPT_SORT_KEYS).decode()


def decode_key(text: str) -> dict[str, Any] | None:
    """The ExclusiveStartKey of a checkpoint text (botocore wants ``B`` as bytes)."""
    if not text:
        return None
    return {name: _from_wire_value(value) for name, value in orjson.loads(text).items()}


def _wire(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [_wire(v) for v in value]
    return value


def _from_wire_value(typed: dict[str, Any]) -> dict[str, Any]:
    tag, v = next(iter(typed.items()))
    if tag == "B":
        return {"B": base64.b64decode(v)}
    return {tag: v}


class TableReader:
    """Scan pages of one table (thread-safe: boto3 clients are)."""

    def __init__(self, table: str, *, region: str | None, endpoint_url: str | None, stream_arn: str) -> None:
        self.table = table
        self.stream_arn = stream_arn
        self.region = region or (stream_arn.split(":")[3] if stream_arn.count(":") >= 5 else None)
        config = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=5, read_timeout=30,
                        max_pool_connections=16)
        self._client: Any = boto3.session.Session().client("dynamodb", region_name=region, endpoint_url=endpoint_url,
                                                           config=config)

    def facts(self) -> TableFacts:
        try:
            t = self._client.describe_table(TableName=self.table)["Table"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "ResourceNotFoundException":
                raise ConfigError("table (--table / SHARDLEASE_TABLE)", f"table {self.table!r} not found",
                                  "check the table name, region and account") from None
            if code in DENIED_CODES:
                raise ConfigError("snapshot (--snapshot / SHARDLEASE_SNAPSHOT)",
                                  f"DescribeTable on table {self.table!r} is denied ({code})",
                                  "grant dynamodb:DescribeTable on the table (README: IAM policy)") from None
            raise
        spec = t.get("StreamSpecification") or {}
        return TableFacts(
            name=self.table,
            key_names=tuple(k["AttributeName"] for k in t.get("KeySchema") or ()),
            size_bytes=int(t.get("TableSizeBytes") or 0),
            item_count=int(t.get("ItemCount") or 0),
            stream_enabled=bool(spec.get("StreamEnabled", False)),
            view_type=str(spec.get("StreamViewType") or ""),
        )

    def check(self, segments: int) -> TableFacts:
        """Refuse what the snapshot cannot promise (one-line ConfigErrors): no stream, a view type without
        new images, a segment count out of range, no dynamodb:Scan permission."""
        facts = self.facts()
        if not facts.stream_enabled:
            raise ConfigError("snapshot (--snapshot / SHARDLEASE_SNAPSHOT)", f"table {self.table!r} has no enabled "
                              "stream", "enable its stream with StreamViewType NEW_IMAGE or NEW_AND_OLD_IMAGES")
        if facts.view_type not in UPSERT_VIEW_TYPES:
            raise ConfigError("snapshot (--snapshot / SHARDLEASE_SNAPSHOT)",
                              f"the stream's view type {facts.view_type} carries no new images, so a sink cannot "
                              "follow the snapshot with the stream (docs/snapshot.md)",
                              "use a stream with StreamViewType NEW_IMAGE or NEW_AND_OLD_IMAGES")
        if not 0 <= segments <= MAX_SEGMENTS:
            raise ConfigError("snapshot_segments (--snapshot-segments / SHARDLEASE_SNAPSHOT_SEGMENTS)",
                              f"{segments} is out of range", f"give 1..{MAX_SEGMENTS}, or 0 to size it by the table")
        try:
            self._client.scan(TableName=self.table, Limit=1, ConsistentRead=True, Segment=0, TotalSegments=1)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in DENIED_CODES:
                raise ConfigError("snapshot (--snapshot / SHARDLEASE_SNAPSHOT)",
                                  f"Scan on table {self.table!r} is denied ({code})",
                                  "grant dynamodb:Scan on the table (README: IAM policy)") from None
            if code not in THROTTLE_CODES:
                raise
        return facts

    def page(self, segment: int, total: int, start: dict[str, Any] | None) -> ScanPage:
        kwargs: dict[str, Any] = {"TableName": self.table, "Segment": segment, "TotalSegments": total,
                                  "ConsistentRead": True, "ReturnConsumedCapacity": "TOTAL", "Limit": PAGE_ITEMS}
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        read_at = datetime.now(UTC)
        try:
            answer = self._client.scan(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in THROTTLE_CODES:
                raise ScanThrottled(f"Scan throttled: {code}") from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400)
            if status >= 500 or code in ("InternalServerError", "ServiceUnavailable"):
                raise ScanFailed(f"Scan failed: {code}") from None
            raise
        except BotoCoreError as exc:
            raise ScanFailed(f"Scan failed: {type(exc).__name__}: {exc}") from None
        consumed = float((answer.get("ConsumedCapacity") or {}).get("CapacityUnits") or 0.0)
        return ScanPage(answer.get("Items") or [], answer.get("LastEvaluatedKey"), consumed, read_at)

    def close(self) -> None:
        self._client.close()


def snapshot_records(page: ScanPage, key_names: tuple[str, ...], segment_label: str, view_type: str,
                     region: str, read_id: int = 0) -> list[Record]:
    """The page's items as Records: INSERT, keys and new image in plain values, ``is_snapshot`` True,
    ``raw`` a stream-shaped wire record with ``"shardlease": {"snapshot": true, "segment": ...}``.

    ``event_id`` is ``snapshot-<read_id>-<hash of the keys>``: ``read_id`` (the page's ticket) is new for every
    read of a page, so a sink that skips event ids it has seen (Powertools' idempotency) does not skip a
    ``--restart`` re-sync or a page read again with newer items."""
    when = page.read_at
    epoch = int(when.timestamp())
    shard = f"snapshot:{segment_label}"
    out: list[Record] = []
    for item in page.items:
        keys_typed = {name: item[name] for name in key_names if name in item}
        size = len(orjson.dumps(_wire(item)))
        key_hash = hashlib.md5(orjson.dumps(_wire(keys_typed), option=orjson.OPT_SORT_KEYS)).hexdigest()
        event_id = f"{read_id}-{key_hash}"
        raw: dict[str, Any] = {
            "eventID": f"snapshot-{event_id}",
            "eventName": "INSERT",
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": region,
            "dynamodb": {"ApproximateCreationDateTime": epoch, "Keys": keys_typed, "NewImage": item,
                         "SequenceNumber": "0", "SizeBytes": size, "StreamViewType": view_type},
            "shardlease": {"snapshot": True, "segment": segment_label},
        }
        out.append(Record(f"snapshot-{event_id}", "INSERT", "0", from_typed_item(keys_typed), from_typed_item(item),
                          None, when, size, view_type, None, shard, raw, True))
    return out


def page_bytes(records: list[Record]) -> int:
    return sum(r.size_bytes for r in records)
