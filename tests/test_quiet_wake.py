"""A wake (worker.polling) of a quiet shard, on a real consumer: a real Redis and the local stream endpoint."""

from __future__ import annotations

from leaser import ShardSpec
from tests.test_consumer import Harness, creds, h  # noqa: F401  (fixtures)
from worker.consumer import ConsumerSettings, ShardConsumer
from worker.handling.handler import as_handler


def quiet_consumer(h: Harness) -> ShardConsumer:  # noqa: F811
    shard_id = h.shard()
    h.store.register_shards([ShardSpec(shard_id)])
    acquired = h.manager._acquire([shard_id])
    assert acquired
    settings = ConsumerSettings(stream_arn=h.table.stream_arn, group=h.store.group, worker_id="w1", batch_size=10,
                                initial_position="TRIM_HORIZON", idle_poll_interval_s=1.0, lease_ttl_s=30.0,
                                quiet_after_s=0.0)
    return ShardConsumer(acquired[0], settings=settings, streams=h.streams, manager=h.manager,
                         handler=as_handler(h.recorder), metrics=h.metrics,
                         on_shard_ended=lambda s, c: h.ended.append((s, c)))


def test_a_wake_does_not_cut_short_the_backoff_of_a_shard_whose_read_failed(h: Harness) -> None:  # noqa: F811
    c = quiet_consumer(h)
    assert c.step() is not None  # an empty page: quiet, waiting for its next slot (1 s away)
    slot = c._pacer.slot
    assert slot is not None
    h.server.model.set_faults(internal_error_rate=1.0)
    assert c.step() is not None  # GetRecords fails: the shard backs off (throttled or an AWS error)
    # The pacer alone would let a wake 0.1 s before the slot poll it (the slot is within the 0.5 s wake gap, the
    # last poll 0.9 s old); woken, it would call GetRecords again at every wake whatever its backoff.
    assert not c.wake(slot - 0.1)
    h.server.model.set_faults(internal_error_rate=0.0)
    assert c.step() is not None  # read again, successfully: wakes apply again
    slot = c._pacer.slot
    assert slot is not None and c.wake(slot - 0.1)
