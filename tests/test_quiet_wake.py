"""A wake (worker.polling) of a quiet shard and a GetRecords budget (worker.reading.budget), on a real consumer: a
real Redis and the local stream endpoint."""

from __future__ import annotations

import time
from typing import Any

from leaser import ShardSpec
from tests.test_consumer import Harness, creds, h, run_steps  # noqa: F401  (fixtures)
from worker.consumer import ConsumerSettings, ShardConsumer, StopReason
from worker.handling.handler import as_handler
from worker.reading.budget import ReadBudget


def quiet_consumer(h: Harness, *, budget: ReadBudget | None = None, **settings: Any) -> ShardConsumer:  # noqa: F811
    """A consumer of a new shard, quiet from the start (``quiet_after_s`` 0) unless ``settings`` say otherwise."""
    shard_id = h.shard()
    h.store.register_shards([ShardSpec(shard_id)])
    acquired = h.manager._acquire([shard_id])
    assert acquired
    config = ConsumerSettings(**{"stream_arn": h.table.stream_arn, "group": h.store.group, "worker_id": "w1",
                                 "batch_size": 10, "initial_position": "TRIM_HORIZON", "idle_poll_interval_s": 1.0,
                                 "lease_ttl_s": 30.0, "quiet_after_s": 0.0, **settings})
    return ShardConsumer(acquired[0], settings=config, streams=h.streams, manager=h.manager,
                         handler=as_handler(h.recorder), metrics=h.metrics,
                         on_shard_ended=lambda s, c: h.ended.append((s, c)), budget=budget)


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


def test_a_shard_waiting_for_a_getrecords_token_reads_nothing_and_still_stops_at_once(h: Harness) -> None:  # noqa: F811
    """--max-getrecords-per-second: a consumer refused a token waits (the step returns the wait, no GetRecords);
    a shutdown asked meanwhile releases the lease at its next step, which the scheduler runs at once."""
    budget = ReadBudget(0.01, quiet_yield_s=1.0, ceiling_s=1.0)
    budget.set_share(1, 1)  # one token, then one per 100 s
    c = quiet_consumer(h, budget=budget)
    calls: list[str] = []
    get_records = h.streams.get_records

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("shard_id", ""))
        return get_records(*args, **kwargs)

    h.streams.get_records = counted  # type: ignore[method-assign]
    written = h.write(3)
    run_steps(c, 3)  # the token: the page is read, handed over and checkpointed
    assert h.recorder.seen == written and len(calls) == 1 and budget.granted == 1
    h.write(2, start=3)
    wait = c.step()
    assert wait is not None and wait > 10  # no token for about 100 s: the shard waits, reading nothing
    assert len(calls) == 1 and h.recorder.seen == written
    c.request_stop(StopReason.SHUTDOWN)
    assert c.step() is None
    lease = h.store.lease(c.shard_id)
    assert lease is not None and lease.owner == "" and lease.checkpoint == written[-1]
    assert not budget._waiting  # its place in line is given up


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_shard_that_delivers_instead_of_waiting_for_a_token_does_not_hold_up_the_others(h: Harness) -> None:  # noqa: F811
    """Refused a token once its batching window is up, a consumer hands over what it gathered instead of waiting:
    it is no longer waiting in line, so it must not keep its place there while its handler runs (seconds, or
    minutes of retries).  Kept, the place counted ahead of every later request: with a bucket of one token
    (a share of at most 1 call/s) no other shard of the worker got a token until the place went stale
    (STALE_S after its wait), and the tokens refilled meanwhile were lost.  Failed before the fix."""
    clock = FakeClock()
    budget = ReadBudget(1.0, quiet_yield_s=1.0, ceiling_s=1.0, clock=clock)
    budget.set_share(2, 2)  # 1 call/s for this worker's two shards: a bucket of one token
    c = quiet_consumer(h, budget=budget, batching_window_s=0.001, quiet_after_s=60.0)  # busy: records just came
    written = h.write(3)
    assert c.step() is not None  # the token: 3 records gathered, the batch (10) not full, its window open
    assert not h.recorder.seen and budget.granted == 1
    time.sleep(0.01)  # the batching window (1 ms) is up
    clock.now = 0.5  # half a token back: refused
    c.step()  # no token: the 3 records are handed over instead
    assert h.recorder.seen == written
    # The consumer now runs its handler (or not: it does not ask).  A token is back a second later: the
    # worker's other shard asking then gets it.
    clock.now = 1.5
    assert budget.request("other shard", busy=True) == 0.0


def test_a_getrecords_token_is_not_spent_on_an_iterator_that_expired_while_the_shard_waited(
        h: Harness, monkeypatch: Any) -> None:  # noqa: F811
    """Under a budget a shard's polls can be further apart than a shard iterator lives (AWS: 900 s): e.g. 1
    call/s for 1,000 shards.  The kept iterator is then renewed (GetShardIterator, not budgeted) before the
    GetRecords the token is for; used as it was, every such poll spent its token on an ExpiredIteratorException
    and waited a second turn in line for the read (half the budget lost, every interval doubled).
    Failed before the fix: the token's call failed, the record stayed unread."""
    monkeypatch.setattr("worker.consumer.ITERATOR_REFRESH_S", 0.2, raising=False)  # stands for 10 of AWS's 15 min
    clock = FakeClock()
    budget = ReadBudget(1.0, quiet_yield_s=1.0, ceiling_s=1.0, clock=clock)
    budget.set_share(1, 1)  # one token, then one per second of the fake clock
    c = quiet_consumer(h, budget=budget)
    assert c.step() is not None  # the token: an empty page, its next iterator kept
    h.server.model.set_faults(iterator_ttl_s=0.5)
    time.sleep(0.6)  # the kept iterator is now expired
    written = h.write(1)
    clock.now = 1.0  # one more token
    for _ in range(3):
        c.step()
    assert budget.granted == 2
    assert h.recorder.seen == written
