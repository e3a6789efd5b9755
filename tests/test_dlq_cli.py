"""``shardlease dlq list`` and ``shardlease dlq replay`` end to end against a real Redis (and a file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from tests import dlq_handlers
from tests.test_cli import unreachable_redis_error
from tests.test_destinations import ARN, SHARD, wire
from worker.cli import main
from worker.handling.destinations import FailureEntry, JsonLinesDestination, RedisStreamDestination
from worker.reading.records import Record


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    dlq_handlers.CALLS.clear()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Any:
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        import boto3

        yield boto3.client("sqs", region_name="us-east-1")


def make_entry(group: str, start: int, n: int = 2, *, bad: bool = False) -> FailureEntry:
    raws = [wire(start + i) for i in range(n)]
    if bad:
        raws[0]["dynamodb"]["Keys"]["pk"] = {"S": "BAD"}
    return FailureEntry.create(raws, group=group, stream_arn=ARN, shard_id=SHARD, attempts=3,
                               reason="retries_exhausted", error=KeyError("missing thing"), worker_id="w-7")


def fill(client: redis.Redis, group: str, *, bad_at: int | None = None) -> tuple[RedisStreamDestination, list[str]]:
    dest = RedisStreamDestination(client, group)
    ids = [dest.send(make_entry(group, 10 * i, bad=i == bad_at)) for i in range(1, 4)]
    return dest, ids


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], expected_code: int = 2) -> str:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    assert code == expected_code
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err
    return err


def test_list_table_and_json(capsys: pytest.CaptureFixture[str], redis_url: str, group: str,
                             redis_client: redis.Redis) -> None:
    _, ids = fill(redis_client, group)
    assert main(["dlq", "list", "--group", group, "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    assert f"group {group!r}" in out and "3 shown, 3 in all" in out
    header = next(line for line in out.splitlines() if line.startswith("ID"))
    for col in ("FAILED_AT", "SHARD", "SEQUENCES", "RECORDS", "ATTEMPTS", "REASON", "ERROR"):
        assert col in header
    for entry_id in ids:
        assert entry_id in out
    assert "100000000000000000010..100000000000000000011" in out
    assert "retries_exhausted" in out and "KeyError" in out and SHARD in out

    assert main(["dlq", "list", "--group", group, "--redis-url", redis_url, "--json", "--limit", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [d["id"] for d in doc] == ids[:2]
    assert "records" not in doc[0] and doc[0]["record_count"] == 2 and doc[0]["attempts"] == 3
    assert main(["dlq", "list", "--group", group, "--redis-url", redis_url, "--json", "--with-records"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[2]["records"] == [wire(30), wire(31)]


def test_list_empty(capsys: pytest.CaptureFixture[str], redis_url: str, group: str, redis_client: redis.Redis) -> None:
    assert main(["dlq", "list", "--group", group, "--redis-url", redis_url]) == 0
    assert "0 shown, 0 in all" in capsys.readouterr().out


def test_replay_all_deletes_replayed_entries(capsys: pytest.CaptureFixture[str], redis_url: str, group: str,
                                             redis_client: redis.Redis) -> None:
    dest, _ = fill(redis_client, group)
    argv = ["dlq", "replay", "--group", group, "--redis-url", redis_url, "--handler", "tests.dlq_handlers:record"]
    assert main([*argv, "--all"]) == 0
    out = capsys.readouterr().out
    assert "replayed 3 entries" in out
    assert dest.count() == 0
    assert len(dlq_handlers.CALLS) == 3
    ctx, records = dlq_handlers.CALLS[0]
    assert (ctx.shard_id, ctx.worker_id, ctx.lease_token, ctx.stream_arn, ctx.group) == (
        SHARD, "dlq-replay", 0, ARN, group)
    assert all(isinstance(r, Record) for r in records)
    assert [r.raw for r in records] == [wire(10), wire(11)]
    assert records[0].new_image is not None and records[0].new_image["blob"] == b"\x00\x01\xff"


def test_replay_by_id_and_dry_run(capsys: pytest.CaptureFixture[str], redis_url: str, group: str,
                                  redis_client: redis.Redis) -> None:
    dest, ids = fill(redis_client, group)
    argv = ["dlq", "replay", "--group", group, "--redis-url", redis_url, "--handler", "tests.dlq_handlers:record"]
    assert main([*argv, "--id", ids[1], "--dry-run"]) == 0
    assert "would replay" in capsys.readouterr().out
    assert dlq_handlers.CALLS == [] and dest.count() == 3
    assert main([*argv, "--id", ids[1], "--id", ids[2]]) == 0
    assert [e.id for e in dest.list()] == [ids[0]]
    assert [r.sequence_number for _, recs in dlq_handlers.CALLS for r in recs] == [
        "100000000000000000020", "100000000000000000021", "100000000000000000030", "100000000000000000031"]


def test_failing_handler_leaves_its_entry_and_exits_1(capsys: pytest.CaptureFixture[str], redis_url: str,
                                                      group: str, redis_client: redis.Redis) -> None:
    dest, ids = fill(redis_client, group, bad_at=2)
    argv = ["dlq", "replay", "--group", group, "--redis-url", redis_url, "--handler", "tests.dlq_handlers:fail_on_bad"]
    assert main([*argv, "--all"]) == 1
    captured = capsys.readouterr()
    assert f"failed {ids[1]}" in captured.err and "RuntimeError: handler refused the BAD record" in captured.err
    assert "1 failed" in captured.err
    assert [e.id for e in dest.list()] == [ids[1]]
    assert len(dlq_handlers.CALLS) == 2


def test_partial_batch_response_counts_as_failure(capsys: pytest.CaptureFixture[str], redis_url: str, group: str,
                                                  redis_client: redis.Redis) -> None:
    dest, ids = fill(redis_client, group)
    argv = ["dlq", "replay", "--group", group, "--redis-url", redis_url, "--handler", "tests.dlq_handlers:partial"]
    assert main([*argv, "--id", ids[0]]) == 1
    assert "batchItemFailures" in capsys.readouterr().err
    assert dest.count() == 3


def test_file_destination_list_and_replay(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    dest = JsonLinesDestination(path)
    ids = [dest.send(make_entry("g", 10 * i, bad=i == 2)) for i in range(1, 4)]
    before = path.read_bytes()
    src = ["--from", f"file:{path}"]
    assert main(["dlq", "list", *src]) == 0
    out = capsys.readouterr().out
    assert all(i in out for i in ids) and "3 shown, 3 in all" in out
    assert main(["dlq", "replay", *src, "--handler", "tests.dlq_handlers:fail_on_bad", "--all"]) == 1
    capsys.readouterr()
    assert path.read_bytes() == before
    assert set(Path(f"{path}.replayed").read_text().split()) == {ids[0], ids[2]}
    assert main(["dlq", "list", *src, "--json"]) == 0
    assert [d["id"] for d in json.loads(capsys.readouterr().out)] == [ids[1]]
    assert main(["dlq", "replay", *src, "--handler", "tests.dlq_handlers:record", "--id", ids[1]]) == 0
    capsys.readouterr()
    assert main(["dlq", "list", *src, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.parametrize("extra", [
    ["--handler", "tests.dlq_handlers:record"],                                  # neither --id nor --all
    ["--handler", "tests.dlq_handlers:record", "--id", "1-1", "--all"],          # both
    ["--handler", "tests.dlq_handlers:record", "--id", "1-1"],                   # unknown id
    ["--handler", "no such thing", "--all"],                                     # bad handler path
    ["--handler", "tests.dlq_handlers:nope", "--all"],                           # missing function
    ["--handler", "tests.dlq_handlers:record", "--all", "--from", "kafka:x"],    # bad source
    ["--handler", "tests.dlq_handlers:record", "--all", "--from", "sqs:https://sqs.us-east-1.amazonaws.com/1/q"],
])
def test_replay_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], redis_url: str, group: str,
                                                redis_client: redis.Redis, extra: list[str]) -> None:
    fill(redis_client, group)
    one_line_error(capsys, ["dlq", "replay", "--group", group, "--redis-url", redis_url, *extra])
    assert dlq_handlers.CALLS == []
    assert redis_client.xlen(f"shardlease:{{{group}}}:dlq") == 3


def test_list_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], group: str) -> None:
    err = unreachable_redis_error(capsys, ["dlq", "list", "--group", group, "--redis-url",
                                           "redis://:s3cret@127.0.0.1:1/0"])
    assert "s3cret" not in err
    one_line_error(capsys, ["dlq", "list", "--from", "file:/nonexistent.jsonl", "--limit", "0"])
    one_line_error(capsys, ["dlq", "list", "--group", "bad{group}"])
    one_line_error(capsys, ["dlq"])


def test_list_sqs_peek(capsys: pytest.CaptureFixture[str], aws: Any) -> None:
    from worker.handling.destinations import SqsDestination

    url = aws.create_queue(QueueName="dlq-peek")["QueueUrl"]
    SqsDestination(url, region="us-east-1").send(make_entry("g", 10))
    assert main(["dlq", "list", "--from", f"sqs:{url}", "--region", "us-east-1", "--json", "--with-records"]) == 0
    (doc,) = json.loads(capsys.readouterr().out)
    assert doc["records"] == [wire(10), wire(11)]
    assert len(aws.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])) == 1  # still there
