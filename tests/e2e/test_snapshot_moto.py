"""The snapshot end to end against moto in server mode: its real Scan (segments, pages) and its stream.

moto keeps one fixed shard per table (no splits or rollovers) and reports no consumed capacity, so this
test checks the promise on a third-party Scan and stream with concurrent writes and a SIGKILL, while the
local-endpoint tests (test_snapshot.py) add the topology changes, the SIGTERM handoff and the retention.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
import redis
from botocore.config import Config

from leaser.snapshot import SnapshotStore
from tests.e2e.fleet import Fleet
from tests.e2e.sink_handler import _plain
from tests.e2e.test_snapshot import SINK, check_journal
from worker.reading.records import from_typed_item

pytestmark = pytest.mark.e2e


def ddb_client(url: str) -> Any:
    return boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing", config=Config(retries={"total_max_attempts": 3}))


def all_items(ddb: Any) -> dict[str, dict[str, Any]]:
    items: dict[str, dict[str, Any]] = {}
    for page in ddb.get_paginator("scan").paginate(TableName="items", ConsistentRead=True):
        for item in page["Items"]:
            items[item["pk"]["S"]] = _plain(from_typed_item(item))
    return items


def test_snapshot_against_moto_converges_through_writes_and_a_sigkill(
    tmp_path: Path, redis_url: str, group: str, moto_url: str
) -> None:
    ddb = ddb_client(moto_url)
    ddb.create_table(TableName="items", KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                     AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                     BillingMode="PAY_PER_REQUEST")
    for start in range(0, 1_500, 25):
        puts = [{"PutRequest": {"Item": {"pk": {"S": f"k{i:05d}"}, "v": {"N": str(i)}}}}
                for i in range(start, start + 25)]
        ddb.batch_write_item(RequestItems={"items": puts})
    ddb.update_table(TableName="items",
                     StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"})
    arn = ddb.describe_table(TableName="items")["Table"]["LatestStreamArn"]

    stop = threading.Event()

    def churn() -> None:
        writer, rng, version = ddb_client(moto_url), random.Random(3), 1_000_000
        while not stop.is_set():
            version += 1
            pk = {"S": f"k{rng.randrange(1_650):05d}"}
            if rng.random() < 0.15:
                writer.delete_item(TableName="items", Key={"pk": pk})
            else:
                writer.put_item(TableName="items", Item={"pk": pk, "v": {"N": str(version)}})
            time.sleep(0.005)

    sink_key = f"sink:{group}"
    client = redis.Redis.from_url(redis_url)
    fleet = Fleet(tmp_path, redis_url, moto_url, arn, group, snapshot="true",
                  **{"snapshot-segments": "6", "batch-size": "50", "idle-poll-interval": "0.2"})
    env = {"SHARDLEASE_TEST_SINK_URL": redis_url, "SHARDLEASE_TEST_SINK_KEY": sink_key,
           "SHARDLEASE_TEST_SLOW_S": "0"}
    store = SnapshotStore(redis.Redis.from_url(redis_url, decode_responses=True), group)
    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for name in ("w1", "w2", "w3"):
            fleet.start(name, handler=SINK, **env)
        deadline = time.monotonic() + 30
        while store.state().pages < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        fleet.signal("w3", signal.SIGKILL)
        deadline = time.monotonic() + 60
        while store.state().status != "done" and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)
    finally:
        stop.set()
        writer.join()
    try:
        deadline = time.monotonic() + 60
        while True:
            want = all_items(ddb)
            got = {k.decode(): orjson.loads(v) for k, v in client.hgetall(sink_key).items()}
            if want == got or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        fleet.stop_all()
    assert store.state().status == "done"
    differ = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))
    assert not differ, f"{len(differ)} keys differ between the sink and the table, e.g. {differ[:5]}"
    assert check_journal(client, sink_key) >= 1_200
