"""Rewind, fast-forward, export and import with a real fleet: worker processes, a real Redis, the local
stream endpoint, writes going on and a split in between.

Rows are told apart by lease token: a row whose token is above the group's token counter as a change
left it was handled by a consumer that acquired its lease after it (a consumer from before may still
finish the batch it had in flight, and handle it a second time; it cannot checkpoint it).  The counter
is the change's ``fence_token`` in the group's history, written by the change's own script (see _rewind):
workers woken by the change take the leases within milliseconds, and a read after the command returned
could already count their tokens as before the change.
"""

from __future__ import annotations

import math
import re
import signal
import time
from pathlib import Path

import pytest
import redis

from leaser import LeaseStore
from leaser.positions import SKIP_BEFORE_NOW_MARGIN_MS
from tests.e2e.fleet import Fleet, Handled, Writer, check_order_per_key, check_parents_before_children
from worker.checkpoints.plan import iso
from worker.cli import main
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)


def _cli(fleet: Fleet, group: str, *args: str) -> int:
    return main(["checkpoint", *args, "--group", group, "--redis-url", fleet.redis_url,
                 "--stream-arn", fleet.stream_arn, "--endpoint-url", fleet.endpoint_url])


def _created(server: LocalStreamsServer, stream_arn: str) -> dict[str, float]:
    """Sequence number -> creation time (Unix s, exact) of every record in the local stream."""
    out: dict[str, float] = {}
    for shard in server.model.stream(stream_arn).shards.values():
        out.update({str(seq): t for seq, t in zip(shard.seqs, shard.times, strict=True)})
    return out


def _rewind(fleet: Fleet, group: str, *args: str) -> int:
    """Run ``checkpoint rewind ARGS --yes`` (it must succeed); returns the change's ``fence_token`` from the
    group's history: the token counter as the change's script left it, so every lease acquired after the change
    has a larger token and every one acquired before it a smaller or equal one.  (A separate read of the counter
    after the command returned raced the workers the change woke: a worker that took a lease first had its rows
    counted as handled before the change; a CI failure: records written after --to-latest "not handled" after it.)"""
    assert _cli(fleet, group, "rewind", *args, "--yes") == 0
    return int(LeaseStore(redis.Redis.from_url(fleet.redis_url), group).history(1)[0]["fence_token"])


def _explain(fleet: Fleet, client: redis.Redis, group: str, fence: int, wanted: set[str], rows: list[Handled],
             log_lines: int = 40) -> str:
    """What to look at when records were not handled after a change: the leases, who handled what with which
    token (above the fence or not), and the end of each worker's log."""
    missing = wanted - {r.seq for r in _after(rows, fence)}
    lines = [f"{len(missing)} of {len(wanted)} records not handled with a token above {fence}; "
             f"{len(missing - {r.seq for r in rows})} of them not handled at all", "leases:"]
    for lease in LeaseStore(client, group).leases():
        above = "above" if lease.token > fence else "not above"
        lines.append(f"  {lease.shard_id} {lease.state} owner={lease.owner or '-'} token={lease.token} ({above} the "
                     f"fence) checkpoint={lease.checkpoint or '-'} skip_before_ms={lease.skip_before_ms} "
                     f"expires_ms={lease.expires_ms}")
    lines.append("rows by worker, shard and token (count, first and last sequence number, first and last time):")
    groups: dict[tuple[str, str, int], list[Handled]] = {}
    for r in rows:
        groups.setdefault((r.worker, r.shard, r.token), []).append(r)
    for (worker, shard, token), handled in sorted(groups.items(), key=lambda kv: kv[0][2]):
        lines.append(f"  {worker} {shard} token={token}{' (above the fence)' if token > fence else ''}: "
                     f"{len(handled)}, {handled[0].seq}..{handled[-1].seq}, {handled[0].t:.3f}..{handled[-1].t:.3f}")
    for name in sorted(fleet.procs):
        tail = fleet.log_text(name).splitlines()[-log_lines:]
        lines += [f"last {len(tail)} lines of {name}'s log:", *(f"  {line}" for line in tail)]
    return "\n".join(lines)


def _after(rows: list[Handled], token: int) -> list[Handled]:
    return [r for r in rows if r.token > token]


def _wait_owning(client: redis.Redis, group: str, worker: str, timeout_s: float = 10) -> list[str]:
    """The shards ``worker`` holds, once it holds any (or [] after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = [lease.shard_id for lease in LeaseStore(client, group).leases() if lease.owner == worker]
        if held or time.monotonic() > deadline:
            return held
        time.sleep(0.1)


def _wait_handled_after(fleet: Fleet, wanted: set[str], token: int, timeout_s: float = 45) -> list[Handled]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = fleet.handled()
        if wanted <= {r.seq for r in _after(rows, token)} or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def test_rewind_to_a_time_under_writes_through_a_split_with_a_paused_worker_then_to_latest(
    tmp_path: Path, redis_url: str, group: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    with LocalStreamsServer(port=0, seed=5) as server:
        table = server.create_table("orders", shards=2)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        for name in ("w1", "w2"):
            fleet.start(name)
        with Writer(table, keys=20) as writer:
            time.sleep(2.5)
            to_time = time.time()
            time.sleep(1.5)
            split_parent = server.model.shard_ids(table, open_only=True)[0]
            server.model.split_shard(table, split_parent)
            time.sleep(1.5)
            # w2 is frozen, holding leases, while the group is rewound: when it wakes, none of its writes may land.
            paused_with = _wait_owning(redis_client, group, "w2")
            fleet.signal("w2", signal.SIGSTOP)
            time.sleep(0.5)
            fence = _rewind(fleet, group, "--to-time", iso(int(to_time * 1000)))
            time.sleep(1.0)
            fleet.signal("w2", signal.SIGCONT)
            time.sleep(2.0)
        created = _created(server, table.stream_arn)
        again = {seq for seq in writer.written if created[seq] >= to_time}
        rows = _wait_handled_after(fleet, again, fence)
        after = _after(rows, fence)

        missing = again - {r.seq for r in after}
        assert not missing, (f"{len(missing)} of {len(again)} records at or after the time not handled again\n"
                             + _explain(fleet, redis_client, group, fence, again, rows))
        cutoff_s = math.floor(to_time)  # ApproximateCreationDateTime is whole seconds: the same-second margin
        early = [r.seq for r in after if math.floor(created[r.seq]) < cutoff_s]
        assert not early, f"{len(early)} records created before the time's second handled again"
        check_order_per_key(after)
        parent_of = {sid: s.parent_id for sid, s in server.model.stream(table.stream_arn).shards.items()}
        check_parents_before_children(after, parent_of)
        # The woken worker found its leases gone (its heartbeat or a fenced write was refused) and stopped them.
        assert paused_with
        lost = re.findall(r"shard=(\S+) lease lost", fleet.log_text("w2"))
        assert set(paused_with) & set(lost), (paused_with, lost)
        out = capsys.readouterr().out
        assert "skipping before" in out and "done:" in out

        # --to-latest with the fleet running: nothing written before it is handled from then on.
        with Writer(table, keys=20) as writer2:
            time.sleep(1.0)
            fence2 = _rewind(fleet, group, "--to-latest")
            latest_s = LeaseStore(redis_client, group).history(1)[0]["at_ms"] / 1000
            time.sleep(2.0)
        created = _created(server, table.stream_arn)
        later = {seq for seq in writer2.written if created[seq] >= latest_s}
        rows = _wait_handled_after(fleet, later, fence2)
        after = _after(rows, fence2)
        assert later <= {r.seq for r in after}, ("records written after --to-latest not handled after it\n"
                                                 + _explain(fleet, redis_client, group, fence2, later, rows))
        # The margin for DynamoDB's clock behind Redis's: a few records written just before may be handled.
        cutoff_s = math.floor(latest_s - SKIP_BEFORE_NOW_MARGIN_MS / 1000)
        stale = [r.seq for r in after if math.floor(created[r.seq]) < cutoff_s]
        assert not stale, (f"{len(stale)} records written before --to-latest (and its margin) handled after it: "
                           f"{stale[:10]}\n" + _explain(fleet, redis_client, group, fence2, later, rows))

        # --to-sequence in the split's parent, ended long ago: its children, read since, are read again after
        # it, so each key's last handled record is its last written one again (not the parent's older one).
        first, *again_seqs = (str(seq) for seq in server.model.stream(table.stream_arn).shards[split_parent].seqs)
        fence3 = _rewind(fleet, group, "--shard", split_parent, "--to-sequence", first)
        _wait_handled_after(fleet, set(again_seqs), fence3)
        last_written = {f"k{i % 20:02d}": seq for i, seq in enumerate(writer2.written)}
        deadline = time.monotonic() + 30
        while True:
            last_handled = {r.pk: r.seq for r in fleet.handled()}
            if last_handled == last_written or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert last_handled == last_written, "keys whose last handled record is not their last written one"
        codes = fleet.stop_all()
        assert codes == {"w1": 0, "w2": 0}

        # Every change is in the group's history, and status shows the last ones.
        assert main(["status", "--group", group, "--redis-url", redis_url]) == 0
        status = capsys.readouterr().out
        assert "rewind --to-latest by" in status and "rewind --to-time" in status
