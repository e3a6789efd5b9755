"""The shardlease command: one-line errors with exit codes scripts can act on; switches, help, version;
status; the embedded Redis; a user's handler named like our packages; several workers on one host."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from leaser import LeaseStore, ShardSpec, __version__, connect
from worker.cli import main
from worker.local import LocalStreamsServer

ROOT = Path(__file__).resolve().parent.parent
HANDLER = "worker.handling.handler:log_records"
ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/orders/stream/2026-01-01T00:00:00.000"
ENTRY_POINT = Path(sys.executable).parent / "shardlease"


@pytest.fixture
def stream() -> Iterator[tuple[str, str, LocalStreamsServer]]:
    with LocalStreamsServer(port=0) as server:
        table = server.create_table("orders", shards=2)
        yield server.endpoint_url, table.stream_arn, server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith("SHARDLEASE_") and not name.startswith("SHARDLEASE_TEST_"):
            monkeypatch.delenv(name)


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("shardlease: error: ") and "\n" not in err and "Traceback" not in err
    return err


def unreachable_redis_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """An unreachable Redis is retried at start-up (each retry logged), then the command fails on one line;
    returns all of stderr (the password must be in none of it).  Exit 75: a dependency stayed unavailable."""
    assert main(argv) == 75
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("shardlease: error: ") and "redis_url" in last and "Traceback" not in err
    return err


def test_malformed_arn(capsys: pytest.CaptureFixture[str], redis_url: str) -> None:
    err = one_line_error(capsys, ["run", "--stream-arn", "arn:aws:dynamodb:us-east-1:123:table/x", "--redis-url",
                                  redis_url])
    assert "stream_arn" in err


def test_unknown_flag_value(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["run", "--table", "orders", "--initial-position", "SOMEWHERE"])
    assert "initial_position" in err and "TRIM_HORIZON" in err


def test_handler_that_does_not_import(
    capsys: pytest.CaptureFixture[str], redis_url: str, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, _ = stream
    err = one_line_error(capsys, ["run", "--stream-arn", arn, "--endpoint-url", endpoint, "--redis-url", redis_url,
                                  "--handler", "no_such_module_xyz:handle", "--metrics-port", "0"])
    assert "handler" in err and "no_such_module_xyz" in err


def test_unreachable_redis_is_named_without_its_password(
    capsys: pytest.CaptureFixture[str], stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, _ = stream
    err = unreachable_redis_error(capsys, ["run", "--stream-arn", arn, "--endpoint-url", endpoint, "--handler", HANDLER,
                                           "--redis-url", "redis://user:hunter2@127.0.0.1:1/0", "--metrics-port", "0"])
    assert "redis_url" in err and "hunter2" not in err


def test_disabled_stream(
    capsys: pytest.CaptureFixture[str], redis_url: str, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, server = stream
    server.model.disable_stream(server.model.table("orders"))
    err = one_line_error(capsys, ["run", "--stream-arn", arn, "--endpoint-url", endpoint, "--redis-url", redis_url,
                                  "--metrics-port", "0", "--handler", HANDLER])
    assert "DISABLED" in err
    err = one_line_error(capsys, ["run", "--table", "orders", "--endpoint-url", endpoint, "--redis-url", redis_url,
                                  "--metrics-port", "0", "--handler", HANDLER])
    assert "table" in err and "disabled" in err


def test_unknown_stream(
    capsys: pytest.CaptureFixture[str], redis_url: str, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, _ = stream
    other = arn.replace("table/orders", "table/nothere")
    err = one_line_error(capsys, ["run", "--stream-arn", other, "--endpoint-url", endpoint, "--redis-url", redis_url,
                                  "--metrics-port", "0", "--handler", HANDLER])
    assert "does not exist" in err


def test_a_coordinator_that_fails_exits_1_after_a_clean_shutdown(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, redis_url: str, group: str,
    stream: tuple[str, str, LocalStreamsServer],
) -> None:
    """A bug in the coordinator stops the worker the way SIGTERM does, but the exit code says it was not asked to
    (it exited 0 before: a supervisor would not restart it, or an operator would not notice)."""
    from worker.runtime import Worker

    endpoint, arn, _ = stream
    ticks = 0

    def heartbeat_failing_on_the_second_tick(self: Worker) -> object:
        nonlocal ticks
        ticks += 1
        if ticks == 2:
            raise RuntimeError("a bug in the coordinator")
        return heartbeat(self)

    heartbeat = Worker._heartbeat
    monkeypatch.setattr(Worker, "_heartbeat", heartbeat_failing_on_the_second_tick)
    monkeypatch.setattr(Worker, "install_signal_handlers", lambda self: None)
    code = main(["run", "--stream-arn", arn, "--endpoint-url", endpoint, "--redis-url", redis_url, "--group", group,
                 "--metrics-port", "0", "--handler", HANDLER, "--renew-interval", "0.2", "--lease-ttl", "2"])
    assert code == 1
    assert "the coordinator failed; shutting down" in caplog.text
    held = [lease for lease in LeaseStore(connect(redis_url), group).leases() if lease.owner]
    assert held == []  # the leases went back, as on a SIGTERM


def test_a_misspelt_environment_variable_is_named_with_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, redis_url: str
) -> None:
    """SHARDLEASE_BATCHSIZE was ignored without a word (the batch size silently stayed 100)."""
    monkeypatch.setenv("SHARDLEASE_BATCHSIZE", "10")
    monkeypatch.setenv("SHARDLEASE_TEST_OUT", "/tmp/x")  # the tests' hooks are not settings and not warned about
    assert main(["run", "--stream-arn", ARN, "--redis-url", redis_url, "--handler", "no_such_module_xyz:handle",
                 "--metrics-port", "0"]) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "SHARDLEASE_" in r.getMessage()]
    assert warnings == ["SHARDLEASE_BATCHSIZE is set but no setting reads it: ignored; did you mean "
                        "SHARDLEASE_BATCH_SIZE?"]


def test_unknown_flag_exits_2_as_a_process() -> None:
    proc = subprocess.run([sys.executable, "-m", "worker", "run", "--no-such-flag"], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr and "--no-such-flag" in proc.stderr


def test_status_shows_workers_and_shards(
    capsys: pytest.CaptureFixture[str], redis_url: str, group: str, redis_client: object
) -> None:
    store = LeaseStore(connect(redis_url), group)
    store.register_shards([ShardSpec("shard-a", (), 1), ShardSpec("shard-b", ("shard-a",), 2)])
    store.heartbeat("w1", {})
    [a], _ = store.acquire("w1", ["shard-a"])
    store.checkpoint("w1", "shard-a", a.token, "100000000000000000042")
    assert main(["status", "--group", group, "--redis-url", redis_url]) == 0
    text = capsys.readouterr().out
    assert "1 worker:\n" in text and "1 workers" not in text
    assert [line.split()[:2] for line in text.splitlines() if line.startswith("  w1 ")] == [["w1", "1"]]
    assert "shard-a" in text and "owned" in text and "100000000000000000042" in text
    assert "shard-b" in text and "blocked" in text
    assert main(["status", "--group", group, "--redis-url", redis_url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["leader"] == "w1"
    assert doc["version"] == __version__
    assert doc["workers"] == [{"worker_id": "w1", "leases": 1, "metrics": None, "version": None}]
    states = {s["shard_id"]: (s["state"], s["owner"]) for s in doc["shards"]}
    assert states == {"shard-a": ("owned", "w1"), "shard-b": ("blocked", None)}


def test_status_never_prints_the_redis_password(capsys: pytest.CaptureFixture[str], group: str) -> None:
    err = unreachable_redis_error(capsys, ["status", "--group", group, "--redis-url", "redis://:s3cret@127.0.0.1:1/0"])
    assert "s3cret" not in err


def test_run_without_redis_url_uses_an_embedded_redis(
    tmp_path: Path, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, server = stream
    table = server.model.table("orders")
    for i in range(10):
        table.put_item({"pk": f"k{i}", "n": i})
    out = tmp_path / "handled.jsonl"
    env = dict(os.environ, SHARDLEASE_TEST_OUT=str(out), PYTHONPATH=str(ROOT),
               SHARDLEASE_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen([sys.executable, "-m", "worker", "run", "--stream-arn", arn, "--endpoint-url", endpoint,
                             "--handler", "tests.e2e.recording_handler:handle", "--metrics-port", "0"],
                            env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 10):
            time.sleep(0.2)
        assert out.exists() and len(out.read_text().splitlines()) == 10
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        subprocess.run([sys.executable, "-m", "worker", "stop-embedded", "--data-dir", str(tmp_path / "data")],
                       cwd=ROOT, env=env, check=True, timeout=30)
    assert proc.returncode == 0
    assert "embedded Redis" in stderr and "one host only" in stderr
    assert (tmp_path / "data" / "redis" / "appendonly.aof").exists() or any((tmp_path / "data" / "redis").iterdir())


# -- Through the console script: exit code and the exact first line ---------------------------------


def shardlease(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
               timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The installed ``shardlease`` entry point (``python -m worker`` when there is none)."""
    command = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else [sys.executable, "-m", "worker"]
    return subprocess.run([*command, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=env if env is not None else dict(os.environ, PYTHONPATH=str(ROOT)))


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def assert_error(done: subprocess.CompletedProcess[str], code: int, line: str) -> None:
    assert (done.returncode, first_line(done.stderr)) == (code, line), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_version_is_the_distribution_version() -> None:
    from importlib.metadata import version

    import worker

    done = shardlease("--version")
    assert (done.returncode, first_line(done.stdout)) == (0, f"shardlease {version('shardlease')}")
    assert worker.__version__ == __version__ == version("shardlease")


def test_switches_take_no_value() -> None:
    done = shardlease("run", "--table", "orders", "--handler", HANDLER, "--bisect-on-error", "true")
    assert_error(done, 2, "shardlease: error: --bisect-on-error is a switch and takes no value ('true'): give "
                          "--bisect-on-error to turn it on or --no-bisect-on-error to turn it off "
                          "(see shardlease run --help)")
    done = shardlease("run", "--table", "orders", "--handler", HANDLER, "--stop-on-failure", "--max-retry-attempts",
                      "3")
    assert_error(done, 2, "shardlease: error: stop_on_failure (--stop-on-failure / SHARDLEASE_STOP_ON_FAILURE): "
                          "strict mode never skips a record, so it cannot be combined with --max-retry-attempts or "
                          "--max-record-age; drop those two, or drop --stop-on-failure")
    # --no-... turns off what the environment turned on.
    env = dict(os.environ, PYTHONPATH=str(ROOT), SHARDLEASE_STOP_ON_FAILURE="true",
               SHARDLEASE_TEST_STARTUP_RETRY_S="1")  # the unreachable Redis below: retried 1 s, not 60
    done = shardlease("run", "--table", "orders", "--handler", HANDLER, "--no-stop-on-failure",
                      "--max-retry-attempts", "3", "--redis-url", "redis://127.0.0.1:1/0", env=env)
    assert done.returncode == 75 and "stop_on_failure" not in done.stderr


@pytest.mark.parametrize(("args", "line"), [
    (["run", "--bisect-on-eror"],
     "shardlease: error: unknown option --bisect-on-eror; did you mean --bisect-on-error? (see shardlease run --help)"),
    (["run", "--tabel=orders"],
     "shardlease: error: unknown option --tabel; did you mean --table? (see shardlease run --help)"),
    (["run", "--no-such-flag"], "shardlease: error: unknown option --no-such-flag (see shardlease run --help)"),
    (["run", "--batch", "5"],  # no abbreviations: a prefix would change meaning when a flag is added
     "shardlease: error: unknown option --batch; did you mean --batch-size? (see shardlease run --help)"),
    (["status", "--redis-ulr", "redis://x"],
     "shardlease: error: unknown option --redis-ulr; did you mean --redis-url? (see shardlease status --help)"),
    (["dlq", "list", "--limt", "3"],
     "shardlease: error: unknown option --limt; did you mean --limit? (see shardlease dlq list --help)"),
])
def test_unknown_flag_names_the_closest_one(args: list[str], line: str) -> None:
    assert_error(shardlease(*args), 2, line)


def test_run_help_is_grouped_with_an_example() -> None:
    done = shardlease("run", "--help")
    assert (done.returncode, first_line(done.stdout)) == (0, "usage: shardlease run [-h] [--stream-arn ARN] "
                                                             "[--table NAME]")
    out = done.stdout
    titles = ["Stream:", "Coordination:", "Delivery:", "Failure handling:", "Observability:", "Redis security:"]
    at = [out.index("\n" + title) for title in titles]
    assert at == sorted(at)
    assert "--bisect-on-error, --no-bisect-on-error" in out
    flat = " ".join(out.split())
    assert "default default" not in flat and "default: default" not in flat
    assert "example: shardlease run --table Orders --group orders-indexer --handler myapp.sink:handle" in flat


def test_handler_is_required() -> None:
    done = shardlease("run", "--table", "orders")
    assert_error(done, 2, "shardlease: error: handler (--handler / SHARDLEASE_HANDLER): no handler given: run needs "
                          "the function your records go to; give --handler package.module:function "
                          "(worker.handling.handler:log_records only logs each batch)")


def test_exit_codes(tmp_path: Path, redis_url: str) -> None:
    # 75: a dependency stayed unavailable (Redis refused; DynamoDB Streams throttling after the retries).
    # (retried for 1 s instead of 60 through the test hook; each retry is a log line before the error)
    done = shardlease("run", "--stream-arn", ARN, "--handler", HANDLER, "--redis-url",
                      "redis://user:hunter2@127.0.0.1:1/0", "--metrics-port", "0",
                      env=dict(os.environ, PYTHONPATH=str(ROOT), SHARDLEASE_TEST_STARTUP_RETRY_S="1"))
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 75, done.stderr
    assert last.startswith("shardlease: error: redis_url (--redis-url / SHARDLEASE_REDIS_URL): cannot reach Redis at "
                           "redis://user:***@127.0.0.1:1/0 (ConnectionError), retried for "), last
    assert last.endswith("check the host, port and TLS settings, and that Redis is running")
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr
    # 2: bad credentials are a configuration error.
    wrong = redis_url.replace("redis://", "redis://nobody:wrong@")
    done = shardlease("run", "--stream-arn", ARN, "--handler", HANDLER, "--redis-url", wrong, "--metrics-port", "0")
    assert_error(done, 2, f"shardlease: error: redis_url (--redis-url / SHARDLEASE_REDIS_URL): "
                          f"{wrong.replace(':wrong@', ':***@')} refused the credentials; check the user and password "
                          "in the URL or its Secret")

    def run_with(error: str) -> subprocess.CompletedProcess[str]:
        # The console script's main(), with the stream lookup failing as it would after its retries.
        script = (
            "import sys, worker.runtime as r, worker.errors as e\n"
            "def fail(streams, config):\n"
            f"    raise {error}\n"
            "r.resolve_stream = fail\n"
            "from worker.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n"
        )
        return subprocess.run([sys.executable, "-c", script, "run", "--stream-arn", ARN, "--handler", HANDLER,
                               "--redis-url", redis_url, "--metrics-port", "0"], capture_output=True, text=True,
                              cwd=ROOT, timeout=60)

    assert_error(run_with("e.StreamThrottled('DescribeStream throttled')"), 75,
                 "shardlease: error: DescribeStream throttled")
    assert_error(run_with("e.StreamServerError('DescribeStream: InternalServerError')"), 75,
                 "shardlease: error: DescribeStream: InternalServerError")
    # 1: a fatal error, or one nobody expected: still one line, without the password.
    assert_error(run_with("e.AccessDenied('not authorized to perform DescribeStream')"), 1,
                 "shardlease: error: not authorized to perform DescribeStream")
    assert_error(run_with("RuntimeError('boom at redis://u:s3cret@h:1/0')"), 1,
                 "shardlease: error: unexpected RuntimeError: boom at redis://u:***@h:1/0")


USER_WORKER = """
import json, os

def handle(records, ctx):
    with open(os.environ["OUT"], "a") as out:
        for r in records:
            out.write(json.dumps([__name__, r.sequence_number]) + "\\n")
"""


def test_a_handler_module_named_worker(tmp_path: Path, redis_url: str, group: str,
                                       stream: tuple[str, str, LocalStreamsServer]) -> None:
    endpoint, arn, server = stream
    for i in range(5):
        server.model.table("orders").put_item({"pk": f"k{i}"})
    (tmp_path / "worker.py").write_text(USER_WORKER)
    out = tmp_path / "out.jsonl"
    env = dict(os.environ, OUT=str(out))
    env.pop("PYTHONPATH", None)
    command = [str(ENTRY_POINT)] if ENTRY_POINT.exists() else pytest.skip("no shardlease entry point")
    proc = subprocess.Popen([*command, "run", "--stream-arn", arn, "--endpoint-url", endpoint, "--redis-url",
                             redis_url, "--group", group, "--handler", "worker:handle", "--metrics-port", "0"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or len(out.read_text().splitlines()) < 5):
            time.sleep(0.2)
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 5 and {name for name, _ in lines} == {"_shardlease_user_worker"}

    # Without a worker.py here, `worker:handle` names our own package: one line says so and how to fix it.
    (tmp_path / "worker.py").unlink()
    done = shardlease("run", "--stream-arn", arn, "--handler", "worker:handle", "--redis-url", redis_url,
                      cwd=tmp_path, env=env)
    assert_error(done, 2, "shardlease: error: handler (--handler / SHARDLEASE_HANDLER): 'worker' is shardlease's "
                          "own package, which has no 'handle', and the current directory "
                          f"{os.path.realpath(tmp_path)} holds no worker.py to load instead; run from the "
                          "directory of your worker.py, or rename your module (e.g. myapp_handler.py) and update "
                          "--handler")


def test_status_never_starts_a_redis(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = shardlease("status", "--data-dir", str(data))
    assert (done.returncode, first_line(done.stdout)) == (
        0, f"nothing to show: no --redis-url given and no embedded Redis is running under {data / 'redis'} "
           "(status never starts one)")
    assert not data.exists()
    done = shardlease("status", "--data-dir", str(data), "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["redis"] is None
    done = shardlease("dlq", "list", "--data-dir", str(data))
    assert (done.returncode, first_line(done.stdout)) == (
        0, f"no dead letters to show: no --redis-url given and no embedded Redis is running under {data / 'redis'} "
           "(dlq never starts one)")
    assert not data.exists()


def test_status_and_dlq_take_runs_redis_settings(tmp_path: Path) -> None:
    for command in (["status"], ["dlq", "list"], ["dlq", "replay", "--all", "--handler", HANDLER]):
        done = shardlease(*command, "--redis-url", "rediss://h:6380/0", "--redis-ca-file", str(tmp_path / "no.pem"))
        assert_error(done, 2, "shardlease: error: redis_ca_file (--redis-ca-file / SHARDLEASE_REDIS_CA_FILE): "
                              f"file {str(tmp_path / 'no.pem')!r} does not exist (from --redis-ca-file); give the "
                              "path of a readable PEM file")
        done = shardlease(*command, "--redis-url", "redis://h:6379/0", "--redis-cert-file", __file__)
        assert done.returncode == 2 and "TLS files only apply to a rediss:// server" in done.stderr
        done = shardlease(*command, "--app", "a{b}")
        assert done.returncode == 2 and first_line(done.stderr).startswith("shardlease: error: group (--group")


def test_status_of_an_unknown_group_lists_the_groups(redis_url: str, group: str) -> None:
    LeaseStore(connect(redis_url), group).heartbeat("w1", {})
    done = shardlease("status", "--group", "no-such-group", "--redis-url", redis_url)
    assert (done.returncode, first_line(done.stdout)) == (0, f"group 'no-such-group' on {redis_url}; leader: (none)")
    hint = done.stdout.splitlines()[1]
    assert hint.startswith("group 'no-such-group' has no workers and no shards here; groups found: ")
    assert group in hint.split(": ", 1)[1].split(" (")[0].split(", ")
    done = shardlease("status", "--group", "no-such-group", "--redis-url", redis_url, "--json")
    assert group in json.loads(done.stdout)["note"]


def _free_or_taken_default_port() -> socket.socket | None:
    """Hold port 9400 (None if something else already does: it is taken either way)."""
    sock = socket.socket()
    try:
        sock.bind(("0.0.0.0", 9400))
        sock.listen()
    except OSError:
        sock.close()
        return None
    return sock


def test_second_worker_on_a_host_takes_the_next_metrics_port(
    tmp_path: Path, redis_url: str, group: str, stream: tuple[str, str, LocalStreamsServer]
) -> None:
    endpoint, arn, _ = stream
    held = _free_or_taken_default_port()
    log = tmp_path / "worker.log"
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen([str(ENTRY_POINT), "run", "--stream-arn", arn, "--endpoint-url", endpoint,
                                     "--redis-url", redis_url, "--group", group, "--handler", HANDLER,
                                     "--worker-id", "w-host"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            worker: dict[str, object] = {}
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not worker.get("metrics"):
                done = shardlease("status", "--group", group, "--redis-url", redis_url, "--json")
                worker = next((w for w in json.loads(done.stdout)["workers"] if w["worker_id"] == "w-host"), {})
                time.sleep(0.3)
            text = shardlease("status", "--group", group, "--redis-url", redis_url).stdout
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        if held is not None:
            held.close()
    assert proc.returncode == 0, log.read_text()
    port = int(str(worker["metrics"]).rsplit(":", 1)[1])
    assert port != 9400 and worker["version"] == __version__
    assert f"metrics port 9400 is taken (another worker on this host?): serving /metrics, /healthz and /readyz " \
           f"on port {port} instead (shardlease status shows it)" in log.read_text()
    assert f"shardlease {__version__}: worker w-host joining group" in log.read_text()
    [row] = [line.split() for line in text.splitlines() if line.startswith("  w-host ")]
    assert row[2:] == [str(worker["metrics"]), __version__]  # WORKER LEASES METRICS VERSION

    # An explicitly given port that is taken still fails, in one line.
    with socket.create_server(("0.0.0.0", 0)) as busy:
        taken = busy.getsockname()[1]
        done = shardlease("run", "--stream-arn", arn, "--endpoint-url", endpoint, "--redis-url", redis_url,
                          "--group", group, "--handler", HANDLER, "--metrics-port", str(taken), "--log-level", "ERROR")
    assert_error(done, 2, f"shardlease: error: metrics_port (--metrics-port / SHARDLEASE_METRICS_PORT): cannot "
                          f"listen on 0.0.0.0:{taken}: Address already in use; choose a free port, or 0 to turn "
                          "the metrics server off")


def test_redis_cluster_urls_are_accepted_by_every_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import redis_setup

    monkeypatch.setattr(redis_setup, "TOOL_RETRY_S", 0.2)
    err = unreachable_redis_error(capsys, ["status", "--redis-url", "redis+cluster://u:Secr3t@127.0.0.1:1/0"])
    assert "Secr3t" not in err and "unsupported URL scheme" not in err


def test_a_url_that_does_not_parse_never_quotes_the_password(capsys: pytest.CaptureFixture[str]) -> None:
    err = one_line_error(capsys, ["status", "--redis-url", "redis://:zq/xv@127.0.0.1:1/0"])
    assert "zq" not in err and "xv" not in err and "percent-encode" in err
