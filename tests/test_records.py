"""worker.reading.records: the typed-JSON unmarshaller against boto3, and Record decoding."""

from __future__ import annotations

import base64
import gc
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import botocore.session
import orjson
import pytest
from boto3.dynamodb.types import DYNAMODB_CONTEXT, Binary, TypeDeserializer
from botocore.parsers import create_parser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.reading.records import (
    Record,
    compare_sequence_numbers,
    decode_get_records,
    from_typed,
    from_typed_item,
    sequence_int,
)

SHARD = "shardId-00000001714566896000-1a2b3c4d"
_OUTPUT_SHAPE = (
    botocore.session.get_session().get_service_model("dynamodbstreams").operation_model("GetRecords").output_shape
)
_PARSER = create_parser("json")
_DESER = TypeDeserializer()


def canon(value: Any) -> Any:
    """A comparable form that also distinguishes Decimal('1.0') from Decimal('1') and bool from int."""
    if isinstance(value, Binary):
        return ("B", bytes(value.value))
    if isinstance(value, bytes):
        return ("B", value)
    if isinstance(value, bool):
        return ("BOOL", value)
    if isinstance(value, Decimal):
        return ("N", str(value))
    if isinstance(value, str):
        return ("S", value)
    if value is None:
        return ("NULL",)
    if isinstance(value, set):
        return ("SET", frozenset(canon(v) for v in value))
    if isinstance(value, list):
        return ("L", [canon(v) for v in value])
    if isinstance(value, dict):
        return ("M", {k: canon(v) for k, v in value.items()})
    raise AssertionError(f"unexpected {type(value)}")


def boto3_image(image: dict[str, Any]) -> dict[str, Any]:
    """What plain boto3 gives for a wire image: botocore's JSON parser, then TypeDeserializer."""
    body = orjson.dumps({"Records": [{"dynamodb": {"NewImage": image}}]})
    parsed = _PARSER.parse({"status_code": 200, "headers": {}, "body": body}, _OUTPUT_SHAPE)
    return {k: _DESER.deserialize(v) for k, v in parsed["Records"][0]["dynamodb"]["NewImage"].items()}


# --- strategies for wire-form typed values ---------------------------------------------------------


def _valid_number(d: Decimal) -> bool:
    try:
        DYNAMODB_CONTEXT.create_decimal(str(d))
    except ArithmeticError:
        return False
    return d.is_finite()


_numbers = (
    st.builds(
        lambda sign, mantissa, exp: Decimal((sign, tuple(int(c) for c in str(mantissa)), exp)),
        st.integers(0, 1),
        st.integers(0, 10**38 - 1),
        st.integers(-165, 125),
    )
    .filter(_valid_number)
    .flatmap(lambda d: st.sampled_from([str(d), f"{d:f}" if abs(d.adjusted()) < 30 else str(d)]))
)
_text = st.text(max_size=20)
_blob = st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode())

_scalars = st.one_of(
    _text.map(lambda s: {"S": s}),
    _numbers.map(lambda n: {"N": n}),
    st.booleans().map(lambda b: {"BOOL": b}),
    st.just({"NULL": True}),
    _blob.map(lambda b: {"B": b}),
    st.lists(_text, min_size=1, max_size=5, unique=True).map(lambda v: {"SS": v}),
    st.lists(_numbers, min_size=1, max_size=5, unique_by=lambda s: Decimal(s)).map(lambda v: {"NS": v}),
    st.lists(st.binary(max_size=8), min_size=1, max_size=4, unique=True).map(
        lambda v: {"BS": [base64.b64encode(b).decode() for b in v]}
    ),
)
_typed = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda v: {"L": v}),
        st.dictionaries(_text, children, max_size=4).map(lambda v: {"M": v}),
    ),
    max_leaves=25,
)
_items = st.dictionaries(st.text(min_size=1, max_size=12), _typed, max_size=8)


@settings(
    max_examples=max(300, settings.default.max_examples), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(_items)
def test_from_typed_item_equals_boto3(item: dict[str, Any]) -> None:
    assert canon(from_typed_item(item)) == canon(boto3_image(item))


def _page(new: dict[str, Any], old: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    wire = {"eventID": "e1", "eventName": "MODIFY", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": {"ApproximateCreationDateTime": 1714566896, "Keys": {"pk": {"S": "k"}}, "NewImage": new,
                         "OldImage": old, "SequenceNumber": "1" * 21, "SizeBytes": 9,
                         "StreamViewType": "NEW_AND_OLD_IMAGES"}}
    return orjson.dumps({"Records": [wire], "NextShardIterator": "it"}), wire


@settings(
    max_examples=max(300, settings.default.max_examples), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(_items, _items)
def test_page_decode_equals_boto3(new: dict[str, Any], old: dict[str, Any]) -> None:
    """The page decoder (msgspec structs) gives what botocore's parser plus TypeDeserializer give, and
    ``raw`` is the record's wire JSON."""
    body, wire = _page(new, old)
    (record,), nxt = decode_get_records(body, SHARD)
    assert nxt == "it"
    assert canon(record.new_image) == canon(boto3_image(new))
    assert canon(record.old_image) == canon(boto3_image(old))
    assert record.keys == {"pk": "k"}
    assert record.raw == wire


def test_raw_is_parsed_at_first_read_and_kept() -> None:
    body, wire = _page({"a": {"N": "1.50"}}, {"b": {"B": "AQI="}})
    (record,), _ = decode_get_records(body, SHARD)
    assert not isinstance(record.wire, dict)  # still the record's bytes in the page
    first = record.raw
    assert first == wire and record.raw is first and record.wire is first
    assert record.new_image == {"a": Decimal("1.50")} and record.old_image == {"b": b"\x01\x02"}


def test_a_kept_record_does_not_keep_its_page() -> None:
    """A record holds its own bytes, not a view of the page body: a handler that keeps one record of
    each batch (the latest per key, a buffer flushed later) must not keep each whole page (up to 1 MB)."""
    pages = [_page({"v": {"S": "x" * 1000}, "n": {"N": str(i)}}, {}) for i in range(50)]
    body = b"".join([b'{"Records":[', b",".join(orjson.dumps(w) for _, w in pages), b'],"NextShardIterator":"it"}'])
    before = sys.getrefcount(body)
    records, _ = decode_get_records(body, SHARD)
    kept = records[7]
    del records
    assert sys.getrefcount(body) == before  # nothing decoded from the page refers to the body any more
    assert bytes(memoryview(kept.wire)) == orjson.dumps(pages[7][1])  # its own bytes, exactly
    assert kept.raw == pages[7][1] and kept.new_image is not None and kept.new_image["n"] == 7


@pytest.mark.parametrize(
    "value",
    [{}, {"X": "1"}, {"S": 5}, {"N": 1}, {"B": "not base64!"}, {"M": []}, {"L": {}}, {"SS": "a"}],
)
def test_page_with_a_bad_value_is_refused(value: dict[str, Any]) -> None:
    body, _ = _page({"v": value}, {})
    with pytest.raises(TypeError, match="GetRecords response"):
        decode_get_records(body, SHARD)
    assert gc.isenabled()


@settings(max_examples=max(200, settings.default.max_examples), deadline=None)
@given(_typed)
def test_from_typed_equals_type_deserializer(value: dict[str, Any]) -> None:
    expected = boto3_image({"v": value})["v"]
    assert canon(from_typed(value)) == canon(expected)


@settings(max_examples=max(300, settings.default.max_examples), deadline=None)
@given(_numbers)
def test_numbers_identical_to_boto3_context(n: str) -> None:
    got = from_typed({"N": n})
    want = DYNAMODB_CONTEXT.create_decimal(n)
    assert str(got) == str(want)
    assert got.as_tuple() == want.as_tuple()
    assert Decimal(n).as_tuple() == want.as_tuple()  # plain Decimal(str) agrees for valid numbers


def test_types_match_documentation() -> None:
    item = {
        "s": {"S": "x"},
        "n": {"N": "1.50"},
        "b": {"B": base64.b64encode(b"\x00\xff").decode()},
        "bs": {"BS": [base64.b64encode(b"a").decode(), base64.b64encode(b"b").decode()]},
        "ss": {"SS": ["a", "b"]},
        "ns": {"NS": ["1", "2.5"]},
        "t": {"BOOL": True},
        "null": {"NULL": True},
        "l": {"L": [{"N": "1"}, {"S": "two"}]},
        "m": {"M": {"inner": {"M": {"deep": {"NULL": True}}}}},
    }
    got = from_typed_item(item)
    assert got == {
        "s": "x",
        "n": Decimal("1.50"),
        "b": b"\x00\xff",
        "bs": {b"a", b"b"},
        "ss": {"a", "b"},
        "ns": {Decimal("1"), Decimal("2.5")},
        "t": True,
        "null": None,
        "l": [Decimal("1"), "two"],
        "m": {"inner": {"deep": None}},
    }
    assert type(got["b"]) is bytes  # TypeDeserializer would give boto3's Binary
    assert str(got["n"]) == "1.50"


def test_from_typed_rejects_bad_values() -> None:
    with pytest.raises(TypeError):
        from_typed({})
    with pytest.raises(TypeError, match="not supported"):
        from_typed({"X": 1})
    with pytest.raises(ArithmeticError):  # as boto3: more than 38 significant digits
        from_typed({"N": "1" * 39})


# --- Records -----------------------------------------------------------------------------------------

T0 = 1714566896


def wire(event: str, view: str, *, seq: str = "100000000000000000001", ttl: bool = False) -> dict[str, Any]:
    keys = {"pk": {"S": "ORDER#1"}, "sk": {"N": "7"}}
    new = {**keys, "total": {"N": "12.50"}, "blob": {"B": base64.b64encode(b"\x01\x02").decode()}}
    old = {**keys, "total": {"N": "10"}, "tags": {"SS": ["a"]}}
    ddb: dict[str, Any] = {
        "ApproximateCreationDateTime": float(T0),
        "Keys": keys,
        "SequenceNumber": seq,
        "SizeBytes": 57,
        "StreamViewType": view,
    }
    if view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES") and event != "REMOVE":
        ddb["NewImage"] = new
    if view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES") and event != "INSERT":
        ddb["OldImage"] = old
    rec: dict[str, Any] = {
        "eventID": f"ev-{event}-{view}",
        "eventName": event,
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": ddb,
    }
    if ttl:
        rec["userIdentity"] = {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
    return rec


VIEWS = ["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("event", ["INSERT", "MODIFY", "REMOVE"])
def test_record_fields(event: str, view: str) -> None:
    w = wire(event, view)
    body = orjson.dumps({"Records": [w], "NextShardIterator": "it-2"})
    records, nxt = decode_get_records(body, SHARD)
    assert nxt == "it-2"
    (r,) = records
    assert r.event_id == f"ev-{event}-{view}"
    assert r.event_name == event
    assert r.sequence_number == "100000000000000000001"
    assert r.sequence_int == 100000000000000000001
    assert r.keys == {"pk": "ORDER#1", "sk": Decimal(7)}
    has_new = view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES") and event != "REMOVE"
    has_old = view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES") and event != "INSERT"
    if has_new:
        assert r.new_image == {"pk": "ORDER#1", "sk": Decimal(7), "total": Decimal("12.50"), "blob": b"\x01\x02"}
    else:
        assert r.new_image is None
    if has_old:
        assert r.old_image == {"pk": "ORDER#1", "sk": Decimal(7), "total": Decimal(10), "tags": {"a"}}
    else:
        assert r.old_image is None
    assert r.approximate_creation_time == datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC)
    assert r.approximate_creation_time.utcoffset() == timedelta(0)
    assert r.size_bytes == 57
    assert r.stream_view_type == view
    assert r.user_identity is None
    assert not r.is_ttl_delete
    assert r.shard_id == SHARD
    assert r.raw == w  # exactly as on the wire: typed images, epoch number, base64 B
    assert r.raw["dynamodb"]["ApproximateCreationDateTime"] == float(T0)
    if has_new:
        assert r.raw["dynamodb"]["NewImage"]["blob"] == {"B": "AQI="}
    assert "raw" not in repr(r)


def test_ttl_remove_record() -> None:
    w = wire("REMOVE", "NEW_AND_OLD_IMAGES", ttl=True)
    r = Record.from_wire(w, SHARD)
    assert r.user_identity == {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
    assert r.is_ttl_delete
    assert r.new_image is None and r.old_image is not None


def test_record_is_frozen_and_slotted() -> None:
    r = Record.from_wire(wire("INSERT", "NEW_IMAGE"), SHARD)
    with pytest.raises(AttributeError):
        r.event_name = "MODIFY"  # type: ignore[misc]
    assert not hasattr(r, "__dict__")


def test_empty_page_and_shard_end() -> None:
    assert decode_get_records(b'{"Records":[],"NextShardIterator":"x"}', SHARD) == ([], "x")
    assert decode_get_records(b'{"Records":[]}', SHARD) == ([], None)


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"NextShardIterator":"x"}',
        b'{"Records":null}',
        b'{"Records":{}}',
        b'{"Records":"x"}',
        b'{"Records":[],"NextShardIterator":5}',
        b"[]",
        b"null",
        b'"Records"',
        b"1",
    ],
)
def test_body_without_records_list_is_refused(body: bytes) -> None:
    """Nothing but a JSON object with a Records list is a page: anything else must not read as a
    shard end (``([], None)``)."""
    with pytest.raises(TypeError, match="GetRecords response"):
        decode_get_records(body, SHARD)
    assert gc.isenabled()


def test_decode_restores_gc_state() -> None:
    body = orjson.dumps({"Records": [wire("INSERT", "NEW_IMAGE")]})
    assert gc.isenabled()
    decode_get_records(body, SHARD)
    assert gc.isenabled()
    gc.disable()
    try:
        decode_get_records(body, SHARD)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(TypeError, match="GetRecords response body is not a page"):
        decode_get_records(b"{not json", SHARD)
    assert gc.isenabled()


def test_sequence_comparison_across_lengths() -> None:
    assert "9" > "10"  # the trap
    assert compare_sequence_numbers("9", "10") == -1
    assert compare_sequence_numbers("10", "9") == 1
    assert compare_sequence_numbers("000123", "123") == 0
    big = "1" + "0" * 39  # 40 digits
    assert compare_sequence_numbers("9" * 39, big) == -1
    assert sequence_int(big) == 10**39
    a = Record.from_wire(wire("INSERT", "KEYS_ONLY", seq="99999999999999999999"), SHARD)
    b = Record.from_wire(wire("INSERT", "KEYS_ONLY", seq="100000000000000000000"), SHARD)
    assert a.sequence_int < b.sequence_int
    assert sorted([b, a], key=lambda r: r.sequence_int) == [a, b]
