"""A stuck shard is visible: iterator age grows, the stuck gauge counts it, `shardlease status` marks it.

Real worker processes, a real Redis and the local endpoint.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from leaser.embedded import free_port
from tests.e2e.fleet import ROOT, Fleet
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def status_json(redis_url: str, group: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "worker", "status", "--group", group, "--redis-url", redis_url,
                          "--json"], capture_output=True, text=True, check=True, cwd=ROOT, timeout=60)
    return dict(json.loads(out.stdout))


def test_a_batch_that_keeps_failing_shows_as_stuck_and_its_iterator_age_grows(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        for n in range(10):
            table.put_item({"pk": f"k{n}", "n": n})
        port = free_port()
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"batch-size": "5", "metrics-port": str(port), "metrics-host": "127.0.0.1"})
        fleet.start("w1", handler="tests.e2e.policy_handler:handle", SHARDLEASE_TEST_FAIL_N="7",
                    SHARDLEASE_TEST_FAIL_TIMES="-1")
        try:
            deadline = time.monotonic() + 30
            shard: dict[str, Any] = {}
            while time.monotonic() < deadline:
                shards = status_json(redis_url, group)["shards"]
                if shards and shards[0]["health"] == "retrying" and (shards[0]["stuck_for_s"] or 0) >= 2:
                    shard = shards[0]
                    break
                time.sleep(0.5)
            assert shard, "status never marked the failing shard as retrying"
            # The first batch (n 0..4) is done; the second stops at n=7 and is retried for ever.
            first = scrape(port)
            time.sleep(2.0)
            second = scrape(port)
            assert second['shardlease_shards_stuck{state="retrying"}'] == 1
            assert second['shardlease_shards_stuck{state="hung"}'] == 0
            assert second["shardlease_iterator_age_seconds"] >= first["shardlease_iterator_age_seconds"] + 1.5
            assert second["shardlease_handler_duration_seconds_count"] >= 3
            text = subprocess.run([sys.executable, "-m", "worker", "status", "--group", group, "--redis-url",
                                   redis_url], capture_output=True, text=True, check=True, cwd=ROOT).stdout
            assert "1 shard stuck" in text and "RETRYING" in text
        finally:
            codes = fleet.stop_all()
        assert codes == {"w1": 0}
