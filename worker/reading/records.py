"""Stream records and the fast decoder of GetRecords pages.

A GetRecords page is decoded with :mod:`orjson` and a hand-written unmarshaller of DynamoDB's
typed JSON (:func:`from_typed`, :func:`from_typed_item`) instead of botocore's generic response
parser plus boto3's ``TypeDeserializer``; the output is the same except for one documented
difference:

* ``B`` (binary) values are plain :class:`bytes` (and ``BS`` a ``set[bytes]``), where
  ``TypeDeserializer`` returns ``boto3.dynamodb.types.Binary`` wrappers.  ``Binary(b) == b`` is
  true, so comparisons behave the same; ``bytes`` is hashable, sliceable and what callers want.

Numbers are :class:`decimal.Decimal`, created with the same context boto3 uses (38 digits,
traps on inexact/rounded/overflow/underflow/clamped), so every valid DynamoDB number decodes to
the identical ``Decimal`` (same digits, same exponent) and an invalid one raises as boto3 would.

Images are decoded eagerly: a lazy variant only moves the cost to the first attribute access,
and consumers read the images of nearly every record they are given.
"""

from __future__ import annotations

import binascii
import gc
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Clamped, Context, Inexact, Overflow, Rounded, Underflow
from typing import Any

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
    raw: dict[str, Any] = field(repr=False)
    is_snapshot: bool = False
    """True for an item of the table's snapshot (docs/snapshot.md), False for every stream record."""

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
        """Build a Record from one element of a GetRecords ``Records`` array (orjson-decoded), or from a
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


def decode_get_records(body: bytes, shard_id: str) -> tuple[list[Record], str | None]:
    """Decode a raw GetRecords response body: (records, NextShardIterator or None at shard end).

    The cyclic garbage collector is paused while the page is decoded: a page allocates some
    100,000 acyclic containers (the typed-JSON wrappers, mostly garbage at once), and on
    CPython 3.11 the collections they trigger doubled the decode time (see
    bench/decode_throughput.py).  It is re-enabled afterwards only if this call disabled it, so
    an application that keeps GC off stays so; concurrent decodes in other threads merely
    shorten or lengthen the pause.

    Only a JSON object with a ``Records`` list is a page (a closed shard's last page is
    ``{"Records": []}``); anything else raises :class:`TypeError` (``orjson.JSONDecodeError`` if
    it is not JSON), so a malformed body can never read as ``([], None)``, the end of the shard.
    """
    paused = gc.isenabled()
    if paused:
        gc.disable()
    try:
        doc = orjson.loads(body)
        if not isinstance(doc, dict):
            raise TypeError(f"GetRecords response body is a JSON {type(doc).__name__}, not an object")
        wire = doc.get("Records")
        if not isinstance(wire, list):
            problem = "has no Records" if wire is None else f"has Records of type {type(wire).__name__}"
            raise TypeError(f"GetRecords response body {problem} (expected a list; keys: {sorted(doc)[:5]})")
        next_iterator = doc.get("NextShardIterator")
        if next_iterator is not None and not isinstance(next_iterator, str):
            raise TypeError(
                f"GetRecords response body has NextShardIterator of type {type(next_iterator).__name__}"
            )
        times: dict[Any, datetime] = {}
        records = [_from_wire(r, shard_id, times) for r in wire]
        return records, next_iterator
    finally:
        if paused:
            gc.enable()
