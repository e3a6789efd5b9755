"""The supervisor of ``--processes N``: merged metrics, the worker processes' settings, ``auto``, and a
worker process that ignores the shutdown signal (real processes; the end-to-end run is
tests/e2e/test_processes.py)."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from leaser.errors import ConfigError
from worker import config as config_module
from worker import supervisor as supervisor_module
from worker.config import RunConfig, available_cpus, load_run_config, parse_processes
from worker.metrics_merge import merge_expositions, with_label
from worker.observability import Metrics
from worker.supervisor import Supervisor, child_environment

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2024-01-01T00:00:00.000"


def test_with_label_goes_first_in_the_braces_or_adds_them() -> None:
    assert with_label(b'a_total{reason="x y"} 1.0', b'process="0"') == b'a_total{process="0",reason="x y"} 1.0'
    assert with_label(b"a_total 1.0", b'process="0"') == b'a_total{process="0"} 1.0'
    assert with_label(b"a{} 2", b'process="1"') == b'a{process="1"} 2'


def test_merged_metrics_parse_and_keep_each_process_values_under_one_family() -> None:
    first, second = Metrics("pod-p0", "g"), Metrics("pod-p1", "g")
    first.records_processed(5)
    second.records_processed(7)
    second.lease_gained("handoff")
    merged = merge_expositions([("0", first.render()), ("1", second.render())])
    families = {f.name: f for f in text_string_to_metric_families(merged.decode())}
    records = {s.labels["process"]: s.value for s in families["shardlease_records_processed"].samples
               if s.name.endswith("_total")}
    assert records == {"0": 5.0, "1": 7.0}
    gained = [s for s in families["shardlease_leases_gained"].samples
              if s.labels == {"process": "1", "reason": "handoff"}]
    assert [s.value for s in gained] == [1.0]
    assert {s.labels["worker_id"] for s in families["shardlease_worker_info"].samples} == {"pod-p0", "pod-p1"}
    assert merged.count(b"# TYPE shardlease_records_processed_total counter") == 1
    # The series count is one process's times the number of processes, nothing more.
    single = len(list(text_string_to_metric_families(first.render().decode())))
    assert len(families) == single


def test_a_worker_process_gets_every_setting_back_from_its_environment() -> None:
    config = load_run_config(["--stream-arn", ARN, "--handler", "a.b:c", "--redis-url",
                              "redis://user:secret@redis:6379/0", "--batch-size", "7", "--bisect-on-error",
                              "--lease-ttl", "9", "--renew-interval", "2.5", "--max-record-age", "-1",
                              "--worker-id", "pod", "--processes", "3", "--filter-patterns",
                              '[{"eventName": ["INSERT"]}]'], environ={})
    env = child_environment(config, 2, 4567, environ={"SHARDLEASE_BATCH_SIZE": "99", "PATH": "/bin"})
    assert env["PATH"] == "/bin"
    child = load_run_config(None, env)
    assert (child.worker_id, child.processes, child.metrics_port, child.metrics_host) == ("pod-p2", 1, 4567,
                                                                                        "127.0.0.1")
    same = {"worker_id": child.worker_id, "processes": 1, "metrics_port": 4567, "metrics_host": "127.0.0.1"}
    assert child == dataclasses.replace(config, **same)


def test_processes_auto_is_the_cpus_available_under_the_cgroup_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_processes("auto") == available_cpus() >= 1
    assert parse_processes(" 4 ") == 4
    monkeypatch.setattr(config_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(config_module, "_cgroup_cpu_quota", lambda: 1.5)
    assert parse_processes("auto") == 2  # a quota of 1.5 CPUs: two processes, not four
    monkeypatch.setattr(config_module, "_cgroup_cpu_quota", lambda: None)
    assert parse_processes("auto") == 4
    for bad in ("0", "257", "many"):
        with pytest.raises(ConfigError, match=r"processes \(--processes / SHARDLEASE_PROCESSES\)"):
            load_run_config(["--table", "orders", "--handler", "a.b:c", "--processes", bad], environ={})


def test_a_too_long_worker_id_is_refused_before_any_process_starts() -> None:
    with pytest.raises(ConfigError, match="worker_id"):
        Supervisor(RunConfig(worker_id="w" * 254, processes=2, metrics_port=0))


def test_a_worker_process_that_ignores_the_signal_is_killed_after_the_grace_and_the_exit_code_is_3(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pids = tmp_path / "pids"
    monkeypatch.setattr(supervisor_module, "CHILD_COMMAND", (
        "import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"open({str(pids)!r}, 'a').write(str(os.getpid()) + chr(10)); time.sleep(60)"))
    monkeypatch.setattr(supervisor_module, "KILL_MARGIN_S", 0.5)
    sup = Supervisor(RunConfig(processes=2, metrics_port=0, shutdown_grace_s=0.5))

    def stop_when_started() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not pids.exists() or len(pids.read_text().split()) < 2):
            time.sleep(0.05)
        sup._begin_stop()  # what the first SIGTERM does (signal handlers need the main thread)

    threading.Thread(target=stop_when_started, daemon=True).start()
    started = time.monotonic()
    assert sup.run() == 3
    assert time.monotonic() - started < 15
    for pid in map(int, pids.read_text().split()):
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_a_second_signal_is_sent_on_as_a_second_and_the_exit_code_reflects_the_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each process counts the SIGTERMs it gets: the first starts its shutdown, the second ends it (exit 1,
    as a worker's second signal does)."""
    got = tmp_path / "signals"
    monkeypatch.setattr(supervisor_module, "CHILD_COMMAND", (
        "import os, signal, time\n"
        "count = 0\n"
        "def on_term(signum, frame):\n"
        "    global count\n"
        "    count += 1\n"
        f"    open({str(got)!r}, 'a').write(f'{{os.getpid()}} {{count}}' + chr(10))\n"
        "    if count == 2:\n"
        "        os._exit(1)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        f"open({str(got)!r}, 'a').write(f'{{os.getpid()}} 0' + chr(10))\n"
        "while True:\n"
        "    time.sleep(0.05)\n"))
    sup = Supervisor(RunConfig(processes=2, metrics_port=0, shutdown_grace_s=30))

    def lines() -> list[str]:
        return got.read_text().splitlines() if got.exists() else []

    def signal_twice() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(lines()) < 2:
            time.sleep(0.05)
        sup._on_signal(15, None)  # what the handler does on SIGTERM (handlers need the main thread)
        while time.monotonic() < deadline and sum(line.endswith(" 1") for line in lines()) < 2:
            time.sleep(0.05)
        sup._on_signal(15, None)

    threading.Thread(target=signal_twice, daemon=True).start()
    assert sup.run() == 1
    counts: dict[str, list[int]] = {}
    for line in lines():
        pid, n = line.split()
        counts.setdefault(pid, []).append(int(n))
    assert sorted(counts.values()) == [[0, 1, 2], [0, 1, 2]]
