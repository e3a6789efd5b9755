"""Snapshot items as Records: the shape handlers get (native and Lambda-style), checkpoint keys."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from worker.handling.lambda_compat import lambda_event
from worker.snapshot.scan import ScanPage, decode_key, default_segments, encode_key, snapshot_records

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/items/stream/2026-01-01T00:00:00.000"


def page() -> ScanPage:
    item = {"pk": {"S": "a"}, "sk": {"B": b"\x00\xff"}, "n": {"N": "1.5"}, "m": {"M": {"x": {"BOOL": True}}}}
    return ScanPage([item], {"pk": {"S": "a"}, "sk": {"B": b"\x00\xff"}}, 1.0,
                    datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC))


def test_a_snapshot_item_is_an_insert_marked_as_snapshot() -> None:
    (r,) = snapshot_records(page(), ("pk", "sk"), "3/16", "NEW_AND_OLD_IMAGES", "us-east-1")
    assert r.event_name == "INSERT" and r.is_snapshot and r.sequence_number == "0"
    assert r.keys == {"pk": "a", "sk": b"\x00\xff"}
    assert r.new_image == {"pk": "a", "sk": b"\x00\xff", "n": Decimal("1.5"), "m": {"x": True}}
    assert r.old_image is None and r.shard_id == "snapshot:3/16"
    assert r.approximate_creation_time == datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_lambda_style_handlers_get_a_stream_insert_with_the_marker() -> None:
    records = snapshot_records(page(), ("pk", "sk"), "3/16", "NEW_AND_OLD_IMAGES", "us-east-1")
    (event,) = lambda_event(records, ARN)["Records"]
    assert event["eventName"] == "INSERT" and event["eventSourceARN"] == ARN
    assert event["shardlease"] == {"snapshot": True, "segment": "3/16"}
    ddb = event["dynamodb"]
    assert ddb["Keys"] == {"pk": {"S": "a"}, "sk": {"B": "AP8="}}
    assert ddb["NewImage"]["sk"] == {"B": "AP8="} and ddb["NewImage"]["n"] == {"N": "1.5"}
    assert ddb["ApproximateCreationDateTime"] == 1767268800
    assert "OldImage" not in ddb


def test_checkpoint_keys_round_trip_binary_values() -> None:
    key = {"pk": {"S": "a"}, "sk": {"B": b"\x00\xff"}}
    assert decode_key(encode_key(key)) == key
    assert encode_key(None) == "" and decode_key("") is None


def test_the_default_segment_count_follows_the_table_size() -> None:
    assert default_segments(0) == 4
    assert default_segments(10 * 1024**3) == 40
    assert default_segments(10**15) == 1000
