"""The snapshot's progress: rate, time left, the metrics and the status lines."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from leaser.snapshot import SnapshotState
from worker.snapshot.progress import SnapshotMetrics, estimate, progress_lines


def state(status: str, done: int, items: int, *, done_ms: int = 0) -> SnapshotState:
    return SnapshotState(status=status, segments=8, segments_done=done, segments_held=2, items=items,
                         bytes=items * 10, pages=done, started_ms=1_000_000, done_ms=done_ms, run=1)


def test_time_left_is_extrapolated_from_the_segments_done() -> None:
    assert estimate(state("running", 0, 500), 1_010_000) == (50.0, None)
    rate, left = estimate(state("running", 2, 2_000), 1_010_000)  # 10 s for 2 of 8 segments: 30 s left
    assert rate == 200.0 and left == 30.0
    assert estimate(state("done", 8, 8_000, done_ms=1_040_000), 2_000_000) == (200.0, 0.0)


def test_metrics_and_status_lines_show_the_progress() -> None:
    registry = CollectorRegistry()
    metrics = SnapshotMetrics(registry)
    metrics.update(state("running", 2, 2_000), 1_010_000)
    assert registry.get_sample_value("shardlease_snapshot_segments_done") == 2
    assert registry.get_sample_value("shardlease_snapshot_eta_seconds") == 30
    assert registry.get_sample_value("shardlease_snapshot_items_per_second") == 200
    line, bar = progress_lines(state("running", 2, 2_000), 1_010_000)
    assert "2/8 segments done" in line and "about 30 s left" in line and "2000 items" in line
    assert bar.strip() == "[" + "#" * 7 + "." * 23 + "]"
    assert progress_lines(SnapshotState("", 0, 0, 0, 0, 0, 0, 0, 0, 0), 0) == []
