"""The consumer path against a third-party implementation: moto in server mode.

moto keeps one fixed shard per table; it is used here to check that the consumer path (DescribeStream,
GetShardIterator, GetRecords, TypeDeserializer) and our local endpoint's record shape agree with it.
"""

from __future__ import annotations

from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config

from worker.local import LocalStreamsServer

REGION = "us-east-1"
CONFIG = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=REGION,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=CONFIG,
    )


def write_sequence(ddb: Any, table: str) -> None:
    """The same writes for both implementations: INSERT, MODIFY (via UpdateItem), REMOVE."""
    ddb.put_item(TableName=table, Item={"pk": {"S": "a"}, "sk": {"S": "1"}, "v": {"N": "1"}})
    ddb.update_item(
        TableName=table,
        Key={"pk": {"S": "a"}, "sk": {"S": "1"}},
        AttributeUpdates={"v": {"Action": "PUT", "Value": {"N": "2"}}},
    )
    ddb.delete_item(TableName=table, Key={"pk": {"S": "a"}, "sk": {"S": "1"}})


def read_all(streams: Any, arn: str) -> list[dict[str, Any]]:
    """Consumer path: list shards (paginated), read each from TRIM_HORIZON until an empty page."""
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamArn": arn}
    while True:
        desc = streams.describe_stream(**kwargs)["StreamDescription"]
        shards += desc["Shards"]
        if "LastEvaluatedShardId" not in desc:
            break
        kwargs["ExclusiveStartShardId"] = desc["LastEvaluatedShardId"]
    records: list[dict[str, Any]] = []
    for shard in shards:
        it = streams.get_shard_iterator(StreamArn=arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
        for _ in range(100):
            page = streams.get_records(ShardIterator=it)
            records += page["Records"]
            it = page.get("NextShardIterator")
            if not page["Records"] or it is None:
                break
    return sorted(records, key=lambda r: int(r["dynamodb"]["SequenceNumber"]))


def moto_records(moto_url: str, table: str) -> list[dict[str, Any]]:
    ddb = client("dynamodb", moto_url)
    ddb.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )
    write_sequence(ddb, table)
    arn = ddb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
    return read_all(client("dynamodbstreams", moto_url), arn)


def test_consumer_path_against_moto(moto_url: str) -> None:
    records = moto_records(moto_url, "moto-orders")
    deser = TypeDeserializer()

    def image(r: dict[str, Any], name: str) -> dict[str, Any] | None:
        raw = r["dynamodb"].get(name)
        return None if raw is None else {k: deser.deserialize(v) for k, v in raw.items()}

    assert [r["eventName"] for r in records] == ["INSERT", "MODIFY", "REMOVE"]
    assert all(image(r, "Keys") == {"pk": "a", "sk": "1"} for r in records)
    assert image(records[0], "NewImage") == {"pk": "a", "sk": "1", "v": 1}
    assert image(records[0], "OldImage") is None
    assert image(records[1], "OldImage") == {"pk": "a", "sk": "1", "v": 1}
    assert image(records[1], "NewImage") == {"pk": "a", "sk": "1", "v": 2}
    assert image(records[2], "OldImage") == {"pk": "a", "sk": "1", "v": 2}
    assert image(records[2], "NewImage") is None
    assert all(r["eventSource"] == "aws:dynamodb" for r in records)


def shape(records: list[dict[str, Any]]) -> list[tuple[str, frozenset[str], frozenset[str]]]:
    return [(r["eventName"], frozenset(r), frozenset(r["dynamodb"])) for r in records]


def test_local_record_shape_matches_moto(moto_url: str) -> None:
    expected = moto_records(moto_url, "moto-shape")
    with LocalStreamsServer(empty_page_probability=0.0) as local:
        local.create_table("local-shape", [("pk", "S"), ("sk", "S")], shards=3)
        write_sequence(local.client("dynamodb"), "local-shape")
        arn = local.client("dynamodb").describe_table(TableName="local-shape")["Table"]["LatestStreamArn"]
        got = read_all(local.client(), arn)
    assert shape(got) == shape(expected), (shape(got), shape(expected))
    for ours, theirs in zip(got, expected, strict=True):
        for field in ("Keys", "NewImage", "OldImage", "StreamViewType"):
            assert ours["dynamodb"].get(field) == theirs["dynamodb"].get(field), field
        # Values may differ: moto sends eventVersion "1.0", AWS "1.1"; consumers must not assume one.
        assert isinstance(ours["eventVersion"], str) and isinstance(theirs["eventVersion"], str)
