"""The snapshot's progress as metrics (on the worker's registry) and as status lines."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from leaser.snapshot import SnapshotState


class SnapshotMetrics:
    """``shardlease_snapshot_*``: this worker's share (counters) and the group's progress (gauges, as this
    worker last read them from Redis, after each page it finished)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.items = Counter("shardlease_snapshot_items", "Snapshot items this worker handed to the handler.",
                             registry=registry)
        self.bytes = Counter("shardlease_snapshot_bytes", "Bytes of the snapshot items this worker handed over.",
                             registry=registry)
        self.throttles = Counter("shardlease_snapshot_throttles", "Scan calls throttled or failed (then retried).",
                                 registry=registry)
        self.segments = Gauge("shardlease_snapshot_segments", "Segments of the group's snapshot.", registry=registry)
        self.segments_done = Gauge("shardlease_snapshot_segments_done", "Segments of the group's snapshot done.",
                                   registry=registry)
        self.group_items = Gauge("shardlease_snapshot_group_items", "Items the whole group handed over so far.",
                                 registry=registry)
        self.rate = Gauge("shardlease_snapshot_items_per_second",
                          "The group's snapshot items per second since the snapshot started.", registry=registry)
        self.eta = Gauge("shardlease_snapshot_eta_seconds",
                         "Estimated seconds until the snapshot is done (from the segments done so far; -1 unknown).",
                         registry=registry)

    def update(self, state: SnapshotState, now_ms: int) -> None:
        self.segments.set(state.segments)
        self.segments_done.set(state.segments_done)
        self.group_items.set(state.items)
        rate, eta = estimate(state, now_ms)
        self.rate.set(rate)
        self.eta.set(-1 if eta is None else eta)


def estimate(state: SnapshotState, now_ms: int) -> tuple[float, float | None]:
    """(items per second so far, seconds left or None when no segment finished yet; 0 when done).

    The time left is extrapolated from the share of segments done: segments are ranges of the key hash, so
    they hold about equal shares of the items."""
    elapsed_s = max(((state.done_ms or now_ms) - state.started_ms) / 1000, 0.001)
    rate = state.items / elapsed_s
    if state.status == "done":
        return rate, 0.0
    if not state.segments_done:
        return rate, None
    return rate, elapsed_s * (state.segments - state.segments_done) / state.segments_done


def progress_lines(state: SnapshotState, now_ms: int) -> list[str]:
    """What ``status`` shows about the group's snapshot (nothing if it never ran), with a progress bar."""
    if not state.status:
        return []
    rate, eta = estimate(state, now_ms)
    width = 30
    filled = width * state.segments_done // max(state.segments, 1)
    bar = "#" * filled + "." * (width - filled)
    line = (f"snapshot: {state.status}, {state.segments_done}/{state.segments} segments done "
            f"({state.segments_held} being scanned), {state.items} items, {state.bytes} bytes, {rate:.0f} items/s")
    if state.status == "running":
        line += ", time left unknown" if eta is None else f", about {eta:.0f} s left"
    return [line, f"  [{bar}]"]
