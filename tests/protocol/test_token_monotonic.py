"""Fencing tokens keep growing across a Redis failover and an empty restart, with real redis-server processes.

A sink told to keep the highest token per shard and reject lower ones must never see a new owner with a
token at or below one issued before.  Two ways the group's counter can step back:

* a replica promoted after it missed the primary's last writes (replication is asynchronous);
* a restart without persistence (the counter key is gone).

Every draw takes max(counter + 1, Redis server time in microseconds), so a new primary or an empty server
starts above everything issued before (its clock has moved on), and a burst faster than the clock only
pushes the counter ahead of it.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis

from leaser import LeaseStore, ShardSpec
from leaser.embedded import RedisServer
from tests.protocol.helpers import expire_now, make_store, specs


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url, decode_responses=True)


def _draw(store: LeaseStore, worker: str, shards: list[str]) -> list[int]:
    """Every kind of token draw, in order: acquisitions, the leader lease by heartbeat, by leader.lua."""
    acquired, refused = store.acquire(worker, shards)
    assert refused == {} and [a.shard_id for a in acquired] == shards
    tokens = [a.token for a in acquired]
    store.client.delete(store.keys.leader)  # the leader lease ran out: the next heartbeat takes it
    beat = store.heartbeat(worker, {})
    assert beat.leader == worker
    tokens.append(beat.leader_token)
    store.client.delete(store.keys.leader)
    leader = store.leader(worker, 5000)
    assert leader.owner == worker
    tokens.append(leader.token)
    return tokens


def _strictly_increasing(tokens: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(tokens))


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def primary() -> Iterator[RedisServer]:
    server = RedisServer().start()  # no persistence: --save '' --appendonly no
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def replica(primary: RedisServer) -> Iterator[RedisServer]:
    server = RedisServer(extra_args=("--replicaof", "127.0.0.1", str(primary.port))).start()
    try:
        client = _client(server)
        _wait_for(lambda: client.info("replication").get("master_link_status") == "up", "the replica's link")
        client.close()
        yield server
    finally:
        server.stop()


def test_a_replica_promoted_after_it_lost_writes_issues_larger_tokens(
    primary: RedisServer, replica: RedisServer
) -> None:
    group = f"fo-{uuid.uuid4().hex[:8]}"
    p_client, r_client = _client(primary), _client(replica)
    p = make_store(p_client, group)
    shards = [s.shard_id for s in specs(10)]
    p.register_shards(specs(10))
    before = _draw(p, "w1", shards[:5])
    # The replica has everything so far (the counter included) ...
    assert p_client.wait(1, 5000) == 1
    _wait_for(lambda: r_client.get(p.keys.token) == p_client.get(p.keys.token), "the replica to catch up")
    # ... then it is cut off and misses the primary's last writes, as in a crash before replication.
    r_client.replicaof("NO", "ONE")
    _wait_for(lambda: r_client.info("replication").get("role") == "master", "the replica's promotion")
    lost = _draw(p, "w2", shards[5:])
    issued_by_old_primary = before + lost
    assert _strictly_increasing(issued_by_old_primary), issued_by_old_primary
    # The promoted replica: the shards the old primary handed out last are free here; the first five are
    # still w1's until they expire.
    r = make_store(r_client, group)
    after = _draw(r, "w3", shards[5:])
    for shard in shards[:5]:
        expire_now(r, shard)
    taken, _ = r.acquire("w3", shards[:5])
    after += [a.token for a in taken]
    assert len(after) == 12
    assert min(after) > max(issued_by_old_primary), (
        f"the promoted replica issued {sorted(after)}; the old primary had issued up to {max(issued_by_old_primary)}"
    )
    p_client.close()
    r_client.close()


def test_a_restart_without_persistence_issues_larger_tokens(primary: RedisServer) -> None:
    group = f"rs-{uuid.uuid4().hex[:8]}"
    client = _client(primary)
    store = make_store(client, group)
    shards = [s.shard_id for s in specs(5)]
    store.register_shards(specs(5))
    before = _draw(store, "w1", shards)
    store.release("w1", shards[0], before[0])
    before += _draw(store, "w2", shards[:1])  # a re-acquisition of the same shard
    assert _strictly_increasing(before), before
    client.close()
    primary.stop()
    primary.start()  # same port, no persistence: empty
    client = _client(primary)
    assert client.dbsize() == 0
    store = make_store(client, group)
    assert store.register_shards(specs(5)) == dict.fromkeys(shards, "ready")
    after = _draw(store, "w1", shards)
    assert _strictly_increasing(after), after
    assert min(after) > max(before), f"after the restart: {after}; before it, up to {max(before)}"
    client.close()


def test_a_burst_of_draws_gives_strictly_increasing_integer_tokens(primary: RedisServer) -> None:
    client = _client(primary)
    store = make_store(client, f"bu-{uuid.uuid4().hex[:8]}")
    store.register_shards(specs(3, prefix="x"))
    first = _draw(store, "w0", ["x00000", "x00001", "x00002"])
    # The counter is lost on its own (an operator's DEL, a failover): the next burst still goes above it.
    client.delete(store.keys.token)
    store.register_shards(specs(400))
    shards = [s.shard_id for s in specs(400)]
    tokens = [a.token for a in store.acquire("w1", shards)[0]]  # 400 acquisitions in one pipelined round trip
    store.register_shards([ShardSpec(f"y{i:02d}") for i in range(20)])
    for i in range(20):  # leader draws interleaved with acquisitions
        tokens += _draw(store, f"w{i % 3}", [f"y{i:02d}"])
    assert len(tokens) == 400 + 20 * 3
    assert _strictly_increasing(tokens), "a burst gave equal or falling tokens"
    assert min(tokens) > max(first), f"after the counter was lost: {min(tokens)}; before: up to {max(first)}"
    # Tokens are stored as integers (never 1.8e+15), so the fence matches the caller's token exactly.
    raw = client.hget(store.keys.lease(shards[0]), "token")
    assert raw is not None and re.fullmatch(r"[1-9][0-9]*", raw), raw
    counter = client.get(store.keys.token)
    assert counter is not None and re.fullmatch(r"[1-9][0-9]*", counter), counter
    assert int(counter) == max(tokens)
    held = {s: t for s, t in zip(shards, tokens, strict=False)}
    assert store.heartbeat("w1", held).lost == {}
    assert store.checkpoint("w1", shards[0], held[shards[0]], "42") is True
    # A counter ahead of the clock (bursts, or a primary whose clock ran ahead) keeps counting up by one.
    ahead = max(tokens) + 10_000_000_000  # about 3 hours ahead of server time in microseconds
    client.set(store.keys.token, ahead)
    store.register_shards(specs(5, prefix="z"))
    z = [a.token for a in store.acquire("w2", [s.shard_id for s in specs(5, prefix="z")])[0]]
    assert z == [ahead + 1, ahead + 2, ahead + 3, ahead + 4, ahead + 5]
    client.close()
