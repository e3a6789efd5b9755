"""Checkpoint coalescing (--checkpoint-interval) step by step: a real Redis and the local stream endpoint."""

from __future__ import annotations

import time

import pytest

from leaser import ShardSpec
from tests.test_consumer import Harness, creds, h, run_steps  # noqa: F401  (fixtures)
from worker import consumer as consumer_module
from worker.consumer import ConsumerSettings, ShardConsumer, StopReason
from worker.handling.handler import as_handler


def consumer(h: Harness, shard_id: str, interval_s: float, batch_size: int = 10) -> ShardConsumer:  # noqa: F811
    h.store.register_shards([ShardSpec(shard_id)])
    acquired = h.manager._acquire([shard_id])
    assert acquired, f"could not acquire {shard_id}"
    settings = ConsumerSettings(stream_arn=h.table.stream_arn, group=h.store.group, worker_id="w1",
                                batch_size=batch_size, initial_position="TRIM_HORIZON", idle_poll_interval_s=1.0,
                                lease_ttl_s=30.0, checkpoint_interval_s=interval_s)
    return ShardConsumer(acquired[0], settings=settings, streams=h.streams, manager=h.manager,
                         handler=as_handler(h.recorder), metrics=h.metrics,
                         on_shard_ended=lambda s, c: h.ended.append((s, c)))


def saved(h: Harness, shard_id: str) -> str:  # noqa: F811
    lease = h.store.lease(shard_id)
    assert lease is not None
    return lease.checkpoint

def test_batches_within_the_interval_share_one_checkpoint_and_a_handoff_writes_the_last(h: Harness) -> None:  # noqa: F811
    written = h.write(40)
    c = consumer(h, h.shard(), interval_s=3600)
    run_steps(c, 4)
    assert h.recorder.seen == written
    assert saved(h, c.shard_id) == written[9]  # the first batch's checkpoint; three more coalesced
    assert c.position == written[-1]
    c.request_stop(StopReason.HANDOFF, handoff_to="w2")
    assert c.step() is None
    assert saved(h, c.shard_id) == written[-1]  # written before the release
    lease = h.store.lease(c.shard_id)
    assert lease is not None and lease.owner != "w1"

def test_shutdown_writes_the_last_handled_position(h: Harness) -> None:  # noqa: F811
    written = h.write(25)
    c = consumer(h, h.shard(), interval_s=3600)
    run_steps(c, 3)
    assert saved(h, c.shard_id) == written[9]
    c.request_stop(StopReason.SHUTDOWN)
    assert c.step() is None
    assert saved(h, c.shard_id) == written[-1]

def test_a_crash_redelivers_the_coalesced_batches_and_loses_nothing(h: Harness) -> None:  # noqa: F811
    written = h.write(40)
    c = consumer(h, h.shard(), interval_s=3600)
    run_steps(c, 4)
    # The process dies here: no stop, no release.  The next owner starts from the saved checkpoint.
    h.manager.release(c.shard_id)
    h.recorder.seen.clear()
    c2 = consumer(h, c.shard_id, interval_s=3600)
    run_steps(c2, 4)
    assert h.recorder.seen == written[10:]  # the 30 coalesced records again (at-least-once), none lost

def test_an_idle_shard_writes_its_coalesced_checkpoint_when_the_interval_is_up(h: Harness) -> None:  # noqa: F811
    written = h.write(15)
    c = consumer(h, h.shard(), interval_s=0.3)
    run_steps(c, 2)
    assert saved(h, c.shard_id) == written[9]
    delay = c.step()  # an empty page: the idle wait is cut to the checkpoint's due time
    assert delay is not None and delay <= 0.3
    time.sleep(0.35)
    c.step()
    assert saved(h, c.shard_id) == written[-1]

def test_an_expired_iterator_resumes_after_the_handled_position_not_the_saved_one(h: Harness) -> None:  # noqa: F811
    written = h.write(30)
    c = consumer(h, h.shard(), interval_s=3600)
    run_steps(c, 2)
    assert saved(h, c.shard_id) == written[9]
    h.server.model.set_faults(iterator_ttl_s=0.05)
    time.sleep(0.1)
    run_steps(c, 6)
    assert h.recorder.seen == written  # nothing handled twice

def test_interval_zero_checkpoints_every_batch(h: Harness) -> None:  # noqa: F811
    written = h.write(30)
    c = consumer(h, h.shard(), interval_s=0)
    for i in range(3):
        c.step()
        assert saved(h, c.shard_id) == written[10 * i + 9]


def test_a_handoff_with_late_renewals_waits_rather_than_release_unsaved(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    written = h.write(20)
    c = consumer(h, h.shard(), interval_s=3600)
    run_steps(c, 2)
    assert saved(h, c.shard_id) == written[9]
    c.request_stop(StopReason.HANDOFF, handoff_to="w2")
    monkeypatch.setattr(h.manager, "may_act", lambda shard_id, token: "last renewal 29.0 s ago")
    assert c.step() == consumer_module.RENEWAL_WAIT_S  # not released: the next owner would redo 10 records
    lease = h.store.lease(c.shard_id)
    assert lease is not None and lease.owner == "w1" and lease.checkpoint == written[9]
    monkeypatch.undo()
    assert c.step() is None
    assert saved(h, c.shard_id) == written[-1]
