"""In-memory model of DynamoDB tables and their streams, with real shard lineage.

Everything here is guarded by one lock (:attr:`StreamsModel.lock`), so the model can be driven by
tests and served to many concurrent HTTP clients at once.

Units: times are seconds (``*_s``) as floats; epoch values are Unix seconds.

Records are serialized to their wire JSON once, at write time, and a ``GetRecords`` page is built by
joining those bytes: serving a page costs a bisect and a ``b",".join``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import random
import threading
import time
import uuid
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

HASH_MAX = (1 << 128) - 1
VIEW_TYPES = ("KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES")
STREAM_STATUSES = ("ENABLING", "ENABLED", "DISABLING", "DISABLED")
ITERATOR_TYPES = ("TRIM_HORIZON", "LATEST", "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER")
TYPE_TAGS = frozenset({"S", "N", "B", "SS", "NS", "BS", "M", "L", "NULL", "BOOL"})
MAX_PAGE_RECORDS = 1000
MAX_PAGE_BYTES = 1024 * 1024
MAX_DESCRIBE_LIMIT = 100
TTL_IDENTITY = {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}  # wire names (botocore Identity)
DEFAULT_FIRST_SEQUENCE_NUMBER = 100000000000000000001

AttributeMap = dict[str, Any]
"""An item or key in DynamoDB typed JSON, e.g. ``{"pk": {"S": "a"}, "n": {"N": "1"}}``."""


class StreamsApiError(Exception):
    """An error returned on the wire as ``{"__type": "com.amazonaws.dynamodb.v20120810#<code>", ...}``."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def wire_body(self) -> bytes:
        return orjson.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{self.code}", "message": self.message})


def _validation(message: str) -> StreamsApiError:
    return StreamsApiError("ValidationException", message)


def _not_found(message: str) -> StreamsApiError:
    return StreamsApiError("ResourceNotFoundException", message)


@dataclass
class Faults:
    """Fault injection and timing knobs. Change them with :meth:`StreamsModel.set_faults`.

    - ``iterator_ttl_s``: age after which a shard iterator raises ExpiredIteratorException (AWS: 900 s).
    - ``empty_page_probability``: chance (0..1) that a GetRecords call with records available returns
      an empty page (with a NextShardIterator at the same position). 0 disables.
    - ``internal_error_rate``: chance (0..1) that any Streams or DescribeTable call fails with
      InternalServerError (HTTP 500).
    - ``latency_s``: added delay per API call, in seconds (slept outside the lock).
    - ``get_records_per_shard_per_s``: at most this many GetRecords calls per shard per 1 s window,
      else LimitExceededException. ``None`` disables.
    - ``describe_stream_per_s``: at most this many DescribeStream calls per 1 s window (AWS: 10 per
      account and region), else LimitExceededException. ``None`` disables.
    - ``parent_end_delay_s``: after a shard closes, DescribeStream keeps listing it as open (no
      EndingSequenceNumber) for this many seconds while its children are already listed.
    - ``scan_units_per_s``: at most this many read units consumed by Scan per table per 1 s window,
      else ProvisionedThroughputExceededException (the page that crosses the limit is still served).
      ``None`` disables.
    """

    iterator_ttl_s: float = 900.0
    empty_page_probability: float = 0.05
    internal_error_rate: float = 0.0
    latency_s: float = 0.0
    get_records_per_shard_per_s: float | None = None
    describe_stream_per_s: float | None = None
    parent_end_delay_s: float = 0.0
    scan_units_per_s: float | None = None


class Shard:
    """One shard: a hash-key range, a sequence-number range and its records (wire JSON bytes)."""

    __slots__ = (
        "closed_at",
        "created_at",
        "ending_seq",
        "gone",
        "hash_hi",
        "hash_lo",
        "parent_id",
        "payloads",
        "seqs",
        "shard_id",
        "starting_seq",
        "throttle_count",
        "throttle_window",
        "times",
        "trimmed_upto",
    )

    def __init__(
        self, shard_id: str, parent_id: str | None, hash_lo: int, hash_hi: int, starting_seq: int, now: float
    ) -> None:
        self.shard_id = shard_id
        self.parent_id = parent_id
        self.hash_lo = hash_lo
        self.hash_hi = hash_hi
        self.starting_seq = starting_seq
        self.ending_seq: int | None = None
        self.created_at = now
        self.closed_at: float | None = None
        self.seqs: list[int] = []
        self.payloads: list[bytes] = []
        self.times: list[float] = []
        self.trimmed_upto = 0  # highest sequence number trimmed from this shard (0: none)
        self.gone = False  # trimmed away entirely: no longer listed or readable
        self.throttle_window = 0.0
        self.throttle_count = 0

    @property
    def is_open(self) -> bool:
        return self.ending_seq is None

    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else self.starting_seq


class Stream:
    """One stream of a table (a new one each time the stream is enabled)."""

    def __init__(self, arn: str, label: str, table: LocalTable, view_type: str, created_at: float) -> None:
        self.arn = arn
        self.label = label
        self.table = table
        self.view_type = view_type
        self.created_at = created_at
        self.status = "ENABLED"
        self.shards: dict[str, Shard] = {}
        self.shard_ids: list[str] = []  # sorted; ids embed a strictly increasing creation time
        self.last_shard_ms = 0
        self.describe_window = 0.0
        self.describe_count = 0

    def open_shards(self) -> list[Shard]:
        return [s for s in self.shards.values() if s.is_open]

    def route(self, key_hash: int) -> Shard | None:
        for shard in self.shards.values():
            if shard.is_open and shard.hash_lo <= key_hash <= shard.hash_hi:
                return shard
        return None


def key_hash(value: Any) -> int:
    """Stable 128-bit hash of a partition-key value in typed JSON (md5 of its canonical JSON)."""
    return int.from_bytes(hashlib.md5(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).digest(), "big")


def is_typed(item: Mapping[str, Any]) -> bool:
    """True if every value of ``item`` looks like DynamoDB typed JSON (``{"S": "x"}``)."""
    return all(isinstance(v, Mapping) and len(v) == 1 and next(iter(v)) in TYPE_TAGS for v in item.values())


def to_typed(item: Mapping[str, Any], typed: bool | None = None) -> AttributeMap:
    """Return ``item`` in typed JSON; plain Python values go through boto3's TypeSerializer.

    ``typed=None`` detects the form; pass ``typed=False`` to force serialization of plain values.
    """
    if typed is None:
        typed = is_typed(item)
    if typed:
        return {k: dict(v) for k, v in item.items()}
    from boto3.dynamodb.types import TypeSerializer

    serializer = TypeSerializer()
    out: AttributeMap = {}
    for k, v in item.items():
        wire = serializer.serialize(_floats_to_decimal(v))
        out[k] = _wire_safe(wire)
    return out


def _floats_to_decimal(value: Any) -> Any:
    """TypeSerializer rejects floats; accept them by going through their shortest decimal string."""
    if isinstance(value, float):
        return Decimal(repr(value))
    if isinstance(value, Mapping):
        return {k: _floats_to_decimal(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_floats_to_decimal(v) for v in value]
    if isinstance(value, set | frozenset):
        return {_floats_to_decimal(v) for v in value}
    return value


def _wire_safe(value: Any) -> Any:
    """Make TypeSerializer output JSON-ready: bytes become base64 strings."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {k: _wire_safe(v) for k, v in value.items()}
    if isinstance(value, list | set | tuple):
        return [_wire_safe(v) for v in value]
    if hasattr(value, "value") and type(value).__name__ == "Binary":
        return base64.b64encode(bytes(value.value)).decode()
    return value


class LocalTable:
    """A table: its key schema, current items (so MODIFY/REMOVE can carry OldImage) and its streams.

    Write through :meth:`put_item`, :meth:`update_item` and :meth:`delete_item`; each returns the
    sequence number (decimal string) of the stream record it produced, or ``None`` if the stream is
    disabled or the write changed nothing that a stream would record.
    """

    def __init__(
        self,
        model: StreamsModel,
        name: str,
        key_schema: Sequence[tuple[str, str]],
        view_type: str,
        initial_shards: int,
        created_at: float,
    ) -> None:
        self.model = model
        self.name = name
        self.key_schema = list(key_schema)  # [(attribute name, "S" | "N" | "B"), ...]; first is HASH
        self.view_type = view_type
        self.initial_shards = initial_shards
        self.created_at = created_at
        self.items: dict[bytes, AttributeMap] = {}
        self.streams: list[Stream] = []
        self.stream_enabled = False
        self.scan_window = 0.0
        self.scan_units = 0.0
        self.version = 0  # bumped on every write: invalidates _scan_index
        self._scan_index: dict[int, tuple[int, list[list[bytes]]]] = {}
        """TotalSegments -> (version, each segment's item idents in key order)."""

    def scan_order(self, total: int) -> list[list[bytes]]:
        """Each of ``total`` segments' item idents in scan order (call under the model's lock)."""
        cached = self._scan_index.get(total)
        if cached is not None and cached[0] == self.version:
            return cached[1]
        pk = self.partition_key
        segments: list[list[bytes]] = [[] for _ in range(total)]
        for ident, item in self.items.items():
            segments[key_hash(item[pk]) * total >> 128].append(ident)
        for idents in segments:
            idents.sort()
        self._scan_index = {total: (self.version, segments)}
        return segments

    # -- identity -----------------------------------------------------------------------------
    @property
    def partition_key(self) -> str:
        return self.key_schema[0][0]

    @property
    def stream(self) -> Stream:
        """The latest stream (stays the latest while disabled, as ``LatestStreamArn`` does)."""
        if not self.streams:
            raise LookupError(f"table {self.name} never had a stream")
        return self.streams[-1]

    @property
    def stream_arn(self) -> str:
        """ARN of the latest stream."""
        return self.stream.arn

    def key_schema_wire(self) -> list[dict[str, str]]:
        return [
            {"AttributeName": name, "KeyType": "HASH" if i == 0 else "RANGE"}
            for i, (name, _t) in enumerate(self.key_schema)
        ]

    def keys_of(self, item: Mapping[str, Any]) -> AttributeMap:
        try:
            return {name: dict(item[name]) for name, _t in self.key_schema}
        except KeyError as exc:
            raise ValueError(f"item lacks key attribute {exc.args[0]!r} of table {self.name}") from None

    # -- writes -------------------------------------------------------------------------------
    def put_item(self, item: Mapping[str, Any], *, typed: bool | None = None) -> str | None:
        """Write a whole item: INSERT if no item with its keys exists, else MODIFY."""
        typed_item = to_typed(item, typed)
        with self.model.lock:
            return self._write(self.keys_of(typed_item), typed_item, ttl=False)

    def update_item(
        self, key: Mapping[str, Any], changes: Mapping[str, Any], *, typed: bool | None = None
    ) -> str | None:
        """Set attributes ``changes`` on the item with ``key`` (created if absent): INSERT or MODIFY.

        A change whose value is ``None`` (plain form) or ``{"NULL": True}`` is stored as NULL, not removed.
        """
        typed_key = self.keys_of(to_typed(key, typed))
        typed_changes = to_typed(changes, typed)
        with self.model.lock:
            old = self.items.get(self._ident(typed_key))
            new = dict(old) if old else dict(typed_key)
            new.update(typed_changes)
            return self._write(typed_key, new, ttl=False)

    def delete_item(self, key: Mapping[str, Any], *, ttl: bool = False, typed: bool | None = None) -> str | None:
        """Delete the item with ``key``: REMOVE (nothing if absent). ``ttl=True`` marks a TTL deletion
        (``userIdentity {Type: Service, PrincipalId: dynamodb.amazonaws.com}``, the wire names;
        Lambda events spell them ``type``/``principalId``)."""
        typed_key = self.keys_of(to_typed(key, typed))
        with self.model.lock:
            return self._write(typed_key, None, ttl=ttl)

    def get_item(self, key: Mapping[str, Any], *, typed: bool | None = None) -> AttributeMap | None:
        typed_key = self.keys_of(to_typed(key, typed))
        with self.model.lock:
            item = self.items.get(self._ident(typed_key))
            return dict(item) if item is not None else None

    @staticmethod
    def _ident(keys: AttributeMap) -> bytes:
        return orjson.dumps(keys, option=orjson.OPT_SORT_KEYS)

    def _write(self, keys: AttributeMap, new: AttributeMap | None, *, ttl: bool) -> str | None:
        self.version += 1
        ident = self._ident(keys)
        old = self.items.get(ident)
        if new is None:
            if old is None:
                return None
            del self.items[ident]
            event = "REMOVE"
        else:
            self.items[ident] = new
            event = "INSERT" if old is None else "MODIFY"
        if not self.stream_enabled:
            return None
        return self.model._append_record(self, keys, event, old, new, ttl)


class StreamsModel:
    """All tables and streams of one local endpoint, plus topology control and fault injection.

    ``first_sequence_number`` sets the first sequence number handed out (default 21 digits; botocore
    rejects sequence numbers shorter than 21 or longer than 40 digits, so it must be at least 10**20:
    pass e.g. ``999999999999999999990`` to cross from 21 to 22 digits). ``seed`` seeds the RNG used for empty pages
    and injected errors. ``region``/``account`` appear in ARNs and records.
    """

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        account: str = "123456789012",
        first_sequence_number: int = DEFAULT_FIRST_SEQUENCE_NUMBER,
        seed: int | None = 0,
        faults: Faults | None = None,
        **fault_options: Any,
    ) -> None:
        if not 10**20 <= first_sequence_number < 10**39:
            raise ValueError("first_sequence_number must have 21 to 39 digits (botocore checks 21..40)")
        self.lock = threading.RLock()
        self.region = region
        self.account = account
        self.next_seq = first_sequence_number
        self.rng = random.Random(seed)
        self.faults = replace(faults or Faults(), **fault_options)
        self.tables: dict[str, LocalTable] = {}
        self.streams: dict[str, Stream] = {}
        self.stream_order: list[str] = []
        self._last_label_ms = 0
        self._iterator_secret = uuid.uuid4().hex[:8]

    # -- configuration ------------------------------------------------------------------------
    def set_faults(self, **options: Any) -> Faults:
        """Change fault knobs (see :class:`Faults`), e.g. ``set_faults(empty_page_probability=1.0)``."""
        names = {f.name for f in fields(Faults)}
        unknown = set(options) - names
        if unknown:
            raise TypeError(f"unknown fault options: {sorted(unknown)}")
        with self.lock:
            self.faults = replace(self.faults, **options)
            return self.faults

    def seed(self, seed: int | None) -> None:
        with self.lock:
            self.rng.seed(seed)

    # -- tables and streams -------------------------------------------------------------------
    def create_table(
        self,
        name: str,
        key_schema: Sequence[tuple[str, str]] | Sequence[str] = (("pk", "S"),),
        *,
        view_type: str = "NEW_AND_OLD_IMAGES",
        shards: int = 1,
        stream_enabled: bool = True,
    ) -> LocalTable:
        """Create a table whose stream starts with ``shards`` open shards splitting the hash range evenly.

        ``key_schema``: ``[("pk", "S"), ("sk", "S")]`` (partition key first) or just names (type S).
        """
        if view_type not in VIEW_TYPES:
            raise ValueError(f"view_type must be one of {VIEW_TYPES}")
        if shards < 1:
            raise ValueError("shards must be >= 1")
        schema = [(k, "S") if isinstance(k, str) else (k[0], k[1]) for k in key_schema]
        if not 1 <= len(schema) <= 2:
            raise ValueError("key_schema needs a partition key and at most a sort key")
        with self.lock:
            if name in self.tables:
                raise ValueError(f"table {name} already exists")
            table = LocalTable(self, name, schema, view_type, shards, time.time())
            self.tables[name] = table
            if stream_enabled:
                self._new_stream(table)
            return table

    def table(self, name: str) -> LocalTable:
        with self.lock:
            try:
                return self.tables[name]
            except KeyError:
                raise _not_found(f"Requested resource not found: Table: {name} not found") from None

    def stream(self, arn: str) -> Stream:
        with self.lock:
            return self._stream(arn)

    def _stream(self, arn: str) -> Stream:
        try:
            return self.streams[arn]
        except KeyError:
            raise _not_found(f"Requested resource not found: Stream: {arn} not found") from None

    def _shard(self, stream: Stream, shard_id: str) -> Shard:
        shard = stream.shards.get(shard_id)
        if shard is None or shard.gone:
            raise _not_found(f"Requested resource not found: Shard: {shard_id} in Stream: {stream.arn} not found")
        return shard

    def _new_stream(self, table: LocalTable) -> Stream:
        now = time.time()
        ms = max(int(now * 1000), self._last_label_ms + 1)
        self._last_label_ms = ms
        label = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        arn = f"arn:aws:dynamodb:{self.region}:{self.account}:table/{table.name}/stream/{label}"
        stream = Stream(arn, label, table, table.view_type, now)
        n = table.initial_shards
        width = (HASH_MAX + 1) // n
        for i in range(n):
            lo = i * width
            hi = HASH_MAX if i == n - 1 else (i + 1) * width - 1
            self._add_shard(stream, None, lo, hi, now)
        self.streams[arn] = stream
        self.stream_order.append(arn)
        table.streams.append(stream)
        table.stream_enabled = True
        return stream

    def _add_shard(self, stream: Stream, parent_id: str | None, lo: int, hi: int, now: float) -> Shard:
        ms = max(int(now * 1000), stream.last_shard_ms + 1)
        stream.last_shard_ms = ms
        shard_id = f"shardId-{ms:020d}-{uuid.uuid4().hex[:8]}"
        start = self.next_seq
        self.next_seq += 1  # a shard's start is a number no record takes: ranges never overlap
        shard = Shard(shard_id, parent_id, lo, hi, start, now)
        stream.shards[shard_id] = shard
        stream.shard_ids.append(shard_id)
        return shard

    def _close(self, shard: Shard, now: float) -> None:
        if shard.is_open:
            shard.ending_seq = shard.last_seq()
            shard.closed_at = now

    # -- topology -----------------------------------------------------------------------------
    def _resolve(self, stream: str | LocalTable | None, table: str | None = None) -> Stream:
        if isinstance(stream, LocalTable):
            return stream.stream
        if stream is not None:
            return self._stream(stream)
        if table is not None:
            return self.table(table).stream
        raise ValueError("pass a stream ARN or a table")

    def split_shard(self, stream: str | LocalTable, shard_id: str) -> tuple[str, str]:
        """Close open shard ``shard_id`` and create two children, each with half its hash range."""
        with self.lock:
            s = self._resolve(stream)
            parent = self._shard(s, shard_id)
            if not parent.is_open:
                raise ValueError(f"shard {shard_id} is closed")
            if parent.hash_hi <= parent.hash_lo:
                raise ValueError(f"shard {shard_id} has a single hash key: cannot split")
            now = time.time()
            self._close(parent, now)
            mid = parent.hash_lo + (parent.hash_hi - parent.hash_lo) // 2
            a = self._add_shard(s, parent.shard_id, parent.hash_lo, mid, now)
            b = self._add_shard(s, parent.shard_id, mid + 1, parent.hash_hi, now)
            return a.shard_id, b.shard_id

    def rollover_shard(self, stream: str | LocalTable, shard_id: str) -> str:
        """Close open shard ``shard_id`` and create one child with its whole hash range."""
        with self.lock:
            s = self._resolve(stream)
            parent = self._shard(s, shard_id)
            if not parent.is_open:
                raise ValueError(f"shard {shard_id} is closed")
            now = time.time()
            self._close(parent, now)
            return self._add_shard(s, parent.shard_id, parent.hash_lo, parent.hash_hi, now).shard_id

    def rollover_all(self, stream: str | LocalTable) -> dict[str, str]:
        """Roll over every open shard; returns ``{parent id: child id}``."""
        with self.lock:
            s = self._resolve(stream)
            return {sh.shard_id: self.rollover_shard(s.arn, sh.shard_id) for sh in s.open_shards()}

    def split_all(self, stream: str | LocalTable) -> dict[str, tuple[str, str]]:
        """Split every open shard; returns ``{parent id: (child id, child id)}``."""
        with self.lock:
            s = self._resolve(stream)
            return {sh.shard_id: self.split_shard(s.arn, sh.shard_id) for sh in s.open_shards()}

    def disable_stream(self, table: str | LocalTable) -> str:
        """Disable the table's stream: status DISABLED, open shards closed. Returns its ARN."""
        with self.lock:
            t = table if isinstance(table, LocalTable) else self.table(table)
            s = t.stream
            now = time.time()
            for shard in s.open_shards():
                self._close(shard, now)
            s.status = "DISABLED"
            t.stream_enabled = False
            return s.arn

    def enable_stream(self, table: str | LocalTable, view_type: str | None = None) -> str:
        """Enable a new stream (new ARN, ``initial_shards`` fresh shards) on a table whose stream is off."""
        with self.lock:
            t = table if isinstance(table, LocalTable) else self.table(table)
            if t.stream_enabled:
                raise ValueError(f"table {t.name} already has an enabled stream")
            if view_type is not None:
                if view_type not in VIEW_TYPES:
                    raise ValueError(f"view_type must be one of {VIEW_TYPES}")
                t.view_type = view_type
            return self._new_stream(t).arn

    def set_stream_status(self, stream: str | LocalTable, status: str) -> None:
        """Force the reported StreamStatus (e.g. ENABLING or DISABLING) without other effects."""
        if status not in STREAM_STATUSES:
            raise ValueError(f"status must be one of {STREAM_STATUSES}")
        with self.lock:
            self._resolve(stream).status = status

    def trim(self, stream: str | LocalTable | None = None, *, before: float | None = None) -> int:
        """Trim records written before epoch time ``before`` (default: now, i.e. everything).

        Trimmed positions raise TrimmedDataAccessException. A closed shard created before ``before``
        with no records left disappears from listings (as after 24 h). ``stream=None`` trims all
        streams. Returns the number of records removed.
        """
        horizon = time.time() if before is None else before
        removed = 0
        with self.lock:
            targets = [self._resolve(stream)] if stream is not None else list(self.streams.values())
            for s in targets:
                for shard in s.shards.values():
                    n = bisect_left(shard.times, horizon)
                    if n:
                        shard.trimmed_upto = max(shard.trimmed_upto, shard.seqs[n - 1])
                        del shard.seqs[:n], shard.payloads[:n], shard.times[:n]
                        removed += n
                    if (
                        not shard.is_open
                        and not shard.seqs
                        and shard.closed_at is not None
                        and shard.closed_at < horizon
                    ):
                        shard.gone = True
        return removed

    def shard_ids(self, stream: str | LocalTable, *, open_only: bool = False) -> list[str]:
        """Listed shard ids of a stream in listing order (parents before children)."""
        with self.lock:
            s = self._resolve(stream)
            return [i for i in s.shard_ids if not s.shards[i].gone and (not open_only or s.shards[i].is_open)]

    def shard_for_key(self, stream: str | LocalTable, partition_key_value: Any) -> str:
        """Id of the open shard that a partition-key value (typed, e.g. ``{"S": "a"}``) routes to.

        A plain value (``"a"``) is refused: it hashes differently from the typed value an item's key has, so
        the answer would name some other shard."""
        if not (isinstance(partition_key_value, dict) and len(partition_key_value) == 1):
            raise TypeError(f"shard_for_key takes a typed partition-key value such as {{'S': 'a'}}, "
                            f"not {partition_key_value!r}")
        with self.lock:
            s = self._resolve(stream)
            shard = s.route(key_hash(partition_key_value))
            if shard is None:
                raise ValueError("no open shard (stream disabled?)")
            return shard.shard_id

    # -- records ------------------------------------------------------------------------------
    def _append_record(
        self,
        table: LocalTable,
        keys: AttributeMap,
        event: str,
        old: AttributeMap | None,
        new: AttributeMap | None,
        ttl: bool,
    ) -> str | None:
        s = table.stream
        shard = s.route(key_hash(keys[table.partition_key]))
        if shard is None:
            return None
        seq = self.next_seq
        self.next_seq += 1
        now = time.time()
        view = s.view_type
        ddb: dict[str, Any] = {"ApproximateCreationDateTime": int(now), "Keys": keys}
        if new is not None and view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES"):
            ddb["NewImage"] = new
        if old is not None and view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES"):
            ddb["OldImage"] = old
        ddb["SequenceNumber"] = str(seq)
        size = (
            len(orjson.dumps(keys))
            + len(orjson.dumps(ddb.get("NewImage") or {}))
            + len(orjson.dumps(ddb.get("OldImage") or {}))
        )
        ddb["SizeBytes"] = size
        ddb["StreamViewType"] = view
        record: dict[str, Any] = {
            "eventID": uuid.uuid4().hex,
            "eventName": event,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": self.region,
            "dynamodb": ddb,
        }
        if ttl:
            record["userIdentity"] = dict(TTL_IDENTITY)
        shard.seqs.append(seq)
        shard.payloads.append(orjson.dumps(record))
        shard.times.append(now)
        return str(seq)

    # -- iterators ----------------------------------------------------------------------------
    def _encode_iterator(self, arn: str, shard_id: str, pos: int, issued: float) -> str:
        raw = f"{arn}|{shard_id}|{pos}|{issued:.6f}|{self._iterator_secret}".encode()
        return arn + "|1|" + base64.urlsafe_b64encode(raw).decode()

    def _decode_iterator(self, iterator: Any) -> tuple[str, str, int, float]:
        if not isinstance(iterator, str) or "|1|" not in iterator:
            raise _validation("Invalid ShardIterator")
        try:
            raw = base64.urlsafe_b64decode(iterator.rsplit("|1|", 1)[1].encode()).decode()
            arn, shard_id, pos, issued, secret = raw.rsplit("|", 4)
            if secret != self._iterator_secret:
                raise ValueError
            return arn, shard_id, int(pos), float(issued)
        except (ValueError, binascii.Error, UnicodeDecodeError):
            raise _validation("Invalid ShardIterator") from None

    # -- the wire API (params are the decoded JSON request; results are JSON-ready) -------------
    def maybe_fail(self) -> None:
        """Raise InternalServerError with probability ``faults.internal_error_rate``."""
        with self.lock:
            rate = self.faults.internal_error_rate
            if rate > 0 and self.rng.random() < rate:
                raise StreamsApiError("InternalServerError", "Internal server error (injected)", 500)

    def list_streams(self, params: Mapping[str, Any]) -> dict[str, Any]:
        limit = _limit(params.get("Limit"), 100, 100)
        table_name = params.get("TableName")
        start = params.get("ExclusiveStartStreamArn")
        with self.lock:
            if table_name is not None:
                self.table(table_name)
            arns = [a for a in self.stream_order if table_name is None or self.streams[a].table.name == table_name]
            if start is not None:
                if start not in self.streams:
                    raise _not_found(f"Requested resource not found: Stream: {start} not found")
                arns = arns[arns.index(start) + 1 :] if start in arns else []
            page = arns[:limit]
            out: dict[str, Any] = {
                "Streams": [
                    {
                        "StreamArn": a,
                        "TableName": self.streams[a].table.name,
                        "StreamLabel": self.streams[a].label,
                    }
                    for a in page
                ]
            }
            if len(arns) > limit:
                out["LastEvaluatedStreamArn"] = page[-1]
            return out

    def describe_stream(self, params: Mapping[str, Any]) -> dict[str, Any]:
        limit = _limit(params.get("Limit"), MAX_DESCRIBE_LIMIT, MAX_DESCRIBE_LIMIT)
        start = params.get("ExclusiveStartShardId")
        shard_filter = params.get("ShardFilter")
        parent_filter: str | None = None
        if shard_filter is not None:
            if not isinstance(shard_filter, Mapping) or shard_filter.get("Type") != "CHILD_SHARDS":
                raise _validation("ShardFilter.Type must be CHILD_SHARDS")
            parent_filter = shard_filter.get("ShardId")
            if not isinstance(parent_filter, str):
                raise _validation("ShardFilter.ShardId is required")
        with self.lock:
            s = self._stream(_required(params, "StreamArn"))
            now = time.time()
            rate = self.faults.describe_stream_per_s
            if rate is not None:
                if now - s.describe_window >= 1.0:
                    s.describe_window, s.describe_count = now, 0
                s.describe_count += 1
                if s.describe_count > rate:
                    raise StreamsApiError("LimitExceededException", "Rate exceeded for DescribeStream")
            ids = s.shard_ids
            i = bisect_right(ids, start) if isinstance(start, str) else 0
            delay = self.faults.parent_end_delay_s
            shards: list[dict[str, Any]] = []
            last: str | None = None
            more = False
            for shard_id in ids[i:]:
                shard = s.shards[shard_id]
                if shard.gone or (parent_filter is not None and shard.parent_id != parent_filter):
                    continue
                if len(shards) == limit:
                    more = True
                    break
                rng: dict[str, str] = {"StartingSequenceNumber": str(shard.starting_seq)}
                if shard.ending_seq is not None and (
                    delay <= 0 or shard.closed_at is None or now - shard.closed_at >= delay
                ):
                    rng["EndingSequenceNumber"] = str(shard.ending_seq)
                entry: dict[str, Any] = {"ShardId": shard_id, "SequenceNumberRange": rng}
                if shard.parent_id is not None:
                    entry["ParentShardId"] = shard.parent_id
                shards.append(entry)
                last = shard_id
            desc: dict[str, Any] = {
                "StreamArn": s.arn,
                "StreamLabel": s.label,
                "StreamStatus": s.status,
                "StreamViewType": s.view_type,
                "CreationRequestDateTime": s.created_at,
                "TableName": s.table.name,
                "KeySchema": s.table.key_schema_wire(),
                "Shards": shards,
            }
            if more and last is not None:
                desc["LastEvaluatedShardId"] = last
            return {"StreamDescription": desc}

    def get_shard_iterator(self, params: Mapping[str, Any]) -> dict[str, Any]:
        arn = _required(params, "StreamArn")
        shard_id = _required(params, "ShardId")
        kind = _required(params, "ShardIteratorType")
        if kind not in ITERATOR_TYPES:
            raise _validation(
                f"1 validation error detected: Value '{kind}' at 'shardIteratorType' failed to satisfy "
                f"constraint: Member must satisfy enum value set: {list(ITERATOR_TYPES)}"
            )
        seq_text = params.get("SequenceNumber")
        with self.lock:
            s = self._stream(arn)
            shard = self._shard(s, shard_id)
            if kind == "TRIM_HORIZON":
                pos = max(shard.starting_seq, shard.trimmed_upto + 1)
            elif kind == "LATEST":
                pos = shard.ending_seq + 1 if shard.ending_seq is not None else self.next_seq
            else:
                if not isinstance(seq_text, str) or not seq_text.isdigit():
                    raise _validation(f"SequenceNumber is required for {kind} and must be a decimal string")
                seq = int(seq_text)
                upper = shard.ending_seq if shard.ending_seq is not None else self.next_seq - 1
                if not shard.starting_seq <= seq <= upper:
                    raise _validation(
                        f"Invalid SequenceNumber {seq_text} for ShardIteratorType {kind}: "
                        f"the sequence number is not in the range of the shard {shard_id}"
                    )
                pos = seq if kind == "AT_SEQUENCE_NUMBER" else seq + 1
                if pos <= shard.trimmed_upto:
                    raise StreamsApiError(
                        "TrimmedDataAccessException",
                        f"Sequence number {seq_text} in shard {shard_id} is beyond the trim horizon",
                    )
            return {"ShardIterator": self._encode_iterator(arn, shard_id, pos, time.time())}

    def get_records(self, params: Mapping[str, Any]) -> bytes:
        """Return the GetRecords response body, built by joining pre-serialized record bytes."""
        limit = _limit(params.get("Limit"), MAX_PAGE_RECORDS, MAX_PAGE_RECORDS)
        arn, shard_id, pos, issued = self._decode_iterator(_required(params, "ShardIterator"))
        with self.lock:
            now = time.time()
            if now - issued > self.faults.iterator_ttl_s:
                raise StreamsApiError(
                    "ExpiredIteratorException",
                    "Iterator expired. The iterator was created at "
                    f"{issued:.3f} and is older than {self.faults.iterator_ttl_s} s",
                )
            s = self._stream(arn)
            shard = self._shard(s, shard_id)
            rate = self.faults.get_records_per_shard_per_s
            if rate is not None:
                if now - shard.throttle_window >= 1.0:
                    shard.throttle_window, shard.throttle_count = now, 0
                shard.throttle_count += 1
                if shard.throttle_count > rate:
                    raise StreamsApiError("LimitExceededException", f"Rate exceeded for shard {shard_id}")
            if pos <= shard.trimmed_upto:
                raise StreamsApiError(
                    "TrimmedDataAccessException",
                    f"The iterator position {pos} in shard {shard_id} is beyond the trim horizon",
                )
            i = bisect_left(shard.seqs, pos)
            n_avail = len(shard.seqs) - i
            p = self.faults.empty_page_probability
            if n_avail and p > 0 and self.rng.random() < p:
                page: list[bytes] = []
            else:
                page = shard.payloads[i : i + limit]
                total = 0
                for j, blob in enumerate(page):
                    total += len(blob) + 1
                    if total > MAX_PAGE_BYTES and j > 0:
                        page = page[:j]
                        break
            next_pos = shard.seqs[i + len(page) - 1] + 1 if page else pos
            finished = shard.ending_seq is not None and i + len(page) >= len(shard.seqs) and (page or not n_avail)
            next_iterator = None if finished else self._encode_iterator(arn, shard_id, next_pos, now)
        body = b'{"Records":[' + b",".join(page) + b"]"
        if next_iterator is not None:
            body += b',"NextShardIterator":"' + next_iterator.encode() + b'"'
        return body + b"}"

    def scan(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """DynamoDB Scan: ``Segment``/``TotalSegments`` (a segment is a range of the partition-key hash),
        ``ExclusiveStartKey``, ``Limit``, 1 MB pages, ``ConsistentRead`` (1 read unit per 4 KB, else 0.5),
        ``ReturnConsumedCapacity``; no filters or projections.  Within a segment items come in the order of
        their key's canonical JSON, so a page continues after its ``ExclusiveStartKey`` even when that item
        was deleted meanwhile."""
        limit = _limit(params.get("Limit"), 1 << 30, 1 << 30)
        total = params.get("TotalSegments")
        segment = params.get("Segment")
        if (total is None) != (segment is None):
            raise _validation("Segment and TotalSegments must be given together")
        if total is not None and not (
            isinstance(total, int) and isinstance(segment, int) and 1 <= total <= 1_000_000 and 0 <= segment < total
        ):
            raise _validation("TotalSegments must be 1..1000000 and Segment 0..TotalSegments-1")
        with self.lock:
            t = self.table(_required(params, "TableName"))
            now = time.time()
            rate = self.faults.scan_units_per_s
            if rate is not None:
                if now - t.scan_window >= 1.0:
                    t.scan_window, t.scan_units = now, 0.0
                if t.scan_units >= rate:
                    raise StreamsApiError("ProvisionedThroughputExceededException",
                                          "The level of configured provisioned throughput for the table was exceeded")
            idents = t.scan_order(total or 1)[segment or 0]
            start = params.get("ExclusiveStartKey")
            i = bisect_right(idents, t._ident(t.keys_of(start))) if start else 0
            page: list[AttributeMap] = []
            size = 0
            for ident in idents[i : i + limit]:
                item = t.items[ident]
                item_size = len(orjson.dumps(item))
                if page and size + item_size > MAX_PAGE_BYTES:
                    break
                page.append(dict(item))
                size += item_size
            more = i + len(page) < len(idents)
            per_4kb = 1.0 if params.get("ConsistentRead") else 0.5
            units = max(1, -(-size // 4096)) * per_4kb
            t.scan_units += units
            out: dict[str, Any] = {"Items": page, "Count": len(page), "ScannedCount": len(page)}
            if more and page:
                out["LastEvaluatedKey"] = t.keys_of(page[-1])
            if params.get("ReturnConsumedCapacity") in ("TOTAL", "INDEXES"):
                out["ConsumedCapacity"] = {"TableName": t.name, "CapacityUnits": units}
            return out

    def describe_table(self, params: Mapping[str, Any]) -> dict[str, Any]:
        with self.lock:
            t = self.table(_required(params, "TableName"))
            desc: dict[str, Any] = {
                "TableName": t.name,
                "TableStatus": "ACTIVE",
                "TableArn": f"arn:aws:dynamodb:{self.region}:{self.account}:table/{t.name}",
                "KeySchema": t.key_schema_wire(),
                "AttributeDefinitions": [{"AttributeName": n, "AttributeType": ty} for n, ty in t.key_schema],
                "CreationDateTime": t.created_at,
                "ItemCount": len(t.items),
                "TableSizeBytes": sum(len(orjson.dumps(item)) for item in t.items.values()),
                "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
            }
            if t.streams:
                desc["LatestStreamArn"] = t.stream.arn
                desc["LatestStreamLabel"] = t.stream.label
                desc["StreamSpecification"] = (
                    {"StreamEnabled": True, "StreamViewType": t.view_type}
                    if t.stream_enabled
                    else {"StreamEnabled": False}
                )
            return {"Table": desc}


def _required(params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    if value is None:
        raise _validation(
            f"1 validation error detected: Value null at '{name}' failed to satisfy constraint: Member must not be null"
        )
    return value


def _limit(value: Any, default: int, maximum: int) -> int:
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise _validation(
            f"1 validation error detected: Value '{value}' at 'limit' failed to satisfy constraint: "
            f"Member must have value between 1 and {maximum}"
        )
    return value


def shard_chain(items: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """From DescribeStream ``Shards`` entries, map each parent id to its children ids (helper for tests)."""
    children: dict[str, list[str]] = {}
    for entry in items:
        parent = entry.get("ParentShardId")
        if parent:
            children.setdefault(parent, []).append(entry["ShardId"])
    return children


__all__ = [
    "DEFAULT_FIRST_SEQUENCE_NUMBER",
    "Faults",
    "LocalTable",
    "Shard",
    "Stream",
    "StreamsApiError",
    "StreamsModel",
    "key_hash",
    "to_typed",
]
