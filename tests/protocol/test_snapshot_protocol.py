"""The snapshot's Redis protocol on a real Redis: the clock and the gate, segment leases, fencing,
expiry, once per group, the read-unit bucket (docs/snapshot.md)."""

from __future__ import annotations

import time

import pytest
import redis

from leaser.snapshot import SnapshotStore
from worker.snapshot.gate import StreamGate


@pytest.fixture
def store(redis_client: redis.Redis, group: str) -> SnapshotStore:
    return SnapshotStore(redis_client, group, notice_s=0)


def test_records_read_after_an_announce_wait_for_the_page_and_no_longer(store: SnapshotStore) -> None:
    gate = StreamGate(store)
    assert gate.tag() == 0  # no snapshot: records go at once
    assert store.start(2) == ("started", 2)
    a = store.claim("w1", 10_000)
    assert a is not None and a.checkpoint == ""
    before = gate.tag()  # records read before the page's announce
    assert before == 0
    ticket = store.announce(a.segment, "w1", a.token)
    assert ticket is not None
    after = gate.tag()  # records read after it: they may be of writes the page does not reflect
    assert after >= ticket
    assert not gate.clear(after)
    assert store.page_done(a.segment, "w1", a.token, ticket, '{"pk": {"S": "k1"}}', 10, 100) == "ok"
    assert gate.clear(after)
    # A later page has a larger ticket: it never holds records tagged before its announce.
    ticket2 = store.announce(a.segment, "w1", a.token)
    assert ticket2 is not None and ticket2 > after
    assert gate.clear(after)
    assert not gate.clear(gate.tag() or ticket2)


def test_the_oldest_page_in_flight_holds_only_records_tagged_after_it(store: SnapshotStore) -> None:
    gate = StreamGate(store)
    store.start(2)
    a, b = store.claim("w1", 10_000), store.claim("w2", 10_000)
    assert a is not None and b is not None
    t1 = store.announce(a.segment, "w1", a.token)
    v1 = gate.tag()
    t2 = store.announce(b.segment, "w2", b.token)
    v2 = gate.tag()
    assert t1 is not None and t2 is not None and t1 <= v1 < t2 <= v2
    assert store.page_done(a.segment, "w1", a.token, t1, "", 5, 50) == "segment_done"
    assert gate.clear(v1)  # page t2 was announced after v1's records were read
    assert not gate.clear(v2)
    store.release(b.segment, "w2", b.token, keep_lease=True)  # abandoned: out of flight, lease kept
    assert gate.clear(v2)
    assert store.state().segments_held == 1


def test_an_expired_segment_stops_holding_the_stream_and_resumes_from_its_checkpoint(store: SnapshotStore) -> None:
    gate = StreamGate(store)
    store.start(1)
    a = store.claim("w1", 400)
    assert a is not None
    t1 = store.announce(a.segment, "w1", a.token)
    assert t1 is not None
    assert store.page_done(a.segment, "w1", a.token, t1, '{"pk": {"S": "k5"}}', 1, 10) == "ok"
    t2 = store.announce(a.segment, "w1", a.token)
    v = gate.tag()
    assert not gate.clear(v)
    assert store.claim("w2", 10_000) is None  # held
    time.sleep(0.5)  # w1 is killed: its lease and its page in flight expire on Redis time
    assert gate.clear(v)
    b = store.claim("w2", 10_000)
    assert b is not None and b.segment == a.segment and b.token > a.token
    assert b.checkpoint == '{"pk": {"S": "k5"}}'
    # The zombie's writes are refused by its token.
    assert t2 is not None
    assert store.page_done(a.segment, "w1", a.token, t2, "", 1, 10) == "lost"
    assert store.announce(a.segment, "w1", a.token) is None
    assert store.renew("w1", 10_000, {a.segment: a.token}) == {a.segment}
    assert store.release(a.segment, "w1", a.token) is False


def test_renewal_keeps_a_slow_page_in_flight(store: SnapshotStore) -> None:
    gate = StreamGate(store)
    store.start(1)
    a = store.claim("w1", 300)
    assert a is not None
    assert store.announce(a.segment, "w1", a.token) is not None
    v = gate.tag()
    for _ in range(5):  # the handler takes 1 s on the page; the worker renews every 0.2 s
        time.sleep(0.2)
        assert store.renew("w1", 300, {a.segment: a.token}) == set()
    assert not gate.clear(v)


def test_the_snapshot_runs_once_per_group_until_restarted(store: SnapshotStore) -> None:
    assert store.start(2) == ("started", 2)
    assert store.start(8) == ("running", 2)  # a second worker joins the running snapshot
    for worker in ("w1", "w2"):
        c = store.claim(worker, 10_000)
        assert c is not None
        t = store.announce(c.segment, worker, c.token)
        assert t is not None
        answer = store.page_done(c.segment, worker, c.token, t, "", 3, 30)
    assert answer == "snapshot_done"
    state = store.state()
    assert (state.status, state.segments_done, state.items, state.bytes, state.pages) == ("done", 2, 6, 60, 2)
    assert store.start(2) == ("done", 2)
    assert store.claim("w1", 10_000) is None
    clock = store.gate()[0]
    assert store.start(3, restart=True) == ("started", 3)
    c = store.claim("w1", 10_000)
    assert c is not None and c.checkpoint == ""
    t = store.announce(c.segment, "w1", c.token)
    assert t is not None and t > clock  # the clock is never reset
    assert store.state().items == 0


def test_the_read_unit_bucket_is_shared_and_refills(store: SnapshotStore) -> None:
    assert store.spend(100, 0) == 0
    assert store.spend(100, 150) > 0.3  # 50 units in debt at 100/s: about half a second
    assert store.spend(100, 0) > 0.3  # another worker sees the same debt
    time.sleep(0.6)
    assert store.spend(100, 0) == 0


def test_segment_counts_out_of_range_are_refused(store: SnapshotStore) -> None:
    for bad in (0, 1_000_001):
        with pytest.raises(ValueError):
            store.start(bad)


def test_a_restart_keeps_the_previous_runs_pages_in_flight_until_they_expire(store: SnapshotStore) -> None:
    gate = StreamGate(store)
    store.start(1)
    a = store.claim("w1", 600)
    assert a is not None
    assert store.announce(a.segment, "w1", a.token) is not None
    v = gate.tag()
    assert store.start(1, restart=True) == ("started", 1)
    # The old scanner may still be inside a handler call with its page: records read after it still wait.
    assert not gate.clear(v)
    b = store.claim("w2", 10_000)
    assert b is not None and b.segment == a.segment
    t = store.announce(b.segment, "w2", b.token)
    assert t is not None
    store.release(b.segment, "w2", b.token, keep_lease=True)
    assert not gate.clear(v)  # the new run's page did not replace the old one
    assert store.renew("w1", 600, {a.segment: a.token}) == {a.segment}
    time.sleep(0.7)
    assert gate.clear(v)


def test_a_quiet_gate_answer_is_reused_only_within_the_notice_and_never_across_a_start(
    redis_client: redis.Redis, group: str
) -> None:
    """The gate's cost: asked after every page with records, the gate cost each busy shard a script call per batch
    (61.6 Redis commands/s per busy shard instead of 30.3 in bench/redis_cost.py, snapshot or not).  A worker now
    reuses a "no snapshot" answer for records read within 0.4 of the notice after the call was sent, and a
    snapshot's first page waits out the notice after its start, so no record read in that window can be of a write
    a page does not reflect."""
    store = SnapshotStore(redis_client, group, notice_s=2.0)
    now = [100.0]
    gate = StreamGate(store, clock=lambda: now[0])
    assert gate.tag(read_at=100.0) == 0 and gate.calls == 1
    assert gate.tag(read_at=100.5) == 0 and gate.calls == 1  # within 0.8 s of the quiet answer: not asked
    now[0] = 100.6
    assert gate.tag(read_at=100.9) == 0 and gate.calls == 2  # past it: asked again (sent at 100.6: good to 101.4)
    now[0] = 101.0
    assert store.start(1) == ("started", 1)
    a = store.claim("w1", 10_000)
    assert a is not None
    wait = store.announce(a.segment, "w1", a.token)
    assert isinstance(wait, float) and 0 < wait <= 2.0  # the notice: no page yet
    # Records read within the quiet window of the last answer (sent at 100.6, good to 101.4) go without asking:
    # they were read before any page of this snapshot can be announced (not before 101.0 + 2.0 on Redis time).
    assert gate.tag(read_at=101.0) == 0 and gate.calls == 2
    # Past it, the gate is asked, hears that a snapshot runs, and asks after every page from then on.
    assert gate.tag(read_at=101.7) == 0 and gate.calls == 3
    assert gate.tag(read_at=101.71) == 0 and gate.calls == 4
    time.sleep(wait + 0.05)
    ticket = store.announce(a.segment, "w1", a.token)
    assert isinstance(ticket, int) and ticket > 0
    assert gate.tag(read_at=101.8) == ticket and gate.calls == 5  # held for the page
