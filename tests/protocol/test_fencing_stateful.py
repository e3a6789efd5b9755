"""Random interleavings of acquire, renew, expire, handoff and release on a real Redis.

The property: at every step, for every shard, at most one worker can write (checkpoint)
with the token it holds, and checkpoints never move backwards.
"""

from __future__ import annotations

import contextlib
import uuid

import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from leaser import LeaseLostError, LeaseStore, ShardSpec
from tests.protocol.helpers import expire_now, make_store

WORKERS = ("w1", "w2", "w3")
SHARDS = ("s1", "s2", "s3")


def make_machine(redis_url: str) -> type[RuleBasedStateMachine]:
    class Fencing(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.client = redis.Redis.from_url(redis_url, decode_responses=True)
            self.store: LeaseStore = make_store(self.client, f"h-{uuid.uuid4().hex[:10]}", lease_ttl_s=30.0,
                                                renew_interval_s=5.0)
            self.store.register_shards([ShardSpec(s) for s in SHARDS])
            # What each worker believes it holds: (worker, shard) -> token.  Beliefs can be stale.
            self.believed: dict[tuple[str, str], int] = {}
            self.seq = 0
            self.checkpoints: dict[str, int] = {}

        @rule(w=st.sampled_from(WORKERS), s=st.sampled_from(SHARDS))
        def acquire(self, w: str, s: str) -> None:
            acquired, _ = self.store.acquire(w, [s])
            for a in acquired:
                self.believed[(w, s)] = a.token

        @rule(w=st.sampled_from(WORKERS), s=st.sampled_from(SHARDS), victim=st.sampled_from(WORKERS))
        def take_over(self, w: str, s: str, victim: str) -> None:
            acquired, _ = self.store.acquire(w, [s], take_from=victim)
            for a in acquired:
                self.believed[(w, s)] = a.token

        @rule(w=st.sampled_from(WORKERS))
        def renew(self, w: str) -> None:
            mine = {s: t for (ww, s), t in self.believed.items() if ww == w}
            hb = self.store.heartbeat(w, mine)
            # A worker told it lost a lease forgets it; others keep stale beliefs on purpose.
            for s in hb.lost:
                self.believed.pop((w, s), None)

        @rule(s=st.sampled_from(SHARDS))
        def expire(self, s: str) -> None:
            lease = self.store.lease(s)
            if lease is not None and lease.owner:
                expire_now(self.store, s)

        @rule(w=st.sampled_from(WORKERS), s=st.sampled_from(SHARDS), to=st.sampled_from(("", *WORKERS)))
        def release(self, w: str, s: str, to: str) -> None:
            token = self.believed.get((w, s))
            if token is None:
                return
            with contextlib.suppress(LeaseLostError):
                self.store.release(w, s, token, to=to)
            self.believed.pop((w, s), None)

        @rule(w=st.sampled_from(WORKERS), s=st.sampled_from(SHARDS), step=st.integers(-5, 5))
        def checkpoint(self, w: str, s: str, step: int) -> None:
            token = self.believed.get((w, s))
            if token is None:
                return
            self.seq = max(self.seq + step, 1)
            try:
                self.store.checkpoint(w, s, token, str(self.seq))
            except LeaseLostError:
                self.believed.pop((w, s), None)

        @invariant()
        def at_most_one_writer_per_shard(self) -> None:
            for s in SHARDS:
                lease = self.store.lease(s)
                assert lease is not None
                writers = [
                    w for (w, shard), token in self.believed.items()
                    if shard == s and token == lease.token and w == lease.owner
                ]
                assert len(writers) <= 1
                # Every other belief is fenced: its token is not the lease's.
                for (w, shard), token in self.believed.items():
                    if shard == s and w not in writers:
                        assert token != lease.token or w != lease.owner

        @invariant()
        def checkpoints_never_regress(self) -> None:
            for s in SHARDS:
                lease = self.store.lease(s)
                assert lease is not None
                value = int(lease.checkpoint) if lease.checkpoint else 0
                assert value >= self.checkpoints.get(s, 0)
                self.checkpoints[s] = value

        @invariant()
        def indexes_agree_with_leases(self) -> None:
            free = set(self.client.zrange(self.store.keys.free, 0, -1))
            owned = set(self.client.zrange(self.store.keys.owned, 0, -1))
            assert not free & owned
            for s in SHARDS:
                lease = self.store.lease(s)
                assert lease is not None
                assert (s in owned) == bool(lease.owner)
                assert (s in free) == (not lease.owner)

        def teardown(self) -> None:
            for key in self.client.scan_iter(match=f"shardlease:{{{self.store.group}}}:*"):
                self.client.delete(key)
            self.client.close()

    return Fencing


def test_two_workers_never_hold_the_same_lease(redis_url: str) -> None:
    machine = make_machine(redis_url)
    machine.TestCase.settings = settings(
        max_examples=max(60, settings.default.max_examples), stateful_step_count=40, deadline=None
    )
    machine.TestCase().runTest()
