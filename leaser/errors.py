"""Every error shardlease raises, in one tree.

    ShardleaseError                 base of everything raised on purpose
    ├── RetryableError              the same call may succeed later
    │   ├── CoordinationUnavailable Redis unreachable, timed out or failing over
    │   └── ConcurrentUpdate        state changed between a read and a script; read again
    └── FatalError                  retrying the same call cannot succeed
        ├── ConfigError             a bad setting; the message names the setting and the fix
        └── LeaseLostError          the caller no longer owns the lease (fencing token is stale)

Lower-level errors (``redis.exceptions.*``) are translated at the boundary of
:mod:`leaser`, never leaked.  ``LeaseLostError`` is fatal for the operation and
for that shard's loop, not for the worker: the worker stops the shard and goes on.
"""

from __future__ import annotations


class ShardleaseError(Exception):
    """Base class of every error shardlease raises on purpose."""


class RetryableError(ShardleaseError):
    """A transient failure: the same call may succeed if tried again later."""


class FatalError(ShardleaseError):
    """A failure that retrying the same call will not fix."""


class CoordinationUnavailable(RetryableError):
    """Redis could not be reached, timed out, or answered with a transient error."""


class ConcurrentUpdate(RetryableError):
    """Lease state changed between the read that prepared a script and the script; read again."""


class ConfigError(FatalError):
    """A setting is invalid.  ``str(err)`` is one line naming the setting and how to fix it."""

    def __init__(self, setting: str, problem: str, fix: str) -> None:
        self.setting = setting
        self.problem = problem
        self.fix = fix
        super().__init__(f"{setting}: {problem}; {fix}")


class LeaseLostError(FatalError):
    """The caller's fencing token is stale: another worker acquired the lease, or it expired.

    Raised by fenced writes (checkpoint, end, release).  Nothing was changed.
    """

    def __init__(self, shard_id: str, token: int, reason: str) -> None:
        self.shard_id = shard_id
        self.token = token
        self.reason = reason
        super().__init__(f"lease on shard {shard_id!r} lost (token {token}): {reason}")
