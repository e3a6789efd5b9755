"""Settings of the lease protocol.  Every duration says its unit in its name.

With the defaults, a crashed worker's shards are taken over within
``lease_ttl_s + renew_interval_s`` = 6.5 s (KCL's default failover is 10 s plus
its 20 s take interval): the lease expires at most ``lease_ttl_s`` after the
crash, and every live worker looks for expired leases every ``renew_interval_s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from leaser.errors import ConfigError

DEFAULT_LEASE_TTL_S = 5.0
"""Seconds a lease stays valid without renewal, judged on Redis server time."""
DEFAULT_RENEW_INTERVAL_S = 1.5
"""Seconds between a worker's heartbeats (renew every lease, look for work, answer asks)."""
DEFAULT_HANDOFF_TIMEOUT_S = 10.0
"""Seconds a taker waits for a live owner to hand a lease over before taking it by force."""
DEFAULT_HANDOFF_RESERVE_S = 3.0
"""Seconds a handed-over lease stays reserved for its taker before anyone may take it."""
DEFAULT_ENDED_RETENTION_S = 3600.0
"""Seconds an ended lease is kept after its children started, before cleanup deletes it."""
DEFAULT_ORPHAN_RETENTION_S = 25 * 3600.0
"""Seconds an ended lease without known children is kept (past the stream's 24 h retention)."""
DEFAULT_TOMBSTONE_RETENTION_S = 48 * 3600.0
"""Seconds the id of a deleted lease is remembered so a stale listing cannot register it again."""


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """Lease-protocol settings of one worker.  All workers of a group should use the same values."""

    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    renew_interval_s: float = DEFAULT_RENEW_INTERVAL_S
    handoff_timeout_s: float = DEFAULT_HANDOFF_TIMEOUT_S
    handoff_reserve_s: float = DEFAULT_HANDOFF_RESERVE_S
    ended_retention_s: float = DEFAULT_ENDED_RETENTION_S
    orphan_retention_s: float = DEFAULT_ORPHAN_RETENTION_S
    tombstone_retention_s: float = DEFAULT_TOMBSTONE_RETENTION_S
    max_leases: int = 0
    """Most leases one worker holds; 0 means no cap (fair share only)."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "max_leases":
                if not isinstance(value, int) or value < 0:
                    raise ConfigError("max_leases", f"{value!r} is not a whole number >= 0", "use 0 for no cap")
                continue
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f.name, f"{value!r} is not a positive number of seconds", "use e.g. 5")
        if self.lease_ttl_s < 1.0:
            raise ConfigError("lease_ttl_s", f"{self.lease_ttl_s} s is too short", "use at least 1 second")
        if self.renew_interval_s * 2 >= self.lease_ttl_s:
            raise ConfigError(
                "renew_interval_s",
                f"{self.renew_interval_s} s is not below half of lease_ttl_s ({self.lease_ttl_s} s)",
                "renew at least twice per lease TTL, e.g. renew_interval_s = lease_ttl_s / 3",
            )

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)

    @property
    def member_ttl_ms(self) -> int:
        """A worker that misses heartbeats this long drops out of the group."""
        return int(self.lease_ttl_s * 1000)
