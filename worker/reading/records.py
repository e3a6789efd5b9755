"""Stream records and the fast decoder of GetRecords pages.

A GetRecords page is decoded with :mod:`msgspec` into typed, garbage-collector-untracked structs of
DynamoDB's wire shapes, and a hand-written unmarshaller turns their typed values into plain Python
(:func:`from_typed` and :func:`from_typed_item` do the same for typed JSON already parsed into dicts),
instead of botocore's generic response parser plus boto3's ``TypeDeserializer``; the output is the
same except for one documented difference:

* ``B`` (binary) values are plain :class:`bytes` (and ``BS`` a ``set[bytes]``), where
  ``TypeDeserializer`` returns ``boto3.dynamodb.types.Binary`` wrappers.  ``Binary(b) == b`` is
  true, so comparisons behave the same; ``bytes`` is hashable, sliceable and what callers want.

Numbers are :class:`decimal.Decimal`, created with the same context boto3 uses (38 digits,
traps on inexact/rounded/overflow/underflow/clamped), so every valid DynamoDB number decodes to
the identical ``Decimal`` (same digits, same exponent) and an invalid one raises as boto3 would.

Images are decoded eagerly: a lazy variant only moves the cost to the first attribute access,
and consumers read the images of nearly every record they are given.  The record's wire JSON
(:attr:`Record.raw`: filters, lanes, Lambda-style events and dead letters read it) is parsed only
when first read, from the record's own bytes of the page.
"""

from __future__ import annotations

import binascii
import gc
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Clamped, Context, Inexact, Overflow, Rounded, Underflow
from typing import Any

import msgspec
import orjson

__all__ = [
    "Record",
    "compare_sequence_numbers",
    "decode_get_records",
    "from_typed",
    "from_typed_item",
    "sequence_int",
]

# Identical to boto3.dynamodb.types.DYNAMODB_CONTEXT (kept here so decoding does not depend on a
# boto3 module-level name); create_decimal is also faster than Decimal(str).
_DYNAMODB_CONTEXT = Context(
    Emin=-128,
    Emax=126,
    prec=38,
    traps=[Clamped, Overflow, Inexact, Rounded, Underflow],
)
_number = _DYNAMODB_CONTEXT.create_decimal
_b64decode = binascii.a2b_base64  # what base64.b64decode(str) calls, without the wrapper


def _binary(value: str | bytes) -> bytes:
    # Wire form is base64 text; tolerate already-decoded bytes (botocore's parsed form).
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return _b64decode(value)


def from_typed(value: dict[str, Any]) -> Any:
    """Unmarshal one DynamoDB typed-JSON value (``{"S": "x"}``, ``{"N": "1.5"}``, ...) as on the wire.

    Same output as ``boto3.dynamodb.types.TypeDeserializer().deserialize`` applied to botocore's
    parse of the same value, except ``B``/``BS`` give ``bytes`` instead of ``Binary`` (see the
    module docstring).  ``B`` values are base64 text on the wire; ``bytes`` are accepted as-is.
    """
    if not value:
        raise TypeError("Value must be a nonempty dictionary whose key is a valid dynamodb type.")
    for tag, v in value.items():
        if tag == "S":
            return v
        if tag == "N":
            return _number(v)
        if tag == "M":
            return _map(v)
        if tag == "L":
            return [from_typed(x) for x in v]
        if tag == "BOOL":
            return v
        if tag == "NULL":
            return None
        if tag == "B":
            return _binary(v)
        if tag == "SS":
            return set(v)
        if tag == "NS":
            return set(map(_number, v))
        if tag == "BS":
            return {_binary(x) for x in v}
        raise TypeError(f"Dynamodb type {tag} is not supported")
    raise AssertionError("unreachable")  # pragma: no cover


def _map(m: dict[str, Any]) -> dict[str, Any]:
    # The hot loop: strings and numbers inline, everything else through from_typed.
    out: dict[str, Any] = {}
    for key, typed in m.items():
        if "S" in typed:
            out[key] = typed["S"]
        elif "N" in typed:
            out[key] = _number(typed["N"])
        else:
            out[key] = from_typed(typed)
    return out


def from_typed_item(item: dict[str, Any]) -> dict[str, Any]:
    """Unmarshal a whole item / image / key map (``{"name": {"S": "x"}, ...}``) to plain values."""
    return _map(item)


def sequence_int(sequence_number: str) -> int:
    """A sequence number (decimal string of up to 40 digits) as an int, for comparisons."""
    return int(sequence_number)


def compare_sequence_numbers(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` is before, equal to or after ``b``: compared as integers, never as strings."""
    ia, ib = int(a), int(b)
    return (ia > ib) - (ia < ib)


@dataclass(frozen=True, slots=True)
class Record:
    """One stream record, decoded.

    ``keys``/``new_image``/``old_image`` hold plain Python values (see :func:`from_typed`);
    images are ``None`` when the stream's view type does not carry them.  ``user_identity`` is
    the wire ``userIdentity`` object as-is (``{"Type": "Service", "PrincipalId":
    "dynamodb.amazonaws.com"}`` for TTL deletions) or ``None``.  ``raw`` is the record's wire
    JSON exactly as received (typed images, epoch-seconds ``ApproximateCreationDateTime``,
    base64 ``B``); treat it as read-only.  ``is_snapshot`` marks an item of the table's snapshot
    (an ``INSERT`` with ``sequence_number`` "0" and ``shard_id`` naming the scan segment: docs/snapshot.md).
    """

    event_id: str
    event_name: str
    sequence_number: str
    keys: dict[str, Any]
    new_image: dict[str, Any] | None
    old_image: dict[str, Any] | None
    approximate_creation_time: datetime
    size_bytes: int
    stream_view_type: str
    user_identity: dict[str, Any] | None
    shard_id: str
    wire: dict[str, Any] | msgspec.Raw = field(repr=False, compare=False)
    """The record's wire JSON: parsed (a dict), or a copy of its bytes of the page until :attr:`raw` is first read."""
    is_snapshot: bool = False
    """True for an item of the table's snapshot (docs/snapshot.md), False for every stream record."""

    @property
    def raw(self) -> dict[str, Any]:
        """The record's wire JSON exactly as received (see the class docstring); parsed at the first read.

        Concurrent first reads from two threads may each parse it; both get equal dicts, and the one
        kept is what later reads return."""
        wire = self.wire
        if type(wire) is dict:
            return wire
        parsed: dict[str, Any] = orjson.loads(memoryview(wire))  # type: ignore[arg-type]
        object.__setattr__(self, "wire", parsed)
        return parsed

    @property
    def sequence_int(self) -> int:
        """The sequence number as an int (compare these, never the strings)."""
        return int(self.sequence_number)

    @property
    def is_ttl_delete(self) -> bool:
        """True for a REMOVE made by DynamoDB's Time To Live, not by an application."""
        ui = self.user_identity
        if not ui or self.event_name != "REMOVE":
            return False
        kind = ui.get("Type", ui.get("type"))
        principal = ui.get("PrincipalId", ui.get("principalId"))
        return kind == "Service" and principal == "dynamodb.amazonaws.com"

    @classmethod
    def from_wire(cls, wire: dict[str, Any], shard_id: str) -> Record:
        """Build a Record from one element of a GetRecords ``Records`` array (parsed JSON), or from a
        snapshot item's wire JSON (a dead letter: its ``"shardlease": {"snapshot": true}`` marks it again)."""
        record = _from_wire(wire, shard_id, {})
        if (wire.get("shardlease") or {}).get("snapshot"):
            return replace(record, is_snapshot=True)
        return record


def _from_wire(wire: dict[str, Any], shard_id: str, times: dict[Any, datetime]) -> Record:
    ddb = wire["dynamodb"]
    new = ddb.get("NewImage")
    old = ddb.get("OldImage")
    created = ddb["ApproximateCreationDateTime"]
    when = times.get(created)
    if when is None:  # records of a page mostly share a handful of seconds
        if isinstance(created, datetime):  # already parsed by botocore (non-HTTP answers)
            when = created.astimezone(UTC) if created.tzinfo else created.replace(tzinfo=UTC)
        else:
            when = datetime.fromtimestamp(created, UTC)
        times[created] = when
    return Record(
        wire["eventID"],
        wire["eventName"],
        ddb["SequenceNumber"],
        _map(ddb.get("Keys") or {}),
        None if new is None else _map(new),
        None if old is None else _map(old),
        when,
        ddb.get("SizeBytes", 0),
        ddb.get("StreamViewType", ""),
        wire.get("userIdentity"),
        shard_id,
        wire,
    )


class _Value(msgspec.Struct, gc=False):
    """One typed value as on the wire (exactly one field is set).  ``B``/``BS`` arrive as base64 text and
    are decoded by msgspec; ``N``/``NS`` stay text until :data:`_number` (boto3's context) reads them."""

    S: str | None = None
    N: str | None = None
    M: dict[str, _Value] | None = None
    L: list[_Value] | None = None
    BOOL: bool | None = None
    NULL: bool | None = None
    B: bytes | None = None
    SS: list[str] | None = None
    NS: list[str] | None = None
    BS: list[bytes] | None = None


class _StreamRecord(msgspec.Struct, gc=False):
    """A wire record's ``dynamodb`` object (the fields a :class:`Record` keeps)."""

    SequenceNumber: str
    ApproximateCreationDateTime: float
    Keys: dict[str, _Value] | None = None
    NewImage: dict[str, _Value] | None = None
    OldImage: dict[str, _Value] | None = None
    SizeBytes: int = 0
    StreamViewType: str = ""


class _WireRecord(msgspec.Struct, gc=False):
    eventID: str
    eventName: str
    dynamodb: _StreamRecord
    userIdentity: dict[str, Any] | None = None


class _Page(msgspec.Struct, gc=False):
    """A GetRecords answer; each record is kept as its bytes in the body (for :attr:`Record.raw`)."""

    Records: list[msgspec.Raw]
    NextShardIterator: str | None = None


_decode_page = msgspec.json.Decoder(_Page).decode
_decode_record = msgspec.json.Decoder(_WireRecord).decode


def _plain(value: _Value) -> Any:
    """The plain Python value of one decoded typed value (the rules of :func:`from_typed`)."""
    s = value.S
    if s is not None:
        return s
    n = value.N
    if n is not None:
        return _number(n)
    m = value.M
    if m is not None:
        return _plain_map(m)
    items = value.L
    if items is not None:
        return [_plain(x) for x in items]
    flag = value.BOOL
    if flag is not None:
        return flag
    if value.NULL is not None:
        return None
    if value.B is not None:
        return value.B
    if value.SS is not None:
        return set(value.SS)
    if value.NS is not None:
        return set(map(_number, value.NS))
    if value.BS is not None:
        return set(value.BS)
    raise TypeError("a value in the GetRecords response is not of a supported DynamoDB type")


def _plain_map(m: dict[str, _Value]) -> dict[str, Any]:
    # The hot loop: strings and numbers inline, everything else through _plain.
    out: dict[str, Any] = {}
    for key, value in m.items():
        s = value.S
        if s is not None:
            out[key] = s
            continue
        n = value.N
        out[key] = _plain(value) if n is None else _number(n)
    return out


def decode_get_records(body: bytes, shard_id: str) -> tuple[list[Record], str | None]:
    """Decode a raw GetRecords response body: (records, NextShardIterator or None at shard end).

    Each record's :attr:`Record.wire` is a copy of its own bytes of ``body`` (``raw`` parses it when first
    read), never a view of the page: a record kept by a handler keeps its ~1 KB, not the whole page
    (up to 1 MB; 200 kept records held 209 MB of pages with views).  The cyclic garbage collector is paused while
    the page is decoded: the decoded images are containers it would otherwise scan several times
    over as the page is built (the structs of the wire shape are untracked).  It is re-enabled
    afterwards only if this call disabled it, so an application that keeps GC off stays so;
    concurrent decodes in other threads merely shorten or lengthen the pause.

    Only a JSON object with a ``Records`` list whose records have the wire shape is a page (a closed
    shard's last page is ``{"Records": []}``); anything else, not JSON at all included, raises
    :class:`TypeError`, so a malformed body can never read as ``([], None)``, the end of the shard.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        try:
            page = _decode_page(body)
        except msgspec.DecodeError as exc:
            raise TypeError(f"GetRecords response body is not a page: {exc}") from None
        times: dict[float, datetime] = {}
        records = []
        for wire in page.Records:
            try:
                rec = _decode_record(wire)
            except msgspec.DecodeError as exc:
                raise TypeError(f"GetRecords response body has a record not of the wire shape: {exc}") from None
            ddb = rec.dynamodb
            created = ddb.ApproximateCreationDateTime
            when = times.get(created)
            if when is None:  # records of a page mostly share a handful of seconds
                when = times[created] = datetime.fromtimestamp(created, UTC)
            keys, new, old = ddb.Keys, ddb.NewImage, ddb.OldImage
            records.append(Record(
                rec.eventID,
                rec.eventName,
                ddb.SequenceNumber,
                {} if keys is None else _plain_map(keys),
                None if new is None else _plain_map(new),
                None if old is None else _plain_map(old),
                when,
                ddb.SizeBytes,
                ddb.StreamViewType,
                rec.userIdentity,
                shard_id,
                wire.copy(),  # the record's bytes only: a view would keep the whole page alive
            ))
        return records, page.NextShardIterator
    except (RecursionError, ArithmeticError, ValueError, OSError) as exc:
        # Nested deeper than the decoders go, a creation time no datetime holds (OverflowError, ValueError,
        # OSError), a number beyond DynamoDB's 38 digits (decimal's traps): not a page either.
        raise TypeError(f"GetRecords response body is not a page: {type(exc).__name__}: {exc}") from None
    finally:
        if paused:
            gc.enable()
