"""leaser: lease coordination in Redis for workers sharing the shards of a stream.

It knows nothing of DynamoDB.  A consumer group's workers share one set of
per-shard leases; each lease has an owner, a fencing token that grows on every
acquisition, an expiry on Redis server time, a checkpoint, and the shard's
lineage, so children are acquired only after their parents have ended.

Public API::

    client = leaser.connect("redis://localhost:6379/0")
    store = leaser.LeaseStore(client, "orders-indexer", leaser.LeaseConfig())
    store.register_shards([leaser.ShardSpec("shard-2", parent_ids=("shard-1",), order=2)])
    manager = leaser.LeaseManager(store, worker_id="host-123")
    result = manager.tick()            # every renew_interval_s
    manager.checkpoint("shard-2", "4200000000000000000001")

See docs/lease-protocol.md for the states, invariants and race timelines.
"""

from leaser import _redis_import  # noqa: F401 (first: imports redis, see there)
from leaser._version import VERSION_NOT_INSTALLED, __version__
from leaser.balancer import Plan, Share, fair_share, plan
from leaser.config import LeaseConfig
from leaser.embedded import RedisServer
from leaser.errors import (
    ConcurrentUpdate,
    ConfigError,
    CoordinationUnavailable,
    FatalError,
    LeaseLostError,
    RetryableError,
    ShardleaseError,
)
from leaser.keys import GroupKeys, validate_group, validate_id
from leaser.lease import SHARD_END, Acquired, Lease, LeaseState, ShardSpec, sequence_key, validate_sequence_number
from leaser.manager import LeaseManager, TickResult
from leaser.positions import SKIP_BEFORE_NOW, Position, Repositioned
from leaser.store import Heartbeat, Leader, LeaseStore, connect, translate_redis_errors

__all__ = [
    "SHARD_END",
    "SKIP_BEFORE_NOW",
    "VERSION_NOT_INSTALLED",
    "Acquired",
    "ConcurrentUpdate",
    "ConfigError",
    "CoordinationUnavailable",
    "FatalError",
    "GroupKeys",
    "Heartbeat",
    "Leader",
    "Lease",
    "LeaseConfig",
    "LeaseLostError",
    "LeaseManager",
    "LeaseState",
    "LeaseStore",
    "Plan",
    "Position",
    "RedisServer",
    "Repositioned",
    "RetryableError",
    "ShardSpec",
    "ShardleaseError",
    "Share",
    "TickResult",
    "__version__",
    "connect",
    "fair_share",
    "plan",
    "sequence_key",
    "translate_redis_errors",
    "validate_group",
    "validate_id",
    "validate_sequence_number",
]
