"""The Grafana dashboard (docs/grafana, shipped in the chart) asks only for metrics and labels the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from worker.observability import LEASE_REASONS, STUCK_STATES, Metrics

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "docs" / "grafana" / "shardlease-dashboard.json"
CHART_COPY = ROOT / "helm" / "shardlease" / "dashboards" / "shardlease-dashboard.json"
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service"}
"""Labels Prometheus adds to every scraped series."""
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}


def _exercised() -> Metrics:
    """A registry with a sample for every metric: each recording method called once (and per-shard ages on)."""
    m = Metrics("w-1", "g", per_shard=True)
    m.records_processed(3)
    m.batches_processed()
    m.handler_error()
    m.records_filtered(2)
    m.records_failed("retries_exhausted")
    m.iterator_age("shardId-1", 1.0)
    m.pending_since("shardId-2", 0.0)
    m.handler_duration(0.01)
    m.batch_size(3)
    m.destination_error()
    m.shards_stuck({"retrying": 1})
    m.leases_held(1)
    m.lease_gained("handoff")
    m.lease_lost("handoff")
    m.shards_unowned(0)
    m.shards_blocked(0)
    m.is_leader(True)
    m.getrecords_call(0.02)
    m.throttle("GetRecords")
    m.checkpoint_failure()
    m.trimmed_data()
    m.describe_stream_call()
    m.timed_heartbeat(lambda: None)
    m.redis_command("script:heartbeat", 0.001, "timeout")
    return m


def _exposition(m: Metrics) -> dict[str, set[str]]:
    """Sample name -> its label names, as a scrape of the worker's /metrics sees them."""
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def _expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


def test_every_metric_of_the_registry_is_in_the_exercised_exposition() -> None:
    """The exercise above covers every metric (a new one must be exercised too, so the check below sees it)."""
    m = _exercised()
    exported = _exposition(m)
    for family in m.registry.collect():
        assert any(name.startswith(family.name) for name in exported), f"{family.name} has no sample: exercise it"


def test_every_expression_names_an_exported_metric_and_its_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exported = _exposition(_exercised())
    exprs = _expressions(dashboard)
    assert len(exprs) >= 20
    for expr in exprs:
        names = re.findall(r"\bshardlease_[a-z0-9_]+", expr)
        assert names, f"no shardlease metric in {expr!r}"
        labels: set[str] = set(TARGET_LABELS)
        for name in names:
            assert name in exported, f"{name} (in {expr!r}) is not a metric the worker exports"
            labels |= exported[name]
        for selector in re.findall(r"shardlease_[a-z0-9_]+\{([^}]*)\}", expr):
            for key, value in re.findall(r'([a-z_]+)\s*=~?\s*"([^"]*)"', selector):
                assert key in labels, f"label {key!r} (in {expr!r}) is not on {names}"
                if key == "reason":
                    assert value in LEASE_REASONS, expr
                if key == "state":
                    assert value in STUCK_STATES, expr
        for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in filter(None, (part.strip() for part in grouping.split(","))):
                assert label in labels, f"grouping label {label!r} (in {expr!r}) is not on {names}"
        for word in re.findall(r"\b[a-z_]+\b(?=\s*\()", expr):  # functions and groupings only
            assert word in PROMQL_WORDS or word in {"sum", "max", "min", "count", "rate", "topk",
                                                    "histogram_quantile", "label_values"}, (word, expr)


def test_the_dashboard_has_the_panels_operators_look_for() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = {p["title"]: " ".join(t["expr"] for t in p.get("targets", [])) for p in dashboard["panels"]}
    wanted = {
        "Iterator age by worker": "shardlease_iterator_age_seconds",
        "Throughput": "shardlease_records_processed_total",
        "Errors": "shardlease_handler_errors_total",
        "Leases per worker": "shardlease_leases_held",
        "Handoffs": 'reason="handoff"',
        "Handler duration": "shardlease_handler_duration_seconds_bucket",
        "Batch size": "shardlease_batch_size_bucket",
        "Redis latency by command (p99)": "shardlease_redis_command_duration_seconds_bucket",
        "Redis errors": "shardlease_redis_command_errors_total",
        "Heartbeat duration": "shardlease_heartbeat_duration_seconds_bucket",
        "Stuck shards by state": "shardlease_shards_stuck",
        "Unowned and blocked shards, leader": "shardlease_shards_blocked",
        "Iterator age of the 20 oldest shards": "shardlease_shard_iterator_age_seconds",
    }
    for title, metric in wanted.items():
        assert metric in panels.get(title, ""), title
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "shardlease" and dashboard["title"] == "shardlease"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all('job=~"$job"' in t["expr"] for t in panel["targets"]), panel["title"]


def test_the_chart_ships_the_same_dashboard() -> None:
    assert CHART_COPY.read_bytes() == DASHBOARD.read_bytes(), (
        f"the chart's copy differs: cp {DASHBOARD.relative_to(ROOT)} {CHART_COPY.relative_to(ROOT)}")
