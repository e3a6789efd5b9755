"""`shardlease snapshot` and `run --snapshot`: bad input (one line, exit 2), once per group, --restart."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
import redis
from botocore.stub import Stubber

from leaser.errors import ConfigError
from leaser.snapshot import SnapshotStore
from worker.cli import main
from worker.local import LocalStreamsServer
from worker.snapshot.scan import TableReader

SINK = "tests.e2e.sink_handler:handle"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("SHARDLEASE_") and not name.startswith("SHARDLEASE_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def server() -> Iterator[LocalStreamsServer]:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as s:
        yield s


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shardlease: error: ") and "\n" not in err and "Traceback" not in err
    return err


def base(server: LocalStreamsServer, redis_url: str, group: str, table: str) -> list[str]:
    return ["--table", table, "--endpoint-url", server.endpoint_url, "--redis-url", redis_url, "--group", group,
            "--handler", SINK, "--metrics-port", "0"]


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], server: LocalStreamsServer,
                                          redis_url: str, group: str) -> None:
    server.create_table("keysonly", view_type="KEYS_ONLY")
    server.create_table("oldimage", view_type="OLD_IMAGE")
    server.create_table("nostream", stream_enabled=False)
    server.create_table("good")
    for table in ("keysonly", "oldimage"):
        err = one_line_error(capsys, ["snapshot", *base(server, redis_url, group, table)])
        assert "carries no new images" in err and "NEW_AND_OLD_IMAGES" in err
        err = one_line_error(capsys, ["run", "--snapshot", *base(server, redis_url, group, table)])
        assert "carries no new images" in err
    err = one_line_error(capsys, ["snapshot", *base(server, redis_url, group, "nostream")])
    assert "stream" in err
    err = one_line_error(capsys, ["snapshot", "--snapshot-segments", "1000001",
                                  *base(server, redis_url, group, "good")])
    assert "--snapshot-segments" in err
    err = one_line_error(capsys, ["run", "--snapshot", "--initial-position", "LATEST",
                                  *base(server, redis_url, group, "good")])
    assert "LATEST" in err and "--snapshot" in err
    assert SnapshotStore(redis.Redis.from_url(redis_url, decode_responses=True), group).state().status == ""


def test_a_missing_scan_permission_is_a_config_error() -> None:
    reader = TableReader("items", region="us-east-1", endpoint_url=None,
                         stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/items/stream/x")
    with Stubber(reader._client) as stub:
        stub.add_response("describe_table", {"Table": {
            "TableName": "items", "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}}})
        stub.add_client_error("scan", "AccessDeniedException", "not authorized to perform: dynamodb:Scan")
        with pytest.raises(ConfigError) as info:
            reader.check(0)
    assert "dynamodb:Scan" in str(info.value)


def test_the_snapshot_command_runs_once_per_group_and_restart_redoes_it(
    capsys: pytest.CaptureFixture[str], server: LocalStreamsServer, redis_url: str, group: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = server.create_table("items", shards=1)
    for i in range(2_500):
        table.put_item({"pk": f"k{i:05d}", "v": i})
    sink_key = f"sink:{group}"
    monkeypatch.setenv("SHARDLEASE_TEST_SINK_URL", redis_url)
    monkeypatch.setenv("SHARDLEASE_TEST_SINK_KEY", sink_key)
    client = redis.Redis.from_url(redis_url)
    argv = ["snapshot", "--snapshot-segments", "3", *base(server, redis_url, group, "items")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "snapshot: done, 3/3 segments done" in out and "2500 items" in out
    assert client.hlen(sink_key) == 2_500
    first = client.llen(sink_key + ":journal")
    assert first >= 2_500  # at least once: a page whose lease lapsed (a starved machine) is handed over again
    assert main(argv) == 0
    assert "already done" in capsys.readouterr().out
    assert client.llen(sink_key + ":journal") == first  # done once per group: nothing handed over again
    assert main([*argv, "--restart"]) == 0
    again = [e.split()[1] for e in client.lrange(sink_key + ":journal", first, -1)]
    assert {k.decode() for k in again} == {f"k{i:05d}" for i in range(2_500)}
    capsys.readouterr()
    assert main(["status", "--redis-url", redis_url, "--group", group]) == 0
    assert "snapshot: done, 3/3 segments done" in capsys.readouterr().out
    assert main(["status", "--json", "--redis-url", redis_url, "--group", group]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["snapshot"]["status"] == "done" and doc["snapshot"]["items"] == 2_500 and doc["snapshot"]["run"] == 2


def test_a_missing_describe_table_permission_is_a_config_error() -> None:
    """--snapshot needs dynamodb:DescribeTable too (README: IAM policy): denied, it is one line naming the
    permission, exit 2 (it was an 'unexpected ClientError', exit 1)."""
    reader = TableReader("items", region="us-east-1", endpoint_url=None,
                         stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/items/stream/x")
    with Stubber(reader._client) as stub:
        stub.add_client_error("describe_table", "AccessDeniedException",
                              "not authorized to perform: dynamodb:DescribeTable")
        with pytest.raises(ConfigError) as info:
            reader.check(0)
    assert "dynamodb:DescribeTable" in str(info.value)
