"""Rewinds, imports and the group's history run as the worker's least-privilege ACL user (the ACL docs
name no extra command for them)."""

from __future__ import annotations

import uuid

import redis

from leaser import SHARD_END, LeaseConfig, LeaseStore, Position, ShardSpec
from leaser.embedded import RedisServer
from tests.security.servers import Certs
from tests.security.test_tls_acl import _denials, admin, worker_client

__all__ = ["worker_client"]  # the fixture, shared with test_tls_acl


def test_reposition_and_history_need_no_more_than_the_workers_acl(
    worker_client: redis.Redis, mtls_server: RedisServer, certs: Certs
) -> None:
    boss = admin(mtls_server, certs)
    boss.acl_log_reset()
    store = LeaseStore(worker_client, f"acl-{uuid.uuid4().hex[:8]}", LeaseConfig(lease_ttl_s=2.0, renew_interval_s=0.5))
    store.register_shards([ShardSpec("p", (), 1), ShardSpec("c", ("p",), 2)])
    [got], _ = store.acquire("w1", ["p"])
    store.end_shard("w1", "p", got.token)
    result = store.reposition([Position("p", checkpoint="7"), Position("n", SHARD_END, parent_ids=("c",))],
                              expected_epoch=store.epoch(), request_id="r1", record={"what": "rewind"})
    store.record_history({"what": "export"})
    assert result.epoch == 1 and store.known()
    assert [h["what"] for h in store.history()] == ["export", "rewind"]
    assert _denials(boss) == []
