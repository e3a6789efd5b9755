"""An upserting sink in Redis for the snapshot's end-to-end tests (docs/snapshot.md, "The promise").

Each record is applied in the order handed over, in one MULTI per handler call: a snapshot item, an
INSERT or a MODIFY puts the new image into the hash $SHARDLEASE_TEST_SINK_KEY (field: pk, value: the
image as JSON), a REMOVE deletes the field.  Every applied record is also appended to the list
``<sink key>:journal`` as ``kind pk version`` (kind ``s`` snapshot, ``w`` write, ``d`` delete; version
the image's ``v``), so a test can check the order of what reached the sink.  With
$SHARDLEASE_TEST_HANG_ON_SNAPSHOT set, a call with snapshot items never returns.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
import redis

_client: redis.Redis | None = None


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def handle(records: Sequence[Any], ctx: Any) -> None:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(os.environ["SHARDLEASE_TEST_SINK_URL"])
    key = os.environ["SHARDLEASE_TEST_SINK_KEY"]
    if os.environ.get("SHARDLEASE_TEST_HANG_ON_SNAPSHOT") and any(r.is_snapshot for r in records):
        time.sleep(3600)  # a hung call on a snapshot page
    pipe = _client.pipeline(transaction=True)
    for r in records:
        pk = r.keys["pk"]
        if r.event_name == "REMOVE":
            pipe.hdel(key, pk)
            pipe.rpush(key + ":journal", f"d {pk} -")
        else:
            image = _plain(r.new_image)
            pipe.hset(key, pk, orjson.dumps(image, option=orjson.OPT_SORT_KEYS))
            pipe.rpush(key + ":journal", f"{'s' if r.is_snapshot else 'w'} {pk} {image.get('v')}")
    pipe.execute()
