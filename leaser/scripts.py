"""The Lua scripts of the lease protocol, loaded once per client.

Each script lives in ``leaser/lua/<name>.lua`` with a header listing its KEYS,
ARGV and return values; ``_prelude.lua`` (server time, sequence comparison,
the fencing check) is prepended to each.  redis-py's ``Script`` runs them with
EVALSHA and reloads on NOSCRIPT (after a Redis restart or SCRIPT FLUSH).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import redis
import redis.cluster

_LUA_DIR = Path(__file__).parent / "lua"

NAMES = ("register", "acquire", "heartbeat", "checkpoint", "end_shard", "release", "ask", "leader", "cleanup",
         "offer", "begin", "reposition", "report")


@cache
def source(name: str) -> str:
    """The full source of one script: the shared prelude, then the script."""
    prelude = (_LUA_DIR / "_prelude.lua").read_text()
    return prelude + "\n" + (_LUA_DIR / f"{name}.lua").read_text()


class Scripts:
    """The protocol's scripts registered on one Redis client."""

    def __init__(self, client: redis.Redis | redis.cluster.RedisCluster) -> None:
        self._scripts: dict[str, Any] = {name: client.register_script(source(name)) for name in NAMES}

    def __getitem__(self, name: str) -> Any:
        return self._scripts[name]
