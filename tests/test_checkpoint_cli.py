"""``shardlease checkpoint``: bad input is one line and exit 2 with nothing changed; --dry-run and the
confirmation change nothing; show lists the positions."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from leaser import LeaseStore, ShardSpec
from worker.cli import main
from worker.local import LocalStreamsServer


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalStreamsServer, str]]:
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with LocalStreamsServer(port=0, seed=1) as server:
        table = server.create_table("orders", shards=2)
        for n in range(5):
            table.put_item({"pk": f"k{n}", "n": n})
        yield server, table.stream_arn


@pytest.fixture
def store(redis_client: redis.Redis, group: str, stream: tuple[LocalStreamsServer, str]) -> LeaseStore:
    server, arn = stream
    store = LeaseStore(redis_client, group)
    store.register_shards([ShardSpec(s, (), float(i)) for i, s in enumerate(server.model.shard_ids(arn))])
    [got], _ = store.acquire("w1", [server.model.shard_ids(arn)[0]])
    store.checkpoint("w1", got.shard_id, got.token, str(server.model.stream(arn).shards[got.shard_id].seqs[0]))
    return store


def _cli(store: LeaseStore, stream: tuple[LocalStreamsServer, str], *args: str, group: str | None = None) -> int:
    server, arn = stream
    url = "redis://{host}:{port}/0".format(**store.client.connection_pool.connection_kwargs)
    return main(["checkpoint", *args, "--group", group or store.group, "--redis-url", url, "--stream-arn", arn,
                 "--endpoint-url", server.endpoint_url])


def _one_error_line(capsys: pytest.CaptureFixture[str], *words: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shardlease: error:"), err
    for word in words:
        assert word in err[0]


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).isoformat()


def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    store: LeaseStore, stream: tuple[LocalStreamsServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    before = [(lease.shard_id, lease.checkpoint, lease.owner, lease.token) for lease in store.leases()]
    assert _cli(store, stream, "rewind", "--to-latest", "--yes", group="no-such-group") == 2
    _one_error_line(capsys, "'no-such-group' has no state")
    assert _cli(store, stream, "rewind", "--to-time", _iso(timedelta(hours=1)), "--yes") == 2
    _one_error_line(capsys, "is in the future")
    assert _cli(store, stream, "rewind", "--to-time", _iso(-timedelta(hours=25)), "--yes") == 2
    _one_error_line(capsys, "24 h retention", "oldest time still available is")
    assert _cli(store, stream, "rewind", "--to-time", "yesterday", "--yes") == 2
    _one_error_line(capsys, "not an ISO 8601 time")
    shard = store.shard_ids()[0]
    assert _cli(store, stream, "rewind", "--shard", shard, "--to-sequence", "1", "--yes") == 2
    _one_error_line(capsys, "is outside shard")
    assert _cli(store, stream, "rewind", "--shard", "shardId-nope", "--to-sequence", "1", "--yes") == 2
    _one_error_line(capsys, "is not a shard of the stream")
    # Beyond the last record of an open shard: no iterator can be had after it (the worker would fail on
    # the shard for ever, and skip every record written below that number).
    server, arn = stream
    beyond = str(max(max(s.seqs) for s in server.model.stream(arn).shards.values()) + 1000)
    assert _cli(store, stream, "rewind", "--shard", shard, "--to-sequence", beyond, "--yes") == 2
    _one_error_line(capsys, "to-sequence", beyond)
    with pytest.raises(SystemExit) as exit_info:  # exactly one --to-*
        _cli(store, stream, "rewind", "--to-latest", "--to-trim-horizon", "--yes")
    assert exit_info.value.code == 2
    capsys.readouterr()
    assert [(lease.shard_id, lease.checkpoint, lease.owner, lease.token) for lease in store.leases()] == before
    assert store.epoch() == 0 and store.history() == []


def test_dry_run_and_a_missing_confirmation_change_nothing(
    store: LeaseStore, stream: tuple[LocalStreamsServer, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _cli(store, stream, "rewind", "--to-time", _iso(-timedelta(minutes=5)), "--dry-run") == 0
    out = capsys.readouterr().out
    assert "FROM" in out and "after the time: read whole" in out and "dry run: nothing changed" in out
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))  # not a terminal: no confirmation possible
    assert _cli(store, stream, "rewind", "--to-trim-horizon") == 2
    _one_error_line(capsys, "--yes")
    assert store.epoch() == 0
    lease = store.lease(store.shard_ids()[0])
    assert lease is not None and lease.owner == "w1" and lease.checkpoint


def test_rewind_one_shard_to_a_sequence_number_and_show_it(
    store: LeaseStore, stream: tuple[LocalStreamsServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    server, arn = stream
    shard = store.shard_ids()[0]
    first, second = server.model.stream(arn).shards[shard].seqs[:2]
    assert _cli(store, stream, "rewind", "--shard", shard, "--to-sequence", str(second), "--yes") == 0
    lease = store.lease(shard)
    assert lease is not None and (lease.checkpoint, lease.owner) == (str(second), "")
    capsys.readouterr()
    assert _cli(store, stream, "show", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    row = next(r for r in shown["shards"] if r["shard_id"] == shard)
    assert row["checkpoint"] == str(second) and row["state"] == "free" and shown["epoch"] == 1
    created = datetime.fromisoformat(row["checkpoint_created_at"]).timestamp()
    assert abs(created - time.time()) < 120
    [entry] = store.history()
    assert entry["what"].startswith(f"rewind --shard {shard}") and entry["plan"][0]["to"] == f"after {second}"
    assert first < second


def test_a_change_whose_reply_was_lost_is_retried_and_applied_once(
    store: LeaseStore, stream: tuple[LocalStreamsServer, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from leaser import CoordinationUnavailable

    real = LeaseStore.reposition
    calls: list[str] = []

    def reply_lost_once(self: LeaseStore, *args: object, **kwargs: object) -> object:
        result = real(self, *args, **kwargs)  # type: ignore[arg-type]
        calls.append(str(kwargs["request_id"]))
        if len(calls) == 1:
            raise CoordinationUnavailable("Redis unavailable: the reply was lost")
        return result

    monkeypatch.setattr(LeaseStore, "reposition", reply_lost_once)
    assert _cli(store, stream, "rewind", "--to-trim-horizon", "--yes") == 0
    assert "already applied" in capsys.readouterr().out
    assert len(calls) == 2 and calls[0] == calls[1]  # the same request both times
    assert store.epoch() == 1 and len(store.history()) == 1


def test_a_split_read_while_the_plan_waits_for_its_confirmation_is_not_left_behind(
    store: LeaseStore, stream: tuple[LocalStreamsServer, str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # While the operator reads the plan, a shard splits, the group ends it and reads a child (its
    # records are after the rewind's time).  Applied as planned, the child is not in the plan: it only
    # waits for its re-opened parent and then resumes at its checkpoint, so what it had handled (after
    # the time) is not handled again.
    server, arn = stream
    parent = store.shard_ids()[1]

    def meanwhile(group: str) -> None:
        child, other = server.model.split_shard(arn, parent)
        store.register_shards([ShardSpec(child, (parent,), 10.0), ShardSpec(other, (parent,), 11.0)])
        [p], _ = store.acquire("w2", [parent])
        store.end_shard("w2", parent, p.token)
        [c], _ = store.acquire("w3", [child])
        store.checkpoint("w3", child, c.token, "7")

    monkeypatch.setattr("worker.checkpoints.commands._confirm", meanwhile)
    assert _cli(store, stream, "rewind", "--to-time", _iso(-timedelta(minutes=5))) != 0  # not as planned
    _one_error_line(capsys, "changed while", "nothing changed")
    read = [lease for lease in store.leases() if lease.parent_ids == (parent,) and lease.checkpoint]
    assert store.epoch() == 0 and [(lease.checkpoint, lease.owner) for lease in read] == [("7", "w3")]
