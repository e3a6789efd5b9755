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


def test_the_demo_ignores_a_worker_py_in_the_working_directory_and_a_reader_that_goes_away(tmp_path: Path) -> None:
    """A user's worker.py beside them must not stand in for shardlease's (the workers run with -P), and
    `shardlease demo | head` ends quietly with the demo's own exit code."""
    (tmp_path / "worker.py").write_text("def handle(records, ctx):\n    pass\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-P", "-m", "worker", "demo", "--duration", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "nothing lost" in done.stdout, done.stdout + done.stderr
    proc = subprocess.Popen([sys.executable, "-P", "-m", "worker", "demo", "--duration", "2"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away, like head after its lines
    assert proc.wait(120) == 0 and first.strip().startswith("demo |")
    assert "Traceback" not in proc.stderr.read()


def test_the_demo_names_the_extra_when_no_redis_server_is_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from leaser.errors import ConfigError
    from worker.cli import main

    def none(*args: object) -> str:
        raise ConfigError("redis_url", "no server", "install one")

    monkeypatch.setattr(demo, "find_redis_server", none)
    assert main(["demo", "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shardlease: error: shardlease demo: needs a redis-server") and "shardlease[embedded]" in err


def test_demo_arguments_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    from worker.cli import main

    for argv, words in ((["demo", "--workers", "0"], "0 is not between 1 and 20"),
                        (["demo", "--duration", "nan"], "not a positive number of seconds"),
                        (["demo", "--duration", "-5"], "not a positive number of seconds")):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        err = capsys.readouterr().err.strip()
        assert words in err and "\n" not in err
