"""The chart's configuration boots a working fleet.

Renders the chart with Redis (through a referenced Secret) pointing at the test's Redis and
the endpoint at a local DynamoDB Streams server, then starts three local processes with
exactly the container's command, arguments and environment from the rendered Deployment
(``$(VAR)`` references, ``secretKeyRef`` and ``fieldRef`` resolved as the kubelet would).
They must share the shards, consume a stream of 4 shards plus a split to the end, answer
the chart's probe paths, and exit 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.helm.chart import ROOT, env_list, one, render_values, resolve_env, worker_container
from worker.local import LocalStreamsServer

pytestmark = [pytest.mark.e2e, pytest.mark.helm, pytest.mark.timeout(120)]

SHARDLEASE = Path(sys.executable).with_name("shardlease")
WORKERS = 3


def _run_command_available() -> str | None:
    if not (ROOT / "worker" / "cli.py").exists() or not SHARDLEASE.exists():
        return "the `shardlease` CLI (worker/cli.py) is missing"
    done = subprocess.run([str(SHARDLEASE), "run", "--help"], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        return f"`shardlease run --help` failed: {done.stderr.strip()[-500:]}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as err:
        return err.code
    except OSError:
        return 0


def _read_out(path: Path) -> list[tuple[str, str, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((parts[0], parts[1], parts[2]))
    return rows


def test_chart_configuration_runs_a_fleet(redis_url: str, helm: str, tmp_path: Path) -> None:
    reason = _run_command_available()
    if reason:
        pytest.skip(f"chart-driven fleet run needs `shardlease run`: {reason}")
    out = tmp_path / "handled.txt"
    group = f"fleet-{os.getpid()}-{int(time.time())}"
    with LocalStreamsServer(port=0, seed=7, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=4)
        values = {
            "replicaCount": WORKERS,
            "config": {
                "table": "orders",
                "group": group,
                "handler": "tests.helm.fleet_handler:handle",
                "initialPosition": "TRIM_HORIZON",
                "leaseTtl": 3,
                "renewInterval": 0.5,
                "idlePollInterval": 0.2,
                "shardSyncInterval": 1,
                "handoffTimeout": 2,
                "shutdownGrace": 10,
                "logFormat": "text",
            },
            "redis": {"existingSecret": {"name": "fleet-redis", "urlKey": "url"}},
            "aws": {"region": "us-east-1", "endpointUrl": server.endpoint_url},
            "extraEnv": [
                {"name": "SHARDLEASE_FLEET_OUT", "value": str(out)},
                {"name": "PYTHONPATH", "value": str(ROOT)},
            ],
        }
        docs = render_values(helm, values, tmp_path)
        deployment = one(docs, "Deployment")
        assert deployment["spec"]["replicas"] == WORKERS
        container = worker_container(docs)
        command = [*container["command"], *container["args"]]
        assert command[0] == "shardlease"
        command[0] = str(SHARDLEASE)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        secrets = {"fleet-redis": {"url": redis_url}}

        procs: list[tuple[str, int, subprocess.Popen[bytes]]] = []
        logs = []
        try:
            for i in range(WORKERS):
                pod = f"{deployment['metadata']['name']}-abc12-{i}"
                env = resolve_env(env_list(container), secrets, pod)
                assert env["SHARDLEASE_WORKER_ID"] == pod
                assert env["SHARDLEASE_REDIS_URL"] == redis_url
                # One host, three "pods": each needs its own metrics port (the chart's is fixed).
                port = _free_port()
                env["SHARDLEASE_METRICS_PORT"] = str(port)
                base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
                # The pod's identity (IRSA) stands in as dummy static credentials.
                base |= {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
                log = (tmp_path / f"worker-{i}.log").open("wb")
                logs.append(log)
                proc = subprocess.Popen(command, env=base | env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
                procs.append((pod, port, proc))

            # The chart's probes: /healthz and /readyz on the metrics port turn 200.
            deadline = time.monotonic() + 30
            pending = {pod for pod, _, _ in procs}
            while pending and time.monotonic() < deadline:
                for pod, port, proc in procs:
                    assert proc.poll() is None, f"{pod} exited {proc.returncode}: {_tail(tmp_path)}"
                    if pod in pending and _get(f"http://127.0.0.1:{port}/readyz") == 200:
                        assert _get(f"http://127.0.0.1:{port}/healthz") == 200
                        pending.discard(pod)
                time.sleep(0.2)
            assert not pending, f"never ready: {pending}: {_tail(tmp_path)}"

            written: set[str] = set()
            n = 0

            def write(count: int) -> None:
                nonlocal n
                for _ in range(count):
                    n += 1
                    seq = table.put_item({"pk": f"item-{n}", "v": n})
                    assert seq is not None
                    written.add(seq)

            # Waves of writes until every worker has handled some records (the balancer
            # spreads 4 shards over 3 workers after they join).
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                write(40)
                time.sleep(1.0)
                workers = {w for w, _, _ in _read_out(out)}
                if workers == {pod for pod, _, _ in procs}:
                    break
            # A split: the parent's records first, then its children's.
            parent = server.model.shard_ids(table, open_only=True)[0]
            server.model.split_shard(table, parent)
            write(120)

            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                seen = {seq for _, _, seq in _read_out(out)}
                if written <= seen:
                    break
                time.sleep(0.3)
            rows = _read_out(out)
            seen = {seq for _, _, seq in rows}
            missing = written - seen
            assert not missing, f"{len(missing)} of {len(written)} records never handled: {_tail(tmp_path)}"
            per_worker = Counter(w for w, _, _ in rows)
            assert set(per_worker) == {pod for pod, _, _ in procs}, f"not shared: {per_worker}"
            assert len(server.model.shard_ids(table)) == 6
        finally:
            for _, _, proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            codes = {}
            for pod, _, proc in procs:
                try:
                    codes[pod] = proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    proc.kill()  # what the kubelet does after terminationGracePeriodSeconds
                    codes[pod] = proc.wait()
            for log in logs:
                log.close()
        assert all(code == 0 for code in codes.values()), f"exit codes {codes}: {_tail(tmp_path)}"


def _tail(tmp_path: Path) -> str:
    parts = []
    for path in sorted(tmp_path.glob("worker-*.log")):
        parts.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
    return "\n".join(parts)
