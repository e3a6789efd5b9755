"""An asyncio application embedding a worker, as a real process: start, consume, stop, nothing left."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from leaser import LeaseStore, connect
from leaser.embedded import free_port
from tests.e2e.fleet import ROOT, Fleet
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(90)
def test_an_asyncio_host_starts_consumes_and_stops_an_embedded_worker(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=2)
        before_start = [str(table.put_item({"pk": f"k{n % 5}", "n": n})) for n in range(30)]
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group)
        metrics_port = free_port()
        log = open(tmp_path / "host.log", "wb")  # noqa: SIM115 (closed below)
        host = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.embedding_host", table.stream_arn, server.endpoint_url, redis_url,
             group, str(metrics_port)],
            env=fleet.env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=log)
        try:
            assert host.stdout is not None
            assert host.stdout.readline() == b"started\n", (tmp_path / "host.log").read_text()
            after_start = [str(table.put_item({"pk": f"k{n % 5}", "n": n})) for n in range(30, 60)]
            rows = fleet.wait_for(set(before_start + after_start), timeout_s=30)
            # The metrics server was asked for (metrics_port): it serves while the worker runs. The connection
            # stays open (keep-alive, as a Prometheus scraper's does) through the stop: its thread must end too.
            scraper = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
            scraper.request("GET", "/healthz")
            reply = scraper.getresponse()
            assert reply.status == 200 and reply.read() == b"ok\n"
            host.send_signal(signal.SIGTERM)
            out, _ = host.communicate(timeout=40)
            scraper.close()
        finally:
            if host.poll() is None:
                host.kill()
            log.close()
    host_log = (tmp_path / "host.log").read_text()
    assert host.returncode == 0, host_log[-2000:]
    report = json.loads(out.splitlines()[-1])
    assert {r.seq for r in rows} >= set(before_start + after_start)
    assert {"shardlease-worker", "scheduler", "wake", "shardlease-http"} <= set(report["threads_running"])
    assert report["threads_after"] == report["threads_before"], report
    assert report["signals_untouched"] and report["state"] == "stopped"
    assert report["ticks_while_stopping"] > 0  # the event loop ran while the worker stopped
    leases = LeaseStore(connect(redis_url), group).leases()
    assert leases and not any(lease.owner for lease in leases)  # every lease handed back
    assert "Traceback" not in host_log
