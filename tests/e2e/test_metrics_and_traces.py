"""A real worker process exports the new metrics and, with a tracer provider configured, the spans.

One worker, the local stream endpoint and a real Redis: its /metrics (scraped over HTTP) has the Redis
round trips of the lease protocol by script, heartbeat durations, batch sizes and, with --per-shard-metrics,
each shard's iterator age, and no _created series; the spans its handler module's provider exported link
each handler call to the GetRecords calls that read its batch.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from leaser.embedded import free_port
from tests.e2e.fleet import Fleet
from worker.local import LocalStreamsServer

pytestmark = pytest.mark.e2e


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert "_created" not in text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def test_a_worker_exports_redis_heartbeat_batch_and_per_shard_metrics_and_spans(
    tmp_path: Path, redis_url: str, group: str
) -> None:
    spans_file = tmp_path / "spans.jsonl"
    with LocalStreamsServer(port=0, empty_page_probability=0.0) as server:
        table = server.create_table("orders", shards=1)
        written = {str(table.put_item({"pk": f"k{n}", "n": n})) for n in range(12)}
        shard = server.model.shard_ids(table, open_only=True)[0]
        port = free_port()
        fleet = Fleet(tmp_path, redis_url, server.endpoint_url, table.stream_arn, group,
                      **{"batch-size": "5", "metrics-port": str(port), "metrics-host": "127.0.0.1",
                         "per-shard-metrics": "true"})
        fleet.start("w1", handler="tests.e2e.otel_handler:handle", SHARDLEASE_TEST_SPANS=str(spans_file))
        try:
            rows = fleet.wait_for(written, timeout_s=30)
            assert written <= {r.seq for r in rows}, fleet.log_text("w1")
            deadline = time.monotonic() + 10
            while True:  # the checkpoint after the last batch, then its heartbeat
                samples = _scrape(port)
                if (_value(samples, "shardlease_records_processed_total") == 12
                        or time.monotonic() > deadline):
                    break
                time.sleep(0.2)
        finally:
            codes = fleet.stop_all()
        assert codes == {"w1": 0}, fleet.log_text("w1")

    count = "shardlease_redis_command_duration_seconds_count"
    for command in ("ping", "script:register", "script:acquire", "script:heartbeat", "script:checkpoint"):
        assert (_value(samples, count, command=command) or 0) >= 1, command
    assert not any(name == count and dict(labels)["command"] in ("other", "script:other") for name, labels in samples)
    assert (_value(samples, "shardlease_heartbeat_duration_seconds_count") or 0) >= 1
    assert _value(samples, "shardlease_batch_size_count") == 3  # 5 + 5 + 2 records
    assert _value(samples, "shardlease_batch_size_sum") == 12
    assert _value(samples, "shardlease_shard_iterator_age_seconds", shard_id=shard) is not None

    spans: list[dict[str, Any]] = [json.loads(line) for line in spans_file.read_text().splitlines()]
    reads = {s["context"]["span_id"]: s for s in spans if s["name"] == "GetRecords"}
    calls = [s for s in spans if s["name"] == "shardlease.handle"]
    assert [c["attributes"]["shardlease.batch_size"] for c in calls] == [5, 5, 2]
    assert {c["attributes"]["shardlease.outcome"] for c in calls} == {"ok"}
    assert {c["attributes"]["shardlease.shard_id"] for c in calls} == {shard}
    for call in calls:
        linked = [link["context"]["span_id"] for link in call["links"]]
        assert linked and all(reads[span_id]["attributes"]["shardlease.records"] > 0 for span_id in linked)
