"""The one place that builds Redis key names.

All keys of one consumer group share the hash tag ``{<group>}``, so every key a
script touches hashes to the same Redis Cluster slot::

    shardlease:{<group>}:lease:<shard_id>   HASH   one shard's lease (see lease.py for fields)
    shardlease:{<group>}:shards             ZSET   every registered shard -> order score
    shardlease:{<group>}:free               ZSET   ready, unowned shards -> order score
    shardlease:{<group>}:owned              ZSET   ready, owned shards -> expiry (Redis ms)
    shardlease:{<group>}:ended              ZSET   ended shards -> end time (Redis ms)
    shardlease:{<group>}:tombstones         ZSET   cleaned-up shards -> cleanup time (Redis ms)
    shardlease:{<group>}:token              STRING fencing-token counter (never decreases)
    shardlease:{<group>}:members            ZSET   live workers -> heartbeat expiry (Redis ms)
    shardlease:{<group>}:load               HASH   worker -> number of leases it renewed last
    shardlease:{<group>}:held:<worker>      SET    shards a worker acquired (index; checked on read)
    shardlease:{<group>}:asks:<worker>      HASH   handoff asks to <worker>: taker -> count
    shardlease:{<group>}:grants:<worker>    ZSET   shards handed off to <worker> -> reservation end
    shardlease:{<group>}:leader             HASH   leader lease: owner, token, expires_ms
    shardlease:{<group>}:report:<worker>    HASH   a worker's notes per shard it runs (for status tools)
    shardlease:{<group>}:meta               HASH   group facts: created_ms, listed_ms, epoch, epoch_request, history_seq
    shardlease:{<group>}:history            HASH   the last rewinds, imports and exports: meta history_seq -> JSON
    shardlease:{<group>}:wake               pub/sub channel: a lease was released, look now
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from leaser.errors import ConfigError

PREFIX = "shardlease"

_GROUP_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,256}$")


def validate_group(group: str) -> str:
    """Return ``group`` if it is a safe consumer-group name, else raise ConfigError."""
    if not isinstance(group, str) or not _GROUP_RE.match(group):
        raise ConfigError(
            "group",
            f"{group!r} is not a valid consumer group name",
            "use 1-128 characters from letters, digits, '_', '.', '-' (no braces), starting with a letter or digit",
        )
    return group


def validate_id(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe shard or worker id (no braces, spaces or control characters)."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ConfigError(
            kind,
            f"{value!r} is not a valid {kind.replace('_', ' ')}",
            "use 1-256 characters from letters, digits, '_', '.', ':', '-'",
        )
    return value


META_KEY_PATTERN = f"{PREFIX}:{{*}}:meta"
"""A SCAN ``MATCH`` pattern for every group's meta key (one per group that ever heartbeat or registered)."""
_META_KEY_RE = re.compile(rf"^{PREFIX}:\{{(.+)\}}:meta$")


def group_of_meta_key(key: str) -> str | None:
    """The group a key matched by :data:`META_KEY_PATTERN` belongs to; None for a key of another shape."""
    match = _META_KEY_RE.match(key)
    if match is None or not _GROUP_RE.match(match.group(1)):
        return None
    return match.group(1)


@dataclass(frozen=True)
class GroupKeys:
    """Key names for one consumer group.  Construct with :func:`GroupKeys.for_group`."""

    group: str
    base: str

    @classmethod
    def for_group(cls, group: str) -> GroupKeys:
        validate_group(group)
        return cls(group=group, base=f"{PREFIX}:{{{group}}}")

    def lease(self, shard_id: str) -> str:
        return f"{self.base}:lease:{shard_id}"

    @property
    def lease_prefix(self) -> str:
        return f"{self.base}:lease:"

    @property
    def shards(self) -> str:
        return f"{self.base}:shards"

    @property
    def free(self) -> str:
        return f"{self.base}:free"

    @property
    def owned(self) -> str:
        return f"{self.base}:owned"

    @property
    def ended(self) -> str:
        return f"{self.base}:ended"

    @property
    def tombstones(self) -> str:
        return f"{self.base}:tombstones"

    @property
    def token(self) -> str:
        return f"{self.base}:token"

    @property
    def members(self) -> str:
        return f"{self.base}:members"

    @property
    def load(self) -> str:
        return f"{self.base}:load"

    def held(self, worker_id: str) -> str:
        return f"{self.base}:held:{worker_id}"

    def asks(self, worker_id: str) -> str:
        return f"{self.base}:asks:{worker_id}"

    def grants(self, worker_id: str) -> str:
        return f"{self.base}:grants:{worker_id}"

    def report(self, worker_id: str) -> str:
        return f"{self.base}:report:{worker_id}"

    @property
    def leader(self) -> str:
        return f"{self.base}:leader"

    @property
    def meta(self) -> str:
        return f"{self.base}:meta"

    @property
    def history(self) -> str:
        return f"{self.base}:history"

    @property
    def wake_channel(self) -> str:
        return f"{self.base}:wake"

    def namespaced(self, name: str) -> str:
        """A further key in the group's slot, for later features (dead-letter streams, ...)."""
        validate_id("key_name", name)
        return f"{self.base}:{name}"
