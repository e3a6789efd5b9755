"""``shardlease run --processes 2``: real worker processes under a real supervisor, a real Redis and the
local endpoint.  One run shares its processes across the assertions of the happy path and of a killed
worker process; the failure paths of start-up and of a killed supervisor each take a few seconds."""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from leaser import LeaseStore, connect
from tests.e2e.fleet import ROOT, Fleet, Writer, check_order_per_key, key_for, wait_until
from worker.local import LocalStreamsServer
from worker.supervisor import free_loopback_port

pytestmark = pytest.mark.e2e



def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def started_pids(log: str, worker_id: str) -> list[int]:
    """Pids of each start of worker process ``worker_id``, from the supervisor's log, in order."""
    return [int(m) for m in re.findall(rf"worker process {re.escape(worker_id)} started \(pid (\d+)\)", log)]


def gone(pid: int) -> bool:
    """The process has exited (a zombie left to a parent that does not reap counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def test_two_processes_share_metrics_health_and_shutdown_and_heal_a_killed_one(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0, seed=5) as server:
        table = server.create_table("orders", shards=4)
        port = free_loopback_port()
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"processes": "2", "metrics-port": str(port), "metrics-host": "127.0.0.1"})
        sup = fleet.start("pod")
        base = f"http://127.0.0.1:{port}"
        with Writer(table, keys=20) as writer:
            assert wait_until(lambda: get(base + "/readyz")[0] == 200, 30), get(base + "/readyz")
            assert get(base + "/healthz") == (200, "ok\n")
            # Both processes take shards (the leaser balances 4 shards over 2 workers).
            assert wait_until(lambda: {r.worker for r in fleet.handled()} == {"pod-p0", "pod-p1"}, 20)
            status, metrics = get(base + "/metrics")
            assert status == 200
            assert 'shardlease_records_processed_total{process="0"}' in metrics
            assert 'shardlease_records_processed_total{process="1"}' in metrics
            assert 'shardlease_supervisor_process_up{process="1"} 1.0' in metrics
            assert metrics.count("# TYPE shardlease_records_processed_total counter") == 1

            # SIGKILL one worker process: the supervisor starts it again; its shards come back.
            victim = started_pids(fleet.log_text("pod"), "pod-p1")[-1]
            os.kill(victim, signal.SIGKILL)
            # Until it is back (a backoff of 1 s, then its start-up), the pod is not healthy, and says which process.
            answers: list[tuple[int, str]] = []
            assert wait_until(lambda: answers.append(get(base + "/healthz")) or answers[-1][0] == 503, 5)
            # "not running" once reaped, "unreachable" just before (killed, not yet reaped) or while it starts.
            assert "process 1 (pod-p1): " in answers[-1][1] and "process 0" not in answers[-1][1], answers[-1]
            assert wait_until(lambda: len(started_pids(fleet.log_text("pod"), "pod-p1")) == 2, 15)
            assert wait_until(lambda: get(base + "/healthz")[0] == 200, 20)
            restarted_at = time.time()
            assert wait_until(lambda: any(r.worker == "pod-p1" and r.t > restarted_at for r in fleet.handled()),
                              20), "the restarted process handled nothing"
            assert 'shardlease_supervisor_restarts_total{process="1"} 1.0' in get(base + "/metrics")[1]
        rows = fleet.wait_for(set(writer.written), timeout_s=30)
        missing = set(writer.written) - {r.seq for r in rows}
        assert not missing, f"{len(missing)} of {len(writer.written)} records never handled"
        check_order_per_key(rows)
        duplicates = [seq for seq, c in collections.Counter(r.seq for r in rows).items() if c > 1]
        assert len(duplicates) <= 50 * 4, f"{len(duplicates)} duplicates"  # at most a batch per shard killed

        # SIGTERM to the supervisor: every process hands its leases back; the supervisor exits 0.
        children = [started_pids(fleet.log_text("pod"), f"pod-p{i}")[-1] for i in (0, 1)]
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(30) == 0, fleet.log_text("pod")[-3000:]
        assert all(gone(pid) for pid in children)
        store = LeaseStore(connect(redis_url), group)
        held = [(lease.shard_id, lease.owner) for lease in store.leases() if lease.owner]
        assert not held, f"leases not handed back: {held}"
        assert fleet.log_text("pod").count("stopped (exit code 0)") == 2


def test_a_worker_process_that_cannot_start_stops_the_supervisor_with_exit_2_and_one_line(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=1)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group, processes="2")
        sup = fleet.start("pod", handler="tests.e2e.no_such_module:handle")
        assert sup.wait(30) == 2
        errors = [line for line in fleet.log_text("pod").splitlines() if line.startswith("shardlease: error:")]
        assert len(errors) == 1, errors
        assert "handler" in errors[0] and "no_such_module" in errors[0]


def test_a_bad_processes_value_is_one_line_and_exit_2() -> None:
    result = subprocess.run([sys.executable, "-m", "worker", "run", "--table", "orders", "--handler", "a.b:c",
                             "--processes", "many"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "processes (--processes / SHARDLEASE_PROCESSES)" in result.stderr and "auto" in result.stderr


def test_worker_processes_of_a_killed_supervisor_hand_back_their_leases_and_exit(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=2)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group, processes="2")
        sup = fleet.start("pod")
        store = LeaseStore(connect(redis_url), group)
        assert wait_until(lambda: {lease.owner for lease in store.leases()} == {"pod-p0", "pod-p1"}, 30)
        children = [started_pids(fleet.log_text("pod"), f"pod-p{i}")[-1] for i in (0, 1)]
        sup.send_signal(signal.SIGKILL)
        sup.wait(10)
        try:
            assert wait_until(lambda: all(gone(pid) for pid in children), 15), "worker processes run on orphaned"
        finally:
            for pid in children:  # a failing run leaves no orphan behind
                if not gone(pid):
                    os.kill(pid, signal.SIGKILL)
        # They stopped on the SIGTERM the kernel sent them: the leases were handed back, not left to expire.
        assert not [lease.owner for lease in store.leases() if lease.owner]


def test_a_handler_call_abandoned_at_shutdown_makes_the_supervisor_exit_3(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=2)
        for n in range(20):
            table.put_item({"pk": f"k{n}", "n": n})
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group, processes="2",
                      **{"shutdown-grace": "1"})
        sup = fleet.start("pod", SHARDLEASE_TEST_SLOW_S="60")
        store = LeaseStore(connect(redis_url), group)
        assert wait_until(lambda: {lease.owner for lease in store.leases()} == {"pod-p0", "pod-p1"}, 30)
        time.sleep(1.5)  # each process's first batch is in its (60 s) handler call
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(20) == 3, fleet.log_text("pod")[-3000:]
        # The calls' leases were not handed back (they expire): the next owner must not overlap a running call.
        assert {lease.owner for lease in store.leases()} == {"pod-p0", "pod-p1"}


def test_worker_processes_take_the_handler_from_the_current_directory_without_it_shadowing_shardlease(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """Under the console script the current directory is searched after shardlease's packages: so must it be
    in the worker processes (a user's ./worker/ must not replace shardlease's own worker package)."""
    (tmp_path / "worker").mkdir()
    (tmp_path / "worker" / "__init__.py").write_text("raise SystemExit('the user\\'s worker package was imported')\n")
    (tmp_path / "sink.py").write_text("def handle(records, ctx):\n    pass\n")
    script = Path(sys.executable).parent / "shardlease"
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=2)
        env = dict(os.environ, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_REGION="us-east-1")
        env.pop("PYTHONPATH", None)
        sup = subprocess.Popen([str(script), "run", "--stream-arn", table.stream_arn, "--endpoint-url",
                                server.endpoint_url, "--redis-url", redis_url, "--group", group, "--worker-id", "pod",
                                "--handler", "sink:handle", "--processes", "2", "--metrics-port", "0",
                                "--lease-ttl", "3", "--renew-interval", "1"],
                               cwd=tmp_path, env=env, stderr=subprocess.PIPE)
        store = LeaseStore(connect(redis_url), group)
        try:
            assert wait_until(lambda: {lease.owner for lease in store.leases()} == {"pod-p0", "pod-p1"}, 30)
        finally:
            sup.send_signal(signal.SIGTERM)
            _, err = sup.communicate(timeout=30)
        assert sup.returncode == 0, err.decode()[-2000:]


def test_a_second_signal_reaches_every_worker_process_and_no_lease_is_released(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    """Each of two worker processes has an async call in flight (one unwinds at once, the other in 0.8 s) when
    the supervisor gets SIGTERM twice: it sends the second signal on, every process cancels its call and exits at
    once without releasing its lease (a thread the call started may still run), and the supervisor exits 1.
    Without the second signal the calls would run their 30 s."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=2)
        shards = server.model.shard_ids(table)
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group, processes="2")
        sup = fleet.start("pod", handler="tests.e2e.async_recording_handler:handle", ASYNC_SLOW_N="100",
                          ASYNC_SLOW_UNWIND_N="101")
        store = LeaseStore(connect(redis_url), group)
        assert wait_until(lambda: {lease.owner for lease in store.leases()} == {"pod-p0", "pod-p1"}, 30)
        owners = {lease.shard_id: lease.owner for lease in store.leases()}
        for n, shard in zip((100, 101), shards, strict=True):
            table.put_item({"pk": key_for(server, table, shard), "n": n})
        marks = Path(str(fleet.out) + ".marks")
        assert wait_until(lambda: marks.exists() and marks.read_bytes().split().count(b"started") == 2, 20)
        sup.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "received: sending it on" in fleet.log_text("pod"), 10)
        sup.send_signal(signal.SIGTERM)
        assert sup.wait(20) == 1, fleet.log_text("pod")[-3000:]
        assert marks.read_bytes().split() == [b"started", b"started", b"unwound", b"unwound"]
        log = fleet.log_text("pod")
        assert "released for shutdown" not in log, log[-3000:]
        assert {lease.shard_id: lease.owner for lease in store.leases()} == owners  # left to expire
