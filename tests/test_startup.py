"""The worker's start-up path: what it waits for and what it imports (no timings: see bench/worker_throughput.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from worker import runtime
from worker.runtime import WAKE_MIN_GAP_S, Worker

ROOT = Path(__file__).resolve().parent.parent


def _coordinator() -> Any:
    """A Worker with only what ``_wait_until_next_tick`` reads (the rest of it needs AWS and Redis)."""
    worker = Worker.__new__(Worker)
    worker.config = SimpleNamespace(renew_interval_s=60.0)
    worker.manager = SimpleNamespace(waiting_for_handoff=False)
    worker._stopping = threading.Event()
    worker._wake = threading.Event()
    worker._woken = False
    return worker


def test_the_first_wake_up_triggers_its_heartbeat_at_once_later_ones_wait_the_gap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a new group the leader's first listing wakes the coordinator, and the first leases wait for that
    # heartbeat: it goes at once.  Later wake-ups still wait WAKE_MIN_GAP_S, so a burst shares a heartbeat.
    sleeps: list[float] = []
    monkeypatch.setattr(runtime.time, "sleep", sleeps.append)
    worker = _coordinator()
    for expected in ([], [WAKE_MIN_GAP_S], [WAKE_MIN_GAP_S, WAKE_MIN_GAP_S]):
        worker._wake.set()
        worker._wait_until_next_tick()  # returns at once: the wake-up is set (renew_interval_s is 60 s)
        assert sleeps == expected
        assert not worker._wake.is_set()


RUN_PATH_NOT_IMPORTED = (
    "worker.checkpoints.commands",  # the checkpoint commands: their parser is worker.checkpoints.parser
    "worker.snapshot.command",  # --snapshot and `shardlease snapshot` only
    "worker.snapshot.runner",
    "worker.snapshot.scan",
    "worker.supervisor",  # --processes above 1 only
    "worker.demo",
)
"""Modules that ``shardlease run`` (one process, no --snapshot) must not import: each costs start-up time."""

_RUN_PATH_PROBE = """
import sys
from worker import cli
from worker.config import load_run_config
args = cli.build_parser().parse_args(["run", "--table", "Orders", "--handler", "tests.handlers_for_tests:handle"])
load_run_config(args)
import worker.runtime  # what _run imports next (Worker() would connect to AWS and Redis)
print(" ".join(sorted(set(sys.argv[1:]) & set(sys.modules))) or "-")
"""


def test_the_run_path_does_not_import_what_only_other_commands_need() -> None:
    done = subprocess.run([sys.executable, "-c", _RUN_PATH_PROBE, *RUN_PATH_NOT_IMPORTED], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    assert done.stdout.split() == ["-"], f"imported on the run path: {done.stdout.strip()}"
