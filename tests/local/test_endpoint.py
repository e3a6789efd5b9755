"""The local DynamoDB Streams endpoint, driven only through boto3 (topology through the model)."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config
from botocore.exceptions import ClientError

from worker.local import LocalStreamsServer

NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture
def server() -> Iterator[LocalStreamsServer]:
    with LocalStreamsServer(port=0, empty_page_probability=0.0, seed=7) as srv:
        yield srv


@pytest.fixture
def streams(server: LocalStreamsServer) -> Any:
    return boto3.client(
        "dynamodbstreams",
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="y",
        config=NO_RETRY,
    )


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def list_all_shards(streams: Any, arn: str, **extra: Any) -> list[dict[str, Any]]:
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamArn": arn, **extra}
    while True:
        desc = streams.describe_stream(**kwargs)["StreamDescription"]
        shards.extend(desc["Shards"])
        if "LastEvaluatedShardId" not in desc:
            return shards
        kwargs["ExclusiveStartShardId"] = desc["LastEvaluatedShardId"]


def read_shard(streams: Any, arn: str, shard_id: str, **it_kwargs: Any) -> list[dict[str, Any]]:
    """Read a closed shard to its end (follows NextShardIterator until it is absent)."""
    it = streams.get_shard_iterator(
        StreamArn=arn,
        ShardId=shard_id,
        ShardIteratorType=it_kwargs.pop("ShardIteratorType", "TRIM_HORIZON"),
        **it_kwargs,
    )["ShardIterator"]
    records: list[dict[str, Any]] = []
    for _ in range(10_000):
        page = streams.get_records(ShardIterator=it)
        records.extend(page["Records"])
        if "NextShardIterator" not in page:
            return records
        it = page["NextShardIterator"]
    raise AssertionError("shard never ended")


def read_open_shard(streams: Any, arn: str, shard_id: str) -> list[dict[str, Any]]:
    """Read an open shard until an empty page (probability of random empty pages is 0 here)."""
    it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    records: list[dict[str, Any]] = []
    while True:
        page = streams.get_records(ShardIterator=it)
        assert "NextShardIterator" in page, "an open shard always returns a NextShardIterator"
        records.extend(page["Records"])
        if not page["Records"]:
            return records
        it = page["NextShardIterator"]


def test_pagination_over_250_shards(server: LocalStreamsServer, streams: Any) -> None:
    table = server.create_table("big", shards=250)
    pages = []
    kwargs: dict[str, Any] = {"StreamArn": table.stream_arn, "Limit": 100}
    while True:
        desc = streams.describe_stream(**kwargs)["StreamDescription"]
        pages.append(desc)
        if "LastEvaluatedShardId" not in desc:
            break
        assert desc["LastEvaluatedShardId"] == desc["Shards"][-1]["ShardId"]
        kwargs["ExclusiveStartShardId"] = desc["LastEvaluatedShardId"]
    assert [len(p["Shards"]) for p in pages] == [100, 100, 50]
    ids = [s["ShardId"] for p in pages for s in p["Shards"]]
    assert len(set(ids)) == 250
    assert ids == server.model.shard_ids(table)
    for shard_id in ids:
        assert shard_id.startswith("shardId-") and 28 <= len(shard_id) <= 65
    # Default Limit is 100, and the page at exactly the end carries no LastEvaluatedShardId.
    assert len(streams.describe_stream(StreamArn=table.stream_arn)["StreamDescription"]["Shards"]) == 100
    last = streams.describe_stream(StreamArn=table.stream_arn, Limit=50, ExclusiveStartShardId=ids[199])
    assert len(last["StreamDescription"]["Shards"]) == 50
    assert "LastEvaluatedShardId" not in last["StreamDescription"]
    desc = pages[0]
    assert desc["StreamStatus"] == "ENABLED" and desc["TableName"] == "big"
    assert desc["StreamViewType"] == "NEW_AND_OLD_IMAGES"
    assert desc["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}]
    assert "CreationRequestDateTime" in desc


def test_child_shard_filter(server: LocalStreamsServer, streams: Any) -> None:
    table = server.create_table("kids", shards=3)
    a, b, c = server.model.shard_ids(table)
    split = server.model.split_shard(table, a)
    rolled = server.model.rollover_shard(table, b)

    def children(parent: str) -> list[str]:
        shards = list_all_shards(streams, table.stream_arn, ShardFilter={"Type": "CHILD_SHARDS", "ShardId": parent})
        assert all(s["ParentShardId"] == parent for s in shards)
        return [s["ShardId"] for s in shards]

    assert children(a) == list(split)
    assert children(b) == [rolled]
    assert children(c) == []
    full = list_all_shards(streams, table.stream_arn)
    by_id = {s["ShardId"]: s for s in full}
    assert "EndingSequenceNumber" in by_id[a]["SequenceNumberRange"]
    assert "EndingSequenceNumber" not in by_id[c]["SequenceNumberRange"]
    # Parents list before children; a child's range starts after its parent's ends.
    order = [s["ShardId"] for s in full]
    for child in [*split, rolled]:
        parent = by_id[child]["ParentShardId"]
        assert order.index(parent) < order.index(child)
        assert int(by_id[child]["SequenceNumberRange"]["StartingSequenceNumber"]) > int(
            by_id[parent]["SequenceNumberRange"]["EndingSequenceNumber"]
        )


def test_one_key_stays_ordered_across_split_and_rollover(server: LocalStreamsServer, streams: Any) -> None:
    table = server.create_table("orders", [("pk", "S"), ("sk", "N")], shards=2)
    deser = TypeDeserializer()
    n = 0

    def write(count: int) -> None:
        nonlocal n
        for _ in range(count):
            table.put_item({"pk": "hot", "sk": n, "n": n})
            table.put_item({"pk": f"other-{n}", "sk": 0, "n": n})
            n += 1

    write(5)
    first = server.model.shard_for_key(table, {"S": "hot"})
    server.model.split_shard(table, first)
    write(5)
    second = server.model.shard_for_key(table, {"S": "hot"})
    assert server.model.stream(table.stream_arn).shards[second].parent_id == first
    server.model.rollover_all(table)
    write(5)
    third = server.model.shard_for_key(table, {"S": "hot"})
    assert len({first, second, third}) == 3
    # A plain value hashes differently from the item's typed key: refused rather than answered wrongly.
    with pytest.raises(TypeError, match="typed partition-key value"):
        server.model.shard_for_key(table, "hot")

    # A lineage-following consumer: a shard is read only once its parent has been read to its end.
    shards = list_all_shards(streams, table.stream_arn)
    finished: set[str] = set()
    hot: list[tuple[int, int]] = []
    pending = list(shards)
    while pending:
        for shard in list(pending):
            parent = shard.get("ParentShardId")
            if parent and parent not in finished:
                continue
            pending.remove(shard)
            sid = shard["ShardId"]
            is_closed = "EndingSequenceNumber" in shard["SequenceNumberRange"]
            records = (read_shard if is_closed else read_open_shard)(streams, table.stream_arn, sid)
            finished.add(sid)
            for r in records:
                keys = {k: deser.deserialize(v) for k, v in r["dynamodb"]["Keys"].items()}
                if keys["pk"] == "hot":
                    hot.append((int(r["dynamodb"]["SequenceNumber"]), int(keys["sk"])))
    assert [sk for _seq, sk in hot] == list(range(15))
    seqs = [seq for seq, _sk in hot]
    assert all(a < b for a, b in itertools.pairwise(seqs))


def test_empty_pages_mid_shard(server: LocalStreamsServer, streams: Any) -> None:
    table = server.create_table("empty", shards=1)
    for i in range(5):
        table.put_item({"pk": f"k{i}"})
    (shard_id,) = server.model.shard_ids(table)
    server.model.set_faults(empty_page_probability=1.0)
    it = streams.get_shard_iterator(StreamArn=table.stream_arn, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    for _ in range(3):
        page = streams.get_records(ShardIterator=it)
        assert page["Records"] == []
        it = page["NextShardIterator"]
    server.model.set_faults(empty_page_probability=0.0)
    page = streams.get_records(ShardIterator=it)
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in page["Records"]] == [f"k{i}" for i in range(5)]


def test_seeded_empty_pages_are_reproducible() -> None:
    def pattern() -> list[int]:
        with LocalStreamsServer(empty_page_probability=0.5, seed=42) as srv:
            table = srv.create_table("t")
            for i in range(20):
                table.put_item({"pk": f"k{i}"})
            client = srv.client()
            it = client.get_shard_iterator(
                StreamArn=table.stream_arn, ShardId=srv.model.shard_ids(table)[0], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            sizes = []
            for _ in range(6):
                page = client.get_records(ShardIterator=it, Limit=3)
                sizes.append(len(page["Records"]))
                it = page["NextShardIterator"]
            return sizes

    first = pattern()
    assert first == pattern()
    assert 0 in first and 3 in first


def test_closed_shard_end_and_open_shard_iterator(server: LocalStreamsServer, streams: Any) -> None:
    table = server.create_table("end", shards=1)
    (shard_id,) = server.model.shard_ids(table)
    it = streams.get_shard_iterator(StreamArn=table.stream_arn, ShardId=shard_id, ShardIteratorType="LATEST")[
        "ShardIterator"
    ]
    page = streams.get_records(ShardIterator=it)
    assert page["Records"] == [] and "NextShardIterator" in page  # open: always an iterator
    for i in range(3):
        table.put_item({"pk": f"k{i}", "v": i})
    server.model.rollover_shard(table, shard_id)
    it = page["NextShardIterator"]
    seen = []
    while True:
        page = streams.get_records(ShardIterator=it, Limit=1)
        seen.extend(page["Records"])
        if "NextShardIterator" not in page:
            break
        assert page["Records"], "a closed shard with records left never sends an empty page here"
        it = page["NextShardIterator"]
    assert len(seen) == 3
    # Disabling closes; an empty closed shard ends on the first call.
    child = server.model.shard_ids(table, open_only=True)[0]
    server.model.disable_stream(table)
    assert read_shard(streams, table.stream_arn, child) == []
    # LATEST on a closed shard ends at once too.
    assert read_shard(streams, table.stream_arn, shard_id, ShardIteratorType="LATEST") == []


def test_iterator_types_and_digit_boundary() -> None:
    with LocalStreamsServer(first_sequence_number=999999999999999999990, empty_page_probability=0) as srv:
        table = srv.create_table("seq", shards=1)
        client = srv.client()
        for i in range(15):
            table.put_item({"pk": "k", "v": i})
        (shard_id,) = srv.model.shard_ids(table)
        arn = table.stream_arn
        records = read_open_shard(client, arn, shard_id)
        seqs = [r["dynamodb"]["SequenceNumber"] for r in records]
        assert {len(s) for s in seqs} == {21, 22}
        assert [int(s) for s in seqs] == sorted(int(s) for s in seqs)
        assert seqs != sorted(seqs)  # string order would be wrong: consumers must compare as integers
        assert int(records[0]["dynamodb"]["SequenceNumber"]) > int(
            client.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["SequenceNumberRange"][
                "StartingSequenceNumber"
            ]
        )

        def first_after(kind: str, seq: str) -> str:
            it = client.get_shard_iterator(StreamArn=arn, ShardId=shard_id, ShardIteratorType=kind, SequenceNumber=seq)[
                "ShardIterator"
            ]
            return str(client.get_records(ShardIterator=it, Limit=1)["Records"][0]["dynamodb"]["SequenceNumber"])

        assert first_after("AT_SEQUENCE_NUMBER", seqs[7]) == seqs[7]
        assert first_after("AFTER_SEQUENCE_NUMBER", seqs[7]) == seqs[8]
        latest = client.get_shard_iterator(StreamArn=arn, ShardId=shard_id, ShardIteratorType="LATEST")
        table.put_item({"pk": "k", "v": 99})
        page = client.get_records(ShardIterator=latest["ShardIterator"])
        assert [r["dynamodb"]["NewImage"]["v"]["N"] for r in page["Records"]] == ["99"]


@pytest.mark.parametrize("view_type", ["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"])
def test_record_shape_per_view_type(server: LocalStreamsServer, streams: Any, view_type: str) -> None:
    table = server.create_table(f"v-{view_type}", [("pk", "S"), ("sk", "S")], view_type=view_type)
    table.put_item({"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"N": "1"}})
    table.update_item({"pk": "a", "sk": "1"}, {"v": 2, "tags": {"x", "y"}, "f": 1.5})
    table.delete_item({"pk": "a", "sk": "1"}, ttl=True)
    table.delete_item({"pk": "missing", "sk": "1"})  # nothing to delete: no record
    records = read_open_shard(streams, table.stream_arn, server.model.shard_ids(table)[0])
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    keys = {"pk": {"S": "a"}, "sk": {"S": "1"}}
    for r in records:
        assert set(r) >= {"eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb"}
        assert r["eventVersion"] == "1.1" and r["eventSource"] == "aws:dynamodb" and r["awsRegion"] == "us-east-1"
        ddb = r["dynamodb"]
        assert ddb["Keys"] == keys and ddb["StreamViewType"] == view_type and ddb["SizeBytes"] > 0
        assert ddb["ApproximateCreationDateTime"].year >= 2024
    new = view_type in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES")
    old = view_type in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES")
    assert [("NewImage" in r["dynamodb"]) for r in records] == [new, new, False]
    assert [("OldImage" in r["dynamodb"]) for r in records] == [False, old, old]
    if new:
        image = TypeDeserializer().deserialize({"M": records[1]["dynamodb"]["NewImage"]})
        assert image == {"pk": "a", "sk": "1", "v": 2, "tags": {"x", "y"}, "f": pytest.approx(1.5)}
    if old:
        assert records[2]["dynamodb"]["OldImage"]["v"] == {"N": "2"}
    assert "userIdentity" not in records[0]
    assert records[2]["userIdentity"] == {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}


def test_errors_come_through_botocore(server: LocalStreamsServer, streams: Any) -> None:
    table = server.create_table("err", shards=1)
    arn = table.stream_arn
    (shard_id,) = server.model.shard_ids(table)
    table.put_item({"pk": "a"})

    def it(kind: str = "TRIM_HORIZON", **kw: Any) -> str:
        return str(
            streams.get_shard_iterator(StreamArn=arn, ShardId=shard_id, ShardIteratorType=kind, **kw)["ShardIterator"]
        )

    cases: list[tuple[str, Any]] = [
        ("ResourceNotFoundException", lambda: streams.describe_stream(StreamArn=arn + "x")),
        (
            "ResourceNotFoundException",
            lambda: streams.get_shard_iterator(
                StreamArn=arn, ShardId="shardId-00000000000000000000-deadbeef", ShardIteratorType="LATEST"
            ),
        ),
        ("ValidationException", lambda: streams.get_records(ShardIterator=it(), Limit=1001)),
        ("ValidationException", lambda: streams.describe_stream(StreamArn=arn, Limit=101)),
        ("ValidationException", lambda: it("AT_SEQUENCE_NUMBER", SequenceNumber="1" + "0" * 30)),
        ("ValidationException", lambda: streams.get_records(ShardIterator="not-an-iterator-at-all")),
    ]
    for code, call in cases:
        with pytest.raises(ClientError) as exc:
            call()
        assert error_code(exc) == code, code
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError) as exc:
        it("AT_SEQUENCE_NUMBER", SequenceNumber="1" + "0" * 30)
    assert "not in the range of the shard" in exc.value.response["Error"]["Message"]

    # InternalServerError, HTTP 500.
    server.model.set_faults(internal_error_rate=1.0)
    with pytest.raises(ClientError) as exc:
        streams.describe_stream(StreamArn=arn)
    assert error_code(exc) == "InternalServerError"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    server.model.set_faults(internal_error_rate=0.0)

    # LimitExceededException: at most 2 GetRecords per shard per second.
    server.model.set_faults(get_records_per_shard_per_s=2)
    iterator = it()
    streams.get_records(ShardIterator=iterator)
    streams.get_records(ShardIterator=iterator)
    with pytest.raises(ClientError) as exc:
        streams.get_records(ShardIterator=iterator)
    assert error_code(exc) == "LimitExceededException"
    server.model.set_faults(get_records_per_shard_per_s=None, describe_stream_per_s=1)
    streams.describe_stream(StreamArn=arn)
    with pytest.raises(ClientError) as exc:
        streams.describe_stream(StreamArn=arn)
    assert error_code(exc) == "LimitExceededException"
    server.model.set_faults(describe_stream_per_s=None)

    # ExpiredIteratorException.
    server.model.set_faults(iterator_ttl_s=0.2)
    iterator = it()
    time.sleep(0.3)
    with pytest.raises(ClientError) as exc:
        streams.get_records(ShardIterator=iterator)
    assert error_code(exc) == "ExpiredIteratorException"
    server.model.set_faults(iterator_ttl_s=900)

    # TrimmedDataAccessException: an old iterator and an old sequence number.
    iterator = it()
    seq = streams.get_records(ShardIterator=iterator)["Records"][0]["dynamodb"]["SequenceNumber"]
    table.put_item({"pk": "b"})
    assert server.model.trim(table, before=time.time()) == 2
    table.put_item({"pk": "c"})
    with pytest.raises(ClientError) as exc:
        streams.get_records(ShardIterator=iterator)
    assert error_code(exc) == "TrimmedDataAccessException"
    with pytest.raises(ClientError) as exc:
        it("AT_SEQUENCE_NUMBER", SequenceNumber=seq)
    assert error_code(exc) == "TrimmedDataAccessException"
    records = streams.get_records(ShardIterator=it())["Records"]  # TRIM_HORIZON skips the trimmed data
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in records] == ["c"]


def test_trimmed_closed_shard_disappears(server: LocalStreamsServer, streams: Any) -> None:
    table = server.create_table("gone", shards=1)
    (old,) = server.model.shard_ids(table)
    table.put_item({"pk": "a"})
    new = server.model.rollover_shard(table, old)
    server.model.trim(table, before=time.time() + 1)
    shards = list_all_shards(streams, table.stream_arn)
    assert [s["ShardId"] for s in shards] == [new]
    assert shards[0]["ParentShardId"] == old  # the parent id stays, pointing at a shard that is gone
    with pytest.raises(ClientError) as exc:
        streams.get_shard_iterator(StreamArn=table.stream_arn, ShardId=old, ShardIteratorType="TRIM_HORIZON")
    assert error_code(exc) == "ResourceNotFoundException"


def test_parent_listed_open_while_child_exists(server: LocalStreamsServer, streams: Any) -> None:
    server.model.set_faults(parent_end_delay_s=0.3)
    table = server.create_table("lag", shards=1)
    (parent,) = server.model.shard_ids(table)
    table.put_item({"pk": "a"})
    child = server.model.rollover_shard(table, parent)
    shards = {s["ShardId"]: s for s in list_all_shards(streams, table.stream_arn)}
    assert shards[child]["ParentShardId"] == parent
    assert "EndingSequenceNumber" not in shards[parent]["SequenceNumberRange"]
    assert len(read_shard(streams, table.stream_arn, parent)) == 1  # reading still ends it
    time.sleep(0.35)
    shards = {s["ShardId"]: s for s in list_all_shards(streams, table.stream_arn)}
    assert "EndingSequenceNumber" in shards[parent]["SequenceNumberRange"]


def test_describe_table_disable_enable_list_streams(server: LocalStreamsServer, streams: Any) -> None:
    ddb = server.client("dynamodb")
    table = server.create_table("tbl", [("pk", "S"), ("sk", "N")], view_type="NEW_IMAGE", shards=2)
    server.create_table("other")
    desc = ddb.describe_table(TableName="tbl")["Table"]
    assert desc["LatestStreamArn"] == table.stream_arn
    assert desc["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    assert desc["TableStatus"] == "ACTIVE" and desc["TableName"] == "tbl"
    assert desc["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    with pytest.raises(ClientError) as exc:
        ddb.describe_table(TableName="nope")
    assert error_code(exc) == "ResourceNotFoundException"

    first = table.stream_arn
    server.model.disable_stream(table)
    d = streams.describe_stream(StreamArn=first)["StreamDescription"]
    assert d["StreamStatus"] == "DISABLED"
    assert all("EndingSequenceNumber" in s["SequenceNumberRange"] for s in d["Shards"])
    desc = ddb.describe_table(TableName="tbl")["Table"]
    assert desc["StreamSpecification"]["StreamEnabled"] is False and desc["LatestStreamArn"] == first
    assert table.put_item({"pk": "a", "sk": 1}) is None  # no stream, no record
    second = server.model.enable_stream(table)
    assert second != first and ddb.describe_table(TableName="tbl")["Table"]["LatestStreamArn"] == second

    listed = streams.list_streams(TableName="tbl")["Streams"]
    assert [s["StreamArn"] for s in listed] == [first, second]
    assert all(s["TableName"] == "tbl" and s["StreamLabel"] for s in listed)
    page = streams.list_streams(Limit=1)
    assert len(page["Streams"]) == 1 and "LastEvaluatedStreamArn" in page
    arns = [s["StreamArn"] for s in page["Streams"]]
    while "LastEvaluatedStreamArn" in page:
        page = streams.list_streams(Limit=1, ExclusiveStartStreamArn=page["LastEvaluatedStreamArn"])
        arns += [s["StreamArn"] for s in page["Streams"]]
    assert len(arns) == 3 and set(arns) >= {first, second}


def test_page_caps(server: LocalStreamsServer, streams: Any) -> None:
    table = server.create_table("caps", shards=1)
    blob = "x" * 2000
    for i in range(1200):
        table.put_item({"pk": f"k{i}", "blob": blob})
    it = streams.get_shard_iterator(
        StreamArn=table.stream_arn, ShardId=server.model.shard_ids(table)[0], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    raw = streams.get_records(ShardIterator=it)
    assert 400 < len(raw["Records"]) < 1000  # 1 MB cap
    small = server.create_table("caps2", shards=1)
    for i in range(1200):
        small.put_item({"pk": f"k{i}"})
    it = streams.get_shard_iterator(
        StreamArn=small.stream_arn, ShardId=server.model.shard_ids(small)[0], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    page = streams.get_records(ShardIterator=it)
    assert len(page["Records"]) == 1000
    assert len(streams.get_records(ShardIterator=page["NextShardIterator"])["Records"]) == 200


def test_concurrent_readers_and_writer(server: LocalStreamsServer) -> None:
    table = server.create_table("conc", shards=16)
    total = 2000
    done = threading.Event()

    def writer() -> None:
        for i in range(total):
            table.put_item({"pk": f"k{i}", "i": i})
        done.set()

    seen: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def reader(shard_ids: list[str]) -> None:
        try:
            client = server.client()
            its = {
                sid: client.get_shard_iterator(
                    StreamArn=table.stream_arn, ShardId=sid, ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
                for sid in shard_ids
            }
            idle_after_done = 0
            while idle_after_done < 2:
                finished = done.is_set()
                got = 0
                for sid in shard_ids:
                    page = client.get_records(ShardIterator=its[sid])
                    its[sid] = page["NextShardIterator"]
                    got += len(page["Records"])
                    with lock:
                        seen.extend(int(r["dynamodb"]["NewImage"]["i"]["N"]) for r in page["Records"])
                if finished and not got:
                    idle_after_done += 1
        except BaseException as exc:
            errors.append(exc)

    ids = server.model.shard_ids(table)
    threads = [threading.Thread(target=reader, args=(ids[i::4],)) for i in range(4)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert sorted(seen) == list(range(total))


def test_admin_http_ops_and_ddb_writes(server: LocalStreamsServer, streams: Any) -> None:
    def admin(op: str, params: dict[str, Any]) -> Any:
        body = json.dumps(params).encode()
        req = urllib.request.Request(
            server.endpoint_url,
            data=body,
            headers={"X-Amz-Target": f"ShardleaseLocal.{op}", "Content-Type": "application/x-amz-json-1.0"},
        )
        with urllib.request.urlopen(req) as resp:
            return json.loads(resp.read())

    created = admin("CreateTable", {"TableName": "adm", "KeySchema": [["pk", "S"]], "Shards": 2})
    arn = created["StreamArn"]
    shard_ids = admin("ListShards", {"TableName": "adm"})["ShardIds"]
    kids = admin("SplitShard", {"StreamArn": arn, "ShardId": shard_ids[0]})
    assert len(kids["ChildShardIds"]) == 2
    admin("PutItem", {"TableName": "adm", "Item": {"pk": {"S": "a"}}})
    admin("SetFaults", {"empty_page_probability": 0.0})
    ddb = server.client("dynamodb")
    ddb.put_item(TableName="adm", Item={"pk": {"S": "a"}, "v": {"N": "1"}})
    ddb.delete_item(TableName="adm", Key={"pk": {"S": "a"}})
    shard = server.model.shard_for_key(arn, {"S": "a"})
    records = read_open_shard(streams, arn, shard)
    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    assert len(list_all_shards(streams, arn)) == 4


def test_env_endpoint_variable_reaches_server(server: LocalStreamsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    table = server.create_table("env")
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    client = boto3.client("dynamodbstreams", region_name="us-east-1")
    assert client.describe_stream(StreamArn=table.stream_arn)["StreamDescription"]["TableName"] == "env"


def test_python_m_worker_local_runs_standalone() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.local", "--port", "0", "--table", "cli", "--shards", "3"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        url, arn = proc.stdout.readline().split()
        client = boto3.client(
            "dynamodbstreams",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="y",
            config=NO_RETRY,
        )
        assert len(client.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"]) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        if proc.stdout is not None:
            proc.stdout.close()
