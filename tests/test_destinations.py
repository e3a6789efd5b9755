"""On-failure destinations against real services: Redis (throwaway server), SQS (moto), a JSON-lines file."""

from __future__ import annotations

import base64
import logging
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from leaser.errors import ConfigError, CoordinationUnavailable
from worker.handling.destinations import (
    ON_FAILURE_SETTING,
    Destination,
    DestinationFailed,
    FailureEntry,
    JsonLinesDestination,
    NoDestination,
    RedisStreamDestination,
    SqsDestination,
    open_destination,
)
from worker.reading.records import Record

SHARD = "shardId-00000001700000000000-abcdef01"
ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-01-01T00:00:00.000"


def wire(seq: int, *, pad: int = 0) -> dict[str, Any]:
    keys = {"pk": {"S": f"ORDER#{seq}"}, "sk": {"N": "7"}}
    new = {**keys, "total": {"N": "12.50"}, "blob": {"B": base64.b64encode(b"\x00\x01\xff").decode()},
           "note": {"S": "ünïcødé \u2028 \"quoted\"\n" + "x" * pad}, "nested": {"M": {"l": {"L": [{"NULL": True}]}}}}
    return {
        "eventID": f"ev-{seq}",
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1714566896.123,
            "Keys": keys,
            "NewImage": new,
            "OldImage": {**keys, "total": {"N": "10"}, "tags": {"SS": ["a", "b"]}},
            "SequenceNumber": str(100000000000000000000 + seq),
            "SizeBytes": 57 + pad,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
    }


def entry(n: int = 3, *, group: str = "g", pad: int = 0, start: int = 1) -> FailureEntry:
    raws = [wire(start + i, pad=pad) for i in range(n)]
    return FailureEntry.create(
        [Record.from_wire(r, SHARD) for r in raws], group=group, stream_arn=ARN, shard_id=SHARD, attempts=4,
        reason="retries_exhausted", error=ValueError("boom\nsecond line " + "y" * 5000), worker_id="w-1",
    )


# --- The entry ------------------------------------------------------------------------------------


def test_entry_fields_and_json_round_trip() -> None:
    e = entry(3)
    assert e.first_sequence_number == "100000000000000000001"
    assert e.last_sequence_number == "100000000000000000003"
    assert e.record_count == 3 and e.attempts == 4 and e.id == ""
    assert e.error_type == "ValueError"
    assert "\n" not in e.error and e.error.startswith("boom second line") and len(e.error) <= 1000
    assert e.failed_at.endswith("Z") and "T" in e.failed_at
    back = FailureEntry.from_json(e.to_json())
    assert back == e
    assert back.records == [wire(i) for i in (1, 2, 3)]
    assert "records" not in e.metadata()


def test_entry_stores_botocore_parsed_values_in_wire_form() -> None:
    from datetime import UTC, datetime

    raw = wire(1)
    raw["dynamodb"]["ApproximateCreationDateTime"] = datetime.fromtimestamp(1714566896, UTC)
    raw["dynamodb"]["NewImage"]["blob"] = {"B": b"\x00\x01"}
    e = FailureEntry.create([raw], group="g", stream_arn=ARN, shard_id=SHARD, attempts=1, reason="record_too_old",
                            error="too old", worker_id="w")
    back = FailureEntry.from_json(e.to_json())
    rec = Record.from_wire(back.records[0], SHARD)
    assert rec.approximate_creation_time == datetime.fromtimestamp(1714566896, UTC)
    assert rec.new_image is not None and rec.new_image["blob"] == b"\x00\x01"


# --- Redis ---------------------------------------------------------------------------------------------


def test_redis_stream_send_list_delete(redis_client: redis.Redis, group: str) -> None:
    dest = RedisStreamDestination(redis_client, group)
    assert isinstance(dest, Destination)
    ids = [dest.send(entry(2, group=group, start=10 * i)) for i in range(1, 4)]
    assert all(ids) and len(set(ids)) == 3
    assert dest.key == f"shardlease:{{{group}}}:dlq"
    assert redis_client.xlen(dest.key) == 3
    (_, fields), = redis_client.xrange(dest.key, count=1)
    assert fields["shard"] == SHARD and fields["reason"] == "retries_exhausted"
    assert fields["first_seq"] == "100000000000000000010" and fields["records"] == "2"

    listed = dest.list(limit=10)
    assert [e.id for e in listed] == ids
    assert listed[0].records == [wire(10), wire(11)]  # full records, unchanged
    assert [e.id for e in dest.list(limit=1, start_id=ids[1])] == [ids[1]]
    assert [e.id for e in dest.iter_entries(batch=1)] == ids
    assert set(dest.get([ids[2], "1-1"])) == {ids[2]}

    assert dest.delete([ids[0], ids[1]]) == 2
    assert [e.id for e in dest.list()] == [ids[2]]
    assert dest.count() == 1


def test_redis_stream_is_trimmed_approximately(redis_client: redis.Redis, group: str) -> None:
    dest = RedisStreamDestination(redis_client, group, maxlen=10)
    small = entry(1, group=group)
    for _ in range(300):
        dest.send(small)
    assert 10 <= redis_client.xlen(dest.key) < 300


def test_redis_stream_with_bytes_client(redis_url: str, group: str, redis_client: redis.Redis) -> None:
    raw_client = redis.Redis.from_url(redis_url)  # decode_responses=False
    try:
        dest = RedisStreamDestination(raw_client, group)
        sent = dest.send(entry(2, group=group))
        (got,) = dest.list()
        assert got.id == sent and got.records == [wire(1), wire(2)]
    finally:
        raw_client.close()


def test_redis_errors_are_retryable(group: str) -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with pytest.raises(CoordinationUnavailable):
        RedisStreamDestination(dead, group).send(entry(1))


# --- SQS (moto) ------------------------------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    from moto import mock_aws

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        import boto3

        yield boto3.client("sqs", region_name="us-east-1")


def _receive_all(sqs: Any, url: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageAttributeNames=["All"])
        if not got.get("Messages"):
            return out
        out.extend(got["Messages"])


def test_sqs_by_url_and_by_arn(aws: Any) -> None:
    url = aws.create_queue(QueueName="dlq-test")["QueueUrl"]
    arn = aws.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    by_url = SqsDestination(url, region="us-east-1")
    by_arn = SqsDestination(arn)
    e = entry(3)
    id1 = by_url.send(e)
    id2 = by_arn.send(e)
    assert by_arn.queue_url == url
    messages = _receive_all(aws, url)
    assert {m["MessageId"] for m in messages} == {id1, id2}
    for m in messages:
        got = FailureEntry.from_json(m["Body"])
        assert got == e and got.records == [wire(1), wire(2), wire(3)]
        assert m["MessageAttributes"]["shard_id"]["StringValue"] == SHARD


def test_sqs_oversized_entry_is_split_into_complete_parts(aws: Any) -> None:
    url = aws.create_queue(QueueName="dlq-big")["QueueUrl"]
    dest = SqsDestination(url, region="us-east-1")
    e = entry(12, pad=60_000)  # ~720 KB of records
    assert len(e.to_json()) > 256 * 1024
    ids = dest.send(e).split(",")
    assert len(ids) >= 3
    messages = _receive_all(aws, url)
    assert {m["MessageId"] for m in messages} == set(ids)
    parts = sorted((FailureEntry.from_json(m["Body"]) for m in messages), key=lambda p: p.part)
    for m in messages:
        assert len(m["Body"].encode()) <= 256 * 1024
    assert [p.part for p in parts] == list(range(1, len(ids) + 1))
    assert {p.parts for p in parts} == {len(ids)}
    assert [r for p in parts for r in p.records] == e.records  # every record, in order, unchanged
    for p in parts:
        assert p.record_count == len(p.records)
        assert p.first_sequence_number == p.records[0]["dynamodb"]["SequenceNumber"]
        assert p.last_sequence_number == p.records[-1]["dynamodb"]["SequenceNumber"]
        assert (p.group, p.shard_id, p.reason, p.error, p.attempts) == (e.group, e.shard_id, e.reason, e.error, 4)


def test_sqs_single_record_too_large_is_sent_without_it(aws: Any) -> None:
    url = aws.create_queue(QueueName="dlq-huge")["QueueUrl"]
    dest = SqsDestination(url, region="us-east-1")
    e = FailureEntry.create([wire(1), wire(2, pad=300_000), wire(3)], group="g", stream_arn=ARN, shard_id=SHARD,
                            attempts=1, reason="retries_exhausted", error="x", worker_id="w")
    parts = dest.split(e)
    assert [(p.record_count, p.truncated, len(p.records)) for p in parts] == [(1, False, 1), (1, True, 0),
                                                                            (1, False, 1)]
    assert parts[1].first_sequence_number == "100000000000000000002"
    assert len(dest.send(e).split(",")) == 3


def test_sqs_missing_queue_is_fatal(aws: Any) -> None:
    dest = SqsDestination("arn:aws:sqs:us-east-1:123456789012:nope")
    with pytest.raises(DestinationFailed, match="nope"):
        dest.send(entry(1))


def test_sqs_bad_queue_is_config_error() -> None:
    with pytest.raises(ConfigError, match="on_failure"):
        SqsDestination("not-a-queue", region="us-east-1")


# --- JSON lines ------------------------------------------------------------------------------------


def test_jsonl_send_list_replayed_sidecar(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    dest = JsonLinesDestination(path, fsync=True)
    ids = [dest.send(entry(2, start=10 * i)) for i in range(1, 4)]
    assert ids[0] == "0" and all(i.isdigit() for i in ids)
    lines = path.read_bytes().splitlines(keepends=True)
    assert [str(sum(len(x) for x in lines[:i])) for i in range(3)] == ids
    listed = dest.list()
    assert [e.id for e in listed] == ids
    assert listed[1].records == [wire(20), wire(21)]
    assert [e.id for e in dest.list(start_id=ids[1])] == ids[1:]
    before = path.read_bytes()
    assert dest.delete([ids[1]]) == 1
    assert path.read_bytes() == before  # never rewritten
    assert (tmp_path / "dead.jsonl.replayed").read_text() == f"{ids[1]}\n"
    assert [e.id for e in dest.list()] == [ids[0], ids[2]]
    assert set(dest.get([*ids, "1", "999999"])) == {ids[0], ids[2]}  # replayed ones and non-ids are not found
    with path.open("ab") as fh:
        fh.write(b'{"group": "half a line')  # a writer mid-line: ignored
    assert [e.id for e in dest.list()] == [ids[0], ids[2]]


def _append_many(path: str, who: int, count: int) -> None:
    dest = JsonLinesDestination(path)
    for i in range(count):
        dest.send(entry(3, pad=3000 * (i % 5), start=who * 1000 + i))


def test_jsonl_two_processes_append_without_interleaving(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.jsonl")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, who, 40)) for who in (1, 2)]
    threads = [threading.Thread(target=_append_many, args=(path, who, 40)) for who in (3, 4)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = JsonLinesDestination(path).list(limit=1000)
    assert len(entries) == 160
    for who in (1, 2, 3, 4):
        mine = [e for e in entries if int(e.first_sequence_number) // 1000 % 1000 == who]
        assert sorted(int(e.first_sequence_number) % 1000 for e in mine) == list(range(40))
        for e in mine:
            start = int(e.first_sequence_number) - 100000000000000000000
            assert e.records == [wire(start + k, pad=3000 * ((start % 1000) % 5)) for k in range(3)]
    for line in Path(path).read_bytes().splitlines():
        orjson.loads(line)


# --- none and open_destination -----------------------------------------------------------------------


def test_no_destination_logs_metadata_only(caplog: pytest.LogCaptureFixture) -> None:
    e = entry(2)
    with caplog.at_level(logging.ERROR, logger="worker.handling.destinations"):
        assert NoDestination().send(e) == ""
    text = caplog.text
    assert SHARD in text and "100000000000000000001" in text and "retries_exhausted" in text
    assert "ORDER#" not in text and "12.50" not in text


def test_open_destination(redis_client: redis.Redis, group: str, tmp_path: Path, aws: Any) -> None:
    assert isinstance(open_destination("redis", redis_client=redis_client, group=group), RedisStreamDestination)
    assert isinstance(open_destination(" NONE ", redis_client=None, group=group), NoDestination)
    f = open_destination(f"file:{tmp_path}/x.jsonl", redis_client=None, group=group)
    assert isinstance(f, JsonLinesDestination) and f.path == f"{tmp_path}/x.jsonl"
    s = open_destination("sqs:arn:aws:sqs:us-east-1:123456789012:q", redis_client=None, group=group,
                         region="us-east-1")
    assert isinstance(s, SqsDestination)
    for bad in ("kafka:topic", "sqs:", "", "redisx"):
        with pytest.raises(ConfigError) as info:
            open_destination(bad, redis_client=redis_client, group=group)
        assert str(info.value).startswith(ON_FAILURE_SETTING) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="on_failure"):
        open_destination("redis", redis_client=None, group=group)


def test_open_destination_file_relative_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    d = open_destination("file:~/d.jsonl", redis_client=None, group="g")
    assert isinstance(d, JsonLinesDestination) and d.path == os.path.join(str(tmp_path), "d.jsonl")
