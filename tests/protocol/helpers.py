"""Builders for lease tests: a store on the real test Redis with a short TTL, and a fleet simulator."""

from __future__ import annotations

import redis

from leaser import LeaseConfig, LeaseManager, LeaseStore, ShardSpec


def make_store(client: redis.Redis, group: str, **overrides: float) -> LeaseStore:
    settings: dict[str, float] = {"lease_ttl_s": 2.0, "renew_interval_s": 0.5}
    settings.update(overrides)
    return LeaseStore(client, group, LeaseConfig(**settings))  # type: ignore[arg-type]


def specs(n: int, prefix: str = "s") -> list[ShardSpec]:
    return [ShardSpec(f"{prefix}{i:05d}", (), float(i)) for i in range(n)]


def expire_now(store: LeaseStore, shard_id: str) -> None:
    """Make a lease look expired, as if lease_ttl_s had passed on Redis time without renewal."""
    store.client.hset(store.keys.lease(shard_id), "expires_ms", 1)
    store.client.zadd(store.keys.owned, {shard_id: 1})


def expire_member(store: LeaseStore, worker_id: str) -> None:
    """Make a worker's membership look expired (it stopped heartbeating)."""
    store.client.zadd(store.keys.members, {worker_id: 1})


class Fleet:
    """Workers ticking in rounds without threads; gives are honoured at once (finish, release)."""

    def __init__(self, store: LeaseStore, names: list[str]) -> None:
        self.store = store
        self.managers = {name: LeaseManager(store, name) for name in names}
        self.moves = 0

    def add(self, name: str) -> None:
        self.managers[name] = LeaseManager(self.store, name)

    def crash(self, name: str) -> None:
        manager = self.managers.pop(name)
        for shard in manager.held():
            expire_now(self.store, shard)
        expire_member(self.store, name)

    def leave(self, name: str) -> None:
        manager = self.managers.pop(name)
        manager.leave()
        manager.tick()
        for shard in list(manager.held()):
            manager.release(shard)

    def round(self) -> None:
        for manager in list(self.managers.values()):
            result = manager.tick()
            self.moves += len(result.gained)
            for shard, taker in result.give:
                manager.release(shard, to=taker)
        for manager in self.managers.values():
            self.moves += len(manager.poll_grants())

    def counts(self) -> dict[str, int]:
        return {name: len(m.held()) for name, m in self.managers.items()}

    def run_until_balanced(self, total: int, max_rounds: int = 30) -> int:
        """Rounds until every lease is held and max - min <= 1 (stable for two rounds)."""
        stable = 0
        for rounds in range(1, max_rounds + 1):
            self.round()
            counts = self.counts()
            if sum(counts.values()) == total and max(counts.values()) - min(counts.values()) <= 1:
                stable += 1
                if stable == 2:
                    return rounds
            else:
                stable = 0
        raise AssertionError(f"not balanced after {max_rounds} rounds: {self.counts()}")
