"""A shard repositioned to a time (a rewind, --to-latest): its reader skips what was created before it."""

from __future__ import annotations

import time
import types

import pytest

from leaser import SKIP_BEFORE_NOW, Position, ShardSpec
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


def test_after_to_latest_a_record_written_just_after_is_handled_though_dynamodbs_clock_is_behind_redis(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ApproximateCreationDateTime is DynamoDB's clock, the change's time is Redis's.  With DynamoDB's
    # clock up to a second behind, a record written just after --to-latest carries the second before
    # the change's Redis second: skipping it would lose it.
    shard = h.shard()
    h.store.register_shards([ShardSpec(shard)])
    h.store.reposition([Position(shard, skip_before_ms=SKIP_BEFORE_NOW)], expected_epoch=0, request_id="r",
                       record={"what": "test"})
    lease = h.store.lease(shard)
    assert lease is not None
    changed_s = h.store.history(1)[0]["at_ms"] // 1000  # the change's second, on Redis's clock
    monkeypatch.setattr(model_module, "time", types.SimpleNamespace(time=lambda: changed_s - 0.001))
    after = h.write(2)
    c = h.consumer(shard)
    run_steps(c, 6)
    assert h.recorder.seen == after
