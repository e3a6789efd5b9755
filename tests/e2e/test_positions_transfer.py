"""Export then import into a new group, and import from a KCL lease table (in moto's DynamoDB): a fleet
resumes from the imported positions with nothing lost and nothing handled again."""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import redis

from leaser import SHARD_END, LeaseStore
from tests.e2e.fleet import Fleet, Writer, check_order_per_key
from worker.cli import main
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def moto_dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", url)  # the lease table's endpoint (the stream's is local)
    try:
        yield url
    finally:
        server.stop()


def _kcl_table(url: str, name: str, leases: dict[str, dict[str, object]]) -> None:
    """A lease table as KCL 2/3 and the DynamoDB Streams Kinesis Adapter write it."""
    client = boto3.client("dynamodb", endpoint_url=url, region_name="us-east-1")
    client.create_table(TableName=name, KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
                        AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                        BillingMode="PAY_PER_REQUEST")
    for shard_id, lease in leases.items():
        item: dict[str, object] = {
            "leaseKey": {"S": shard_id}, "checkpoint": {"S": lease["checkpoint"]},
            "checkpointSubSequenceNumber": {"N": "0"}, "leaseCounter": {"N": "17"},
            "leaseOwner": {"S": "kcl-worker-1"}, "ownerSwitchesSinceCheckpoint": {"N": "0"},
        }
        if lease.get("parent"):
            item["parentShardId"] = {"SS": [str(lease["parent"])]}
        client.put_item(TableName=name, Item=item)  # type: ignore[arg-type]


def test_export_import_and_import_kcl_resume_with_nothing_lost_and_nothing_redone(
    tmp_path: Path, redis_url: str, group: str, redis_client: redis.Redis, moto_dynamodb: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with LocalStreamsServer(port=0, seed=7) as server:
        table = server.create_table("orders", shards=2)
        model = server.model
        for name in ("a", "b", "c"):
            (tmp_path / name).mkdir()
        source = Fleet(tmp_path / "a", redis_url, server.endpoint_url, table.stream_arn, group)
        source.start("a1")
        with Writer(table, keys=10) as first:
            time.sleep(1.5)
            model.split_shard(table, model.shard_ids(table, open_only=True)[0])
            model.split_shard(table, model.shard_ids(table, open_only=True)[0])  # the other original shard
            time.sleep(1.0)
        source.wait_for(set(first.written))
        assert source.stop_all() == {"a1": 0}
        # A split after the old consumer stopped: its children were never read (KCL: TRIM_HORIZON).
        model.split_shard(table, model.shard_ids(table, open_only=True)[0])

        def cli(target: str, *args: str) -> int:
            return main(["checkpoint", *args, "--group", target, "--redis-url", redis_url,
                         "--stream-arn", table.stream_arn, "--endpoint-url", server.endpoint_url])

        capsys.readouterr()
        assert cli(group, "export") == 0
        exported = capsys.readouterr().out
        (tmp_path / "positions.json").write_text(exported)
        assert cli(group + "-b", "import", "--input", str(tmp_path / "positions.json"), "--yes") == 0

        leases = LeaseStore(redis_client, group).leases()
        kcl = {lease.shard_id: {"checkpoint": lease.checkpoint or "TRIM_HORIZON",
                                "parent": lease.parent_ids[0] if lease.parent_ids else None} for lease in leases}
        for shard_id in model.shard_ids(table):
            kcl.setdefault(shard_id, {"checkpoint": "TRIM_HORIZON", "parent": model.stream(table.stream_arn)
                                      .shards[shard_id].parent_id})
        # KCL deletes a finished shard's lease once its children have checkpointed (cleanupLeasesUponShardCompletion):
        # the stream still lists that shard, which must not be read again.
        cleaned = max(s for s, v in kcl.items() if v["checkpoint"] == SHARD_END
                      and any(c["parent"] == s and c["checkpoint"] != "TRIM_HORIZON" for c in kcl.values()))
        del kcl[cleaned]
        assert SHARD_END in {v["checkpoint"] for v in kcl.values()}
        _kcl_table(moto_dynamodb, "orders-app", kcl)
        capsys.readouterr()
        assert cli(group + "-c", "import-kcl", "--lease-table", "orders-app", "--dry-run") == 0
        assert "KCL SHARD_END" in capsys.readouterr().out
        assert not LeaseStore(redis_client, group + "-c").known()  # the dry run changed nothing
        assert cli(group + "-c", "import-kcl", "--lease-table", "orders-app", "--yes") == 0

        fleets = [Fleet(tmp_path / name, redis_url, server.endpoint_url, table.stream_arn, group + suffix)
                  for name, suffix in (("b", "-b"), ("c", "-c"))]
        for fleet, name in zip(fleets, ("b1", "c1"), strict=True):
            fleet.start(name)
        with Writer(table, keys=10) as second:
            time.sleep(1.5)
        for fleet in fleets:
            rows = fleet.wait_for(set(second.written))
            handled = collections.Counter(r.seq for r in rows)
            assert set(handled) == set(second.written), (
                f"{fleet.group}: {len(set(second.written) - set(handled))} lost, "
                f"{len(set(handled) - set(second.written))} handled again")
            check_order_per_key(rows)
        for fleet in fleets:
            assert all(code == 0 for code in fleet.stop_all().values())
        history = LeaseStore(redis_client, group).history()
        assert history[0]["what"].startswith("export") and history[0]["user"]

        # A table that does not exist, or is not a KCL lease table: one line, exit 2, nothing changed.
        boto3.client("dynamodb", endpoint_url=moto_dynamodb, region_name="us-east-1").create_table(
            TableName="not-kcl", KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
        capsys.readouterr()
        assert cli(group + "-d", "import-kcl", "--lease-table", "missing", "--yes") == 2
        assert cli(group + "-d", "import-kcl", "--lease-table", "not-kcl", "--yes") == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and "does not exist" in err[0] and "not a KCL lease table" in err[1]
        assert not LeaseStore(redis_client, group + "-d").known()
        json.loads(exported)
