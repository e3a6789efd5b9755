"""Snapshot items as Records: the shape handlers get (native and Lambda-style), checkpoint keys."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson

from worker.handling.delivery import BatchDelivery, DeliveryPolicy, FailureContext
from worker.handling.destinations import NoDestination, _dumps
from worker.handling.lambda_compat import lambda_event
from worker.observability import Metrics
from worker.reading.records import Record
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


def test_a_partial_batch_response_naming_a_snapshot_item_retries_from_the_first_item() -> None:
    """Every snapshot item carries sequence number "0": a batchItemFailures entry naming one cannot say which,
    so the batch fails from its first item.  (It failed from the last: the items before it, the failed one
    among them, counted as handled and never reached the sink again.)"""
    items = [{"pk": {"S": f"k{i}"}, "v": {"N": str(i)}} for i in range(5)]
    records = snapshot_records(ScanPage(items, None, 1.0, datetime(2026, 1, 1, tzinfo=UTC)), ("pk",), "0/1",
                               "NEW_IMAGE", "us-east-1")
    applied: list[str] = []
    failed_once: set[str] = set()

    def handler(batch: Sequence[Record]) -> Any:
        for r in batch:
            if r.keys["pk"] == "k1" and "k1" not in failed_once:  # k1 fails once, reported as a partial failure
                failed_once.add("k1")
                return {"batchItemFailures": [{"itemIdentifier": r.sequence_number}]}
            applied.append(r.keys["pk"])
        return None

    d = BatchDelivery(records=records, call=handler, policy=DeliveryPolicy(), destination=NoDestination(),
                      failure=FailureContext("g", ARN, "snapshot:0/1", "w1"), metrics=Metrics("w1", "g"),
                      backoff=lambda attempt: 0.0)
    for _ in range(20):
        if d.finished:
            break
        d.run_round()
    assert d.finished
    assert {f"k{i}" for i in range(5)} <= set(applied)  # k1 too: it was retried, not taken as handled


def test_a_snapshot_item_rebuilt_from_its_dead_letter_is_still_marked_as_snapshot() -> None:
    """`shardlease dlq replay` rebuilds records from their stored wire JSON: a snapshot item given up on must
    reach the handler as a snapshot item again (it came back as a stream INSERT, ``is_snapshot`` False,
    though its wire JSON carries the marker)."""
    (r,) = snapshot_records(page(), ("pk", "sk"), "3/16", "NEW_IMAGE", "us-east-1")
    stored = orjson.loads(_dumps(r.raw))  # what a destination keeps
    again = Record.from_wire(stored, r.shard_id)
    assert again.is_snapshot and again.event_name == "INSERT" and again.new_image == r.new_image
    assert not Record.from_wire({**stored, "shardlease": None}, "shard-1").is_snapshot


def test_each_read_of_an_item_has_its_own_event_id() -> None:
    """Every snapshot item had the event id snapshot-<hash of its keys> in every run: a sink that skips the ids it
    has seen (Powertools' idempotency) skipped a --restart re-sync entirely, and a page read again with newer items."""
    (first,) = snapshot_records(page(), ("pk", "sk"), "3/16", "NEW_IMAGE", "us-east-1", read_id=7)
    (again,) = snapshot_records(page(), ("pk", "sk"), "3/16", "NEW_IMAGE", "us-east-1", read_id=8)
    assert first.event_id.startswith("snapshot-7-") and again.event_id.startswith("snapshot-8-")
    assert first.event_id.split("-", 2)[2] == again.event_id.split("-", 2)[2]  # the same item: the same key hash
    assert first.raw["eventID"] == first.event_id
