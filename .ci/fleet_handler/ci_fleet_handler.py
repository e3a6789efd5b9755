"""Handler of CI's container fleet (.ci/image_fleet.py): every record it is given becomes one entry
``<worker id> <shard id> <sequence number>`` of the list ``shardlease-ci:handled`` in the worker's own Redis
(SHARDLEASE_REDIS_URL), one RPUSH per batch.  The check reads that list: a sequence number missing is a record
lost, one seen twice a record delivered twice.  The container's root filesystem is read-only, so the handler
keeps nothing on disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import redis

HANDLED_KEY = "shardlease-ci:handled"
_client: redis.Redis | None = None


def handle(records: Sequence[Any], ctx: Any) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["SHARDLEASE_REDIS_URL"])
    _client.rpush(HANDLED_KEY, *(f"{ctx.worker_id} {r.shard_id} {r.sequence_number}" for r in records))
