"""``shardlease demo``: no colour when piped or with NO_COLOR; every output line whole."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from worker import demo

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^ *[A-Za-z0-9-]+ \| \S")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert demo.use_color(_Tty()) is True
    assert demo.use_color(io.StringIO()) is False  # a pipe or a file
    monkeypatch.setenv("NO_COLOR", "1")
    assert demo.use_color(_Tty()) is False


def test_lines_from_many_threads_never_run_together(capsys: pytest.CaptureFixture[str]) -> None:
    def write(n: int) -> None:
        for i in range(200):
            demo.write_line(f"thread-{n} | line {i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1600 and all(LINE.match(line) for line in lines)


def test_the_demo_piped_has_no_colour_and_whole_lines() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDLEASE_") and k != "NO_COLOR"}
    done = subprocess.run([sys.executable, "-m", "worker", "demo", "--workers", "2", "--duration", "4"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("     demo | starting the local DynamoDB Streams endpoint and a private Redis "
                        "(nothing leaves this machine)")
    assert "\033[" not in done.stdout
    assert [line for line in lines if not LINE.match(line)] == []
    assert any(line.startswith(" worker-1 | ") for line in lines) and lines[-1] == "     demo | nothing lost"
