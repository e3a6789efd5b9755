"""The local endpoint's Scan (docs/snapshot.md): segments, pages, capacity, throttling, over boto3."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from worker.local import LocalStreamsServer


def scan_all(client: object, table: str, segment: int, total: int, limit: int) -> tuple[list[str], int, float]:
    keys: list[str] = []
    pages, units = 0, 0.0
    start = None
    while True:
        kwargs = {"TableName": table, "Segment": segment, "TotalSegments": total, "Limit": limit,
                  "ConsistentRead": True, "ReturnConsumedCapacity": "TOTAL"}
        if start:
            kwargs["ExclusiveStartKey"] = start
        page = client.scan(**kwargs)  # type: ignore[attr-defined]
        pages += 1
        units += page["ConsumedCapacity"]["CapacityUnits"]
        keys += [item["pk"]["S"] for item in page["Items"]]
        start = page.get("LastEvaluatedKey")
        if not start:
            return keys, pages, units


def test_segments_partition_the_table_and_pages_follow_the_key_order() -> None:
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("t")
        for i in range(1_000):
            table.put_item({"pk": f"k{i:04d}", "v": i})
        client = server.client("dynamodb")
        seen: list[str] = []
        for segment in range(4):
            keys, pages, units = scan_all(client, "t", segment, 4, 100)
            assert keys == sorted(keys) and 150 < len(keys) < 350
            assert pages == len(keys) // 100 + 1 and units >= pages
            seen += keys
        assert sorted(seen) == [f"k{i:04d}" for i in range(1_000)]
        # A page continues after its start key even when that item was deleted meanwhile.
        segment0 = scan_all(client, "t", 0, 4, 1_000)[0]
        first = client.scan(TableName="t", Segment=0, TotalSegments=4, Limit=10)
        assert [i["pk"]["S"] for i in first["Items"]] == segment0[:10]
        table.delete_item({"pk": segment0[9]})
        rest = client.scan(TableName="t", Segment=0, TotalSegments=4, ExclusiveStartKey=first["LastEvaluatedKey"])
        assert [i["pk"]["S"] for i in rest["Items"]] == segment0[10:]


def test_pages_end_at_one_megabyte_and_scans_are_throttled() -> None:
    with LocalStreamsServer(port=0, scan_units_per_s=300) as server:
        table = server.create_table("t")
        for i in range(300):
            table.put_item({"pk": f"k{i:04d}", "blob": "x" * 10_000})
        client = server.client("dynamodb")
        page = client.scan(TableName="t", ReturnConsumedCapacity="TOTAL", ConsistentRead=True)
        assert 90 < page["Count"] < 110 and "LastEvaluatedKey" in page  # 1 MB of 10 KB items
        assert page["ConsumedCapacity"]["CapacityUnits"] == pytest.approx(page["Count"] * 10_030 / 4096, rel=0.05)
        client.scan(TableName="t", ExclusiveStartKey=page["LastEvaluatedKey"], ConsistentRead=True)
        with pytest.raises(ClientError) as info:
            client.scan(TableName="t", ConsistentRead=True)
        assert info.value.response["Error"]["Code"] == "ProvisionedThroughputExceededException"
        with pytest.raises(ClientError):
            client.scan(TableName="t", Segment=4, TotalSegments=4)
