"""Key names: one hash tag per group, one Redis Cluster slot, unsafe names rejected."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from leaser import ConfigError, GroupKeys, LeaseStore, ShardSpec, validate_group
from tests.protocol.helpers import make_store


@pytest.mark.parametrize("bad", ["", "a{b}", "has space", "x}", "{x", "a\nb", "-leading", "a" * 129, "ünïcode"])
def test_unsafe_group_names_are_rejected_with_one_line(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_group(bad)
    assert "\n" not in str(err.value) and str(err.value).startswith("group:")


def test_every_key_a_group_touches_hashes_to_one_slot(redis_client: redis.Redis, group: str) -> None:
    store: LeaseStore = make_store(redis_client, group)
    store.register_shards([ShardSpec("p"), ShardSpec("c", ("p",))])
    [p], _ = store.acquire("w1", ["p"])
    store.heartbeat("w1", {"p": p.token})
    store.ask("w2", "w1", 1)
    store.release("w1", "p", p.token, to="w2")
    written = list(redis_client.scan_iter(match=f"shardlease:{{{group}}}:*"))
    assert len(written) >= 8
    keys = GroupKeys.for_group(group)
    named = [keys.shards, keys.free, keys.owned, keys.ended, keys.tombstones, keys.token, keys.members, keys.load,
             keys.leader, keys.meta, keys.lease("x"), keys.held("w"), keys.asks("w"), keys.grants("w"),
             keys.namespaced("dlq")]
    slots = {key_slot(k.encode()) for k in written + named}
    assert slots == {key_slot(group.encode())}
