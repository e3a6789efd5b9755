"""A shard repositioned to a time (a rewind, --to-latest): its reader skips what was created before it."""

from __future__ import annotations

import time
import types

import pytest

from leaser import Position, ShardSpec
from tests.test_consumer import Harness, creds, h, run_steps
from worker.local import model as model_module

__all__ = ["creds", "h"]  # fixtures shared with test_consumer


def test_records_created_before_the_start_time_are_skipped_counted_and_never_handled(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    monkeypatch.setattr(model_module, "time", types.SimpleNamespace(time=lambda: now - 600))
    old = h.write(25)
    monkeypatch.setattr(model_module, "time", types.SimpleNamespace(time=lambda: now))
    new = h.write(5, start=25)
    shard = h.shard()
    h.store.register_shards([ShardSpec(shard)])
    h.store.reposition([Position(shard, skip_before_ms=int((now - 300) * 1000))], expected_epoch=0,
                       request_id="r", record={"what": "test"})
    c = h.consumer(shard)
    # A page whose records were all skipped is no idle shard: the next read follows at once.
    assert c.step() == 0.0 and h.recorder.seen == []
    run_steps(c, 6)
    assert h.recorder.seen == new and set(old).isdisjoint(h.recorder.seen)
    assert h.metrics.value("shardlease_records_skipped_before_start_total") == 25
    lease = h.store.lease(shard)
    assert lease is not None and lease.checkpoint == new[-1]
