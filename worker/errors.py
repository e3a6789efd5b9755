"""Errors of the DynamoDB side of the worker, grafted onto :mod:`leaser.errors`' one tree.

    ShardleaseError                     base of everything raised on purpose
    ├── StreamsError                    mixin: any DynamoDB (Streams) failure; has .code, .operation
    ├── RetryableError                  the same call may succeed later
    │   ├── StreamThrottled             LimitExceededException, ThrottlingException (back off, jitter)
    │   ├── StreamServerError           InternalServerError, other 5xx, connection errors, timeouts
    │   └── ExpiredIterator             iterator older than 15 min: get a new one from the checkpoint
    └── FatalError                      retrying the same call cannot succeed
        ├── TrimmedData                 TrimmedDataAccessException: position is past the 24 h horizon
        │   └── ShardNotFound           ResourceNotFoundException for a shard: treat it as trimmed
        ├── StreamNotFound              ResourceNotFoundException for a stream (deleted, re-enabled)
        ├── StreamDisabled              the table has no enabled stream
        ├── InvalidRequest              ValidationException, bad parameters, unknown 4xx codes
        └── AccessDenied                AccessDeniedException, bad or missing credentials/signature

    FatalError
    └── WorkerStopError                 an embedded worker (worker.EmbeddedWorker) did not stop cleanly
        ├── AbandonedHandlerCalls       handler calls still running at the end: leases left to expire
        └── WorkerFailed                it stopped without being asked (a hung call, a bug): nothing left running

Every class here also derives from :class:`StreamsError`, so ``except StreamsError`` catches
all of them (and only them); ``except RetryableError`` / ``except FatalError`` keep working as for
the leaser's errors.  botocore's ``ClientError`` and ``BotoCoreError`` are translated at the
boundary of :mod:`worker.reading.streams`, never leaked; the original is chained as ``__cause__``.
"""

from __future__ import annotations

from leaser.errors import FatalError, RetryableError, ShardleaseError

__all__ = [
    "AbandonedHandlerCalls",
    "AccessDenied",
    "ExpiredIterator",
    "InvalidRequest",
    "ShardNotFound",
    "StreamDisabled",
    "StreamNotFound",
    "StreamServerError",
    "StreamThrottled",
    "StreamsError",
    "TrimmedData",
    "WorkerFailed",
    "WorkerStopError",
]


class StreamsError(ShardleaseError):
    """Base (mixin) of every DynamoDB / DynamoDB Streams error the worker raises.

    ``code`` is the AWS error code (e.g. ``"ExpiredIteratorException"``) or ``None`` for errors
    that never reached AWS (connection failures, client-side validation); ``operation`` is the
    API operation (e.g. ``"GetRecords"``) or ``None``.
    """

    def __init__(self, message: str, *, code: str | None = None, operation: str | None = None) -> None:
        self.message = message
        self.code = code
        self.operation = operation
        super().__init__(message)


class StreamThrottled(StreamsError, RetryableError):
    """Throttled (LimitExceededException, ThrottlingException): back off with jitter and retry."""


class StreamServerError(StreamsError, RetryableError):
    """A server-side or network failure: InternalServerError, other 5xx, connection errors, timeouts."""


class ExpiredIterator(StreamsError, RetryableError):
    """The shard iterator expired (15 min): get a new one from the last checkpoint and retry."""


class TrimmedData(StreamsError, FatalError):
    """The requested position is older than the 24 h retention: those records are gone.

    Fatal for that position; the caller decides whether to restart at TRIM_HORIZON (and say so).
    """

    def __init__(
        self,
        message: str,
        *,
        shard_id: str | None = None,
        code: str | None = "TrimmedDataAccessException",
        operation: str | None = None,
    ) -> None:
        self.shard_id = shard_id
        super().__init__(message, code=code, operation=operation)


class ShardNotFound(TrimmedData):
    """The shard does not exist (ResourceNotFoundException on a shard operation).

    A subclass of :class:`TrimmedData` because the consumer treats a vanished shard as trimmed.
    """

    def __init__(
        self,
        message: str,
        *,
        shard_id: str | None = None,
        code: str | None = "ResourceNotFoundException",
        operation: str | None = None,
    ) -> None:
        super().__init__(message, shard_id=shard_id, code=code, operation=operation)


class StreamNotFound(StreamsError, FatalError):
    """The stream (or table) does not exist: deleted, or the stream was re-enabled under a new ARN."""

    def __init__(
        self,
        message: str,
        *,
        stream_arn: str | None = None,
        code: str | None = "ResourceNotFoundException",
        operation: str | None = None,
    ) -> None:
        self.stream_arn = stream_arn
        super().__init__(message, code=code, operation=operation)


class StreamDisabled(StreamsError, FatalError):
    """The table has no stream, or its stream is disabled.

    ``stream_arn`` is the table's last stream ARN when there is one (a disabled stream stays
    readable for 24 h), else ``None``.
    """

    def __init__(
        self,
        message: str,
        *,
        table_name: str | None = None,
        stream_arn: str | None = None,
        code: str | None = None,
        operation: str | None = None,
    ) -> None:
        self.table_name = table_name
        self.stream_arn = stream_arn
        super().__init__(message, code=code, operation=operation)


class InvalidRequest(StreamsError, FatalError):
    """The request is invalid (ValidationException, bad parameter, unknown 4xx code): a bug or bad input."""


class AccessDenied(StreamsError, FatalError):
    """Not allowed: AccessDeniedException, unknown or missing credentials, bad signature."""


class WorkerStopError(FatalError):
    """An embedded worker did not stop cleanly: raised by ``EmbeddedWorker.wait()`` and ``stop()`` (and
    their async forms) each time they are called after such a stop."""


class AbandonedHandlerCalls(WorkerStopError):
    """The worker stopped with handler calls still running (hung past ``handler_timeout_s``, or past
    ``shutdown_grace_s``); Python cannot stop them.

    ``shards``: the shards of those calls.  Their leases were NOT released: they expire
    ``lease_ttl_s`` after the last renewal, then another worker re-reads their batches from the last
    checkpoint.  ``handler.close()`` was not called and the calls' threads still run in this process.
    The ``shardlease run`` command exits at once here (code 3), so a call can never overlap the next
    owner's; an embedding host that wants that guarantee exits too (``os._exit(err.exit_code)``).
    ``hung``: the worker stopped on its own because a call hung (``on_handler_timeout = exit``).
    """

    exit_code = 3

    def __init__(self, shards: frozenset[str], *, hung: bool, lease_ttl_s: float) -> None:
        self.shards = shards
        self.hung = hung
        why = "a handler call hung (on_handler_timeout=exit)" if hung else "the shutdown grace ran out"
        super().__init__(
            f"the worker stopped because {why} with handler calls still running on {', '.join(sorted(shards))}: "
            f"their leases are not released and expire within {lease_ttl_s:g} s; exit the process (code "
            f"{self.exit_code}) so the calls cannot overlap the next owner's"
        )


class WorkerFailed(WorkerStopError):
    """The worker stopped without being asked to, with nothing left running: a handler call hung and then
    returned during the shutdown (``on_handler_timeout = exit``), or the coordinator failed (a bug: the
    error is ``__cause__``; the shutdown was the graceful one)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the worker stopped on its own: {reason}")
