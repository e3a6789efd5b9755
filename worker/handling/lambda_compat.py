"""Running an AWS Lambda handler for DynamoDB Streams unchanged: Lambda's event, context and response.

``--handler-style lambda`` (or ``auto`` with a handler whose parameters are ``event, context``)
calls the user's function as ``handler(event, context)`` with:

* ``event`` — :func:`lambda_event`: ``{"Records": [...]}`` in the exact shape Lambda's event source
  mapping delivers (typed images, base64 binary, epoch-seconds ``ApproximateCreationDateTime``,
  ``eventSourceARN``, ``userIdentity`` with Lambda's lowercase keys);
* ``context`` — a :class:`LambdaContext` with the attributes of the Lambda Python runtime's
  context object, a fresh ``aws_request_id`` per invocation and ``get_remaining_time_in_millis()``
  counting down from ``--handler-timeout``.

The handler's return value is read by :func:`parse_batch_response` with Lambda's
``ReportBatchItemFailures`` rules; the runtime uses the same function for native handlers, which
may return the same ``{"batchItemFailures": [...]}`` dict.

Copying.  Each invocation gets its own event: the parts of :attr:`Record.raw
<worker.reading.records.Record.raw>` that a handler could change in place (the ``Keys``/``NewImage``/
``OldImage`` maps and ``userIdentity``) are copied, never shared.  A shallow copy would be cheaper
but would let a handler that edits an image in place (say, pops a secret before logging the
event) change ``raw`` itself — and ``raw`` is what a retry of the same batch is rebuilt from and
what the on-failure destination stores.  Lambda gives every invocation a freshly decoded event;
so does this module.  The images are copied through :mod:`orjson` (one dump and load per record):
about 5 ms for a batch of 1,000 half-kilobyte records, small beside any handler's own decoding.

Concurrency.  One Lambda execution environment runs one invocation at a time, and Lambda handlers
rely on it: module-level state such as Powertools' ``BatchProcessor`` (which keeps the batch being
processed on the instance) or a logger's per-invocation keys would be mixed up by concurrent
calls.  shardlease handles many shards (and ``--parallelization-factor`` lanes) in one process,
so :func:`lambda_handler` by default lets one invocation run at a time per handler per process
(``serialize=True``); scale out with more processes, or pass ``serialize=False`` for a handler
known to be thread-safe.

An ``async def lambda_handler(event, context)`` is awaited on the worker's event loop
(:mod:`worker.handling.aio`), one invocation at a time per process as well (``serialize``): the
waiting happens on the calling thread, so the loop stays free for other async work.
"""

from __future__ import annotations

import base64
import inspect
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.handling.calls import call_started, call_waiting
from worker.handling.handler import Handler, ShardContext
from worker.reading.records import Record

__all__ = [
    "BatchOutcome",
    "ContextFactory",
    "LambdaContext",
    "apply_handler_style",
    "is_lambda_style",
    "lambda_event",
    "lambda_handler",
    "lambda_record",
    "memory_limit_mb",
    "parse_batch_response",
]

EVENT_SOURCE = "aws:dynamodb"
DEFAULT_EVENT_VERSION = "1.1"
FUNCTION_VERSION = "$LATEST"

# ----------------------------------------------------------------------------
# The event.
# ----------------------------------------------------------------------------

# The record's fields in the order Lambda's sample events list them; anything else the wire record
# carries (a future field) follows, copied.
_RECORD_KEYS = ("eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb")
_DYNAMODB_KEYS = (
    "ApproximateCreationDateTime",
    "Keys",
    "NewImage",
    "OldImage",
    "SequenceNumber",
    "SizeBytes",
    "StreamViewType",
)
_IMAGES = frozenset({"Keys", "NewImage", "OldImage"})
# DynamoDB Streams' GetRecords spells these capitalised; Lambda's event spells them in camelCase.
_IDENTITY_KEYS = {"Type": "type", "PrincipalId": "principalId"}


def _json_default(value: Any) -> Any:
    # botocore-parsed records (the non-HTTP path) hold B values as bytes; Lambda sends base64 text.
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, set | frozenset):
        return list(value)
    raise TypeError(f"cannot copy a {type(value).__name__} into a Lambda event")


def _copy_json(value: Any) -> Any:
    """An independent copy of JSON-like data (bytes become base64 text, as on the wire)."""
    return orjson.loads(orjson.dumps(value, default=_json_default))


def _epoch_seconds(value: Any) -> Any:
    """``ApproximateCreationDateTime`` as Lambda sends it: epoch seconds, an int when whole."""
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=UTC)
        value = when.timestamp()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _region_of(arn: str) -> str:
    parts = arn.split(":", 5)
    return parts[3] if len(parts) > 4 else ""


def _lambda_identity(identity: Mapping[str, Any]) -> dict[str, Any]:
    return {_IDENTITY_KEYS.get(k, k): (_copy_json(v) if isinstance(v, dict | list) else v) for k, v in identity.items()}


def lambda_record(raw: Mapping[str, Any], stream_arn: str) -> dict[str, Any]:
    """One record of Lambda's DynamoDB event, built from a GetRecords wire record.

    ``{eventID, eventName, eventVersion, eventSource: "aws:dynamodb", awsRegion, dynamodb:
    {ApproximateCreationDateTime, Keys, NewImage, OldImage, SequenceNumber, SizeBytes,
    StreamViewType}, eventSourceARN, userIdentity?}``:

    * images stay in DynamoDB's typed JSON, ``B``/``BS`` values base64 text as on the wire (bytes
      from a botocore-parsed record are encoded back to base64);
    * ``ApproximateCreationDateTime`` is epoch seconds, a number (an int when it is whole, as in
      Lambda's events; a ``datetime`` from botocore is converted);
    * ``NewImage``/``OldImage`` are present only when the stream's view type carries them, as in
      Lambda's events;
    * ``userIdentity`` (TTL deletions) is present only when the wire record has it, with Lambda's
      keys: ``{"type": "Service", "principalId": "dynamodb.amazonaws.com"}``;
    * ``eventSource``, ``eventVersion`` and ``awsRegion`` come from the wire record, defaulting to
      ``aws:dynamodb``, ``1.1`` and the stream ARN's region.

    The result shares nothing mutable with ``raw`` (see the module docstring).
    """
    ddb_raw: Mapping[str, Any] = raw.get("dynamodb") or {}
    # One copy of all the nested parts (images) of the record, then the dict in Lambda's key order.
    nested = _copy_json({k: v for k, v in ddb_raw.items() if k in _IMAGES or isinstance(v, dict | list)})
    ddb: dict[str, Any] = {}
    for key in (*_DYNAMODB_KEYS, *(k for k in ddb_raw if k not in _DYNAMODB_KEYS)):
        if key in nested:
            ddb[key] = nested[key]
        elif key == "ApproximateCreationDateTime" and key in ddb_raw:
            ddb[key] = _epoch_seconds(ddb_raw[key])
        elif key in ddb_raw:
            ddb[key] = ddb_raw[key]
    record: dict[str, Any] = {
        "eventID": raw.get("eventID"),
        "eventName": raw.get("eventName"),
        "eventVersion": raw.get("eventVersion") or DEFAULT_EVENT_VERSION,
        "eventSource": raw.get("eventSource") or EVENT_SOURCE,
        "awsRegion": raw.get("awsRegion") or _region_of(stream_arn),
        "dynamodb": ddb,
        "eventSourceARN": stream_arn,
    }
    identity = raw.get("userIdentity")
    if identity:
        record["userIdentity"] = _lambda_identity(identity)
    for key, value in raw.items():
        if key not in record and key not in _RECORD_KEYS and key != "userIdentity":
            record[key] = _copy_json(value) if isinstance(value, dict | list) else value
    return record


def lambda_event(records: Sequence[Record], stream_arn: str) -> dict[str, Any]:
    """Lambda's DynamoDB Streams event for a batch: ``{"Records": [lambda_record(r.raw), ...]}``."""
    return {"Records": [lambda_record(r.raw, stream_arn) for r in records]}


# ----------------------------------------------------------------------------
# The context.
# ----------------------------------------------------------------------------

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_MIB = 1024 * 1024


def _total_ram() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return 0


def memory_limit_mb(cgroup_files: Sequence[str] = _CGROUP_LIMITS, total_bytes: int | None = None) -> int:
    """The container's memory limit in MiB: the cgroup v2 or v1 limit, else (no limit) total RAM.

    A cgroup limit above the machine's RAM (v1 reports ~2**63 for "no limit") counts as no limit.
    Returns 0 only when nothing can be read.
    """
    total = _total_ram() if total_bytes is None else total_bytes
    for path in cgroup_files:
        try:
            with open(path, encoding="ascii") as f:
                text = f.read().strip()
        except OSError:
            continue
        if not text.isdigit():  # "max": no limit in this cgroup
            break
        limit = int(text)
        if limit > 0 and (total <= 0 or limit < total):
            return limit // _MIB
        break
    return total // _MIB


class LambdaContext:
    """The Lambda Python runtime's context object, for one invocation.

    Attributes as in Lambda: ``function_name``, ``function_version`` (``$LATEST``),
    ``invoked_function_arn``, ``memory_limit_in_mb`` (int), ``aws_request_id`` (a fresh uuid4),
    ``log_group_name`` (``/aws/lambda/<function_name>``), ``log_stream_name``, ``identity`` and
    ``client_context`` (``None``: there is no mobile SDK caller), ``tenant_id`` (``None``) and
    :meth:`get_remaining_time_in_millis`.  Made by :class:`ContextFactory`.
    """

    __slots__ = (
        "_deadline",
        "aws_request_id",
        "client_context",
        "function_name",
        "function_version",
        "identity",
        "invoked_function_arn",
        "log_group_name",
        "log_stream_name",
        "memory_limit_in_mb",
        "tenant_id",
    )

    def __init__(
        self,
        *,
        function_name: str,
        invoked_function_arn: str,
        memory_limit_in_mb: int,
        log_stream_name: str,
        timeout_s: float,
        aws_request_id: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.function_name = function_name
        self.function_version = FUNCTION_VERSION
        self.invoked_function_arn = invoked_function_arn
        self.memory_limit_in_mb = memory_limit_in_mb
        self.aws_request_id = aws_request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = log_stream_name
        self.identity: Any = None
        self.client_context: Any = None
        self.tenant_id: str | None = None
        self._deadline = (clock() + timeout_s, clock)

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left of ``--handler-timeout`` since the invocation started (never negative).

        A sync handler that runs over is not stopped (the hang watchdog reports it); an async one is
        cancelled at the timeout (docs/async-handlers.md).
        """
        deadline, clock = self._deadline
        return max(0, int((deadline - clock()) * 1000))

    def log(self, msg: str) -> None:
        """Like the Lambda runtime's ``context.log``: write ``msg`` to standard output."""
        sys.stdout.write(msg if msg.endswith("\n") else msg + "\n")
        sys.stdout.flush()

    def __repr__(self) -> str:
        return f"<LambdaContext {self.function_name} request {self.aws_request_id}>"


class ContextFactory:
    """Makes one :class:`LambdaContext` per invocation for a consumer group and stream.

    ``function_name`` defaults to the group name; ``invoked_function_arn`` is
    ``arn:<partition>:lambda:<region>:<account>:function:<function_name>`` with the partition and
    account of the stream ARN (and its region when ``region`` is empty).  ``log_stream_name`` is
    fixed per factory, like one Lambda execution environment: ``YYYY/MM/DD/[$LATEST]<32 hex>``.
    ``memory_limit_in_mb`` is read once (see :func:`memory_limit_mb`).
    """

    def __init__(
        self,
        group: str,
        stream_arn: str,
        region: str | None,
        timeout_s: float,
        *,
        function_name: str | None = None,
        memory_mb: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = stream_arn.split(":", 5)
        partition = parts[1] if len(parts) > 4 and parts[1] else "aws"
        account = parts[4] if len(parts) > 4 else ""
        self.function_name = function_name or group
        self.region = region or _region_of(stream_arn)
        self.timeout_s = float(timeout_s)
        self.invoked_function_arn = (
            f"arn:{partition}:lambda:{self.region}:{account}:function:{self.function_name}"
        )
        self.memory_limit_in_mb = memory_limit_mb() if memory_mb is None else int(memory_mb)
        today = datetime.now(UTC).strftime("%Y/%m/%d")
        self.log_stream_name = f"{today}/[{FUNCTION_VERSION}]{uuid.uuid4().hex}"
        self._clock = clock

    def new(self) -> LambdaContext:
        """A context for an invocation starting now (fresh request id, full time budget)."""
        return LambdaContext(
            function_name=self.function_name,
            invoked_function_arn=self.invoked_function_arn,
            memory_limit_in_mb=self.memory_limit_in_mb,
            log_stream_name=self.log_stream_name,
            timeout_s=self.timeout_s,
            clock=self._clock,
        )


# ----------------------------------------------------------------------------
# Detection and calling.
# ----------------------------------------------------------------------------

_EVENT_NAMES = frozenset({"event", "_event"})
_CONTEXT_NAMES = frozenset({"context", "_context", "ctx", "_ctx", "lambda_context", "_"})
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _callable_of(obj: Any) -> Callable[..., Any] | None:
    """What a handler object is called through: a Handler's target, an object's ``handle``/``__call__``."""
    if isinstance(obj, Handler):
        obj = obj.target
    if inspect.isclass(obj):
        return None  # a class is instantiated and called through handle(records, ctx): native
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isbuiltin(obj):
        return obj
    handle = getattr(obj, "handle", None)
    if callable(handle):
        return handle  # type: ignore[no-any-return]
    return obj if callable(obj) else None


def is_lambda_style(fn: Any) -> bool:
    """True when ``fn`` looks like a Lambda handler: its first two positional parameters are
    named ``event`` and ``context``.

    Also accepted, because Lambda code uses them: ``_event`` for the first, and ``ctx``,
    ``_context``, ``_ctx``, ``lambda_context`` or ``_`` for the second.  Native handlers are
    ``handle(records, ctx)``, so the first parameter's name decides.

    Decorated functions are seen through ``functools.wraps`` (``inspect.signature`` follows
    ``__wrapped__``), as Powertools' decorators use it; a decorator that hides the signature
    (``def wrapper(*args, **kwargs)`` without ``wraps``) reads as native: use
    ``--handler-style lambda`` then.  Accepts a function, a bound method, a callable instance (its
    ``handle``, else ``__call__``), or a :class:`~worker.handling.handler.Handler` (its target).  Classes
    are native (Lambda has no class handlers).  Unknowable signatures read as native.
    """
    target = _callable_of(fn)
    if target is None:
        return False
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return False
    names = [p.name for p in signature.parameters.values() if p.kind in _POSITIONAL][:2]
    return len(names) == 2 and names[0] in _EVENT_NAMES and names[1] in _CONTEXT_NAMES


def lambda_handler(
    handler: Handler,
    *,
    stream_arn: str,
    contexts: ContextFactory,
    serialize: bool = True,
) -> Callable[[Sequence[Record], ShardContext], Any]:
    """A native ``handle(records, ctx)`` that calls the user's ``handler(event, context)``.

    Builds :func:`lambda_event` from the batch (``stream_arn``, else the shard context's) and a
    fresh :class:`LambdaContext` per call, and returns what the handler returns (read it with
    :func:`parse_batch_response`); exceptions propagate, as a failed invocation does in Lambda.

    With ``serialize`` (the default) one invocation of this handler runs at a time in the process,
    as in one Lambda execution environment (see the module docstring); the context's time budget
    starts when the invocation does, not while it waits its turn.
    """
    lock = threading.Lock() if serialize else None

    def handle(records: Sequence[Record], ctx: ShardContext) -> Any:
        event = lambda_event(records, stream_arn or ctx.stream_arn)
        if lock is None:
            return handler.handle(event, contexts.new(), shard_id=ctx.shard_id)  # type: ignore[arg-type]
        call_waiting()  # waiting for the lock is not part of the call (nor of its timeout)
        with lock:
            call_started()
            return handler.handle(event, contexts.new(), shard_id=ctx.shard_id)  # type: ignore[arg-type]

    handle.__qualname__ = f"lambda_handler({handler.name})"
    return handle


def apply_handler_style(
    handler: Handler,
    style: str,
    *,
    stream_arn: str,
    contexts: ContextFactory,
    serialize: bool = True,
) -> Handler:
    """The :class:`Handler` the runtime should call for ``--handler-style`` ``style``.

    ``native`` returns ``handler`` itself; ``lambda`` (or ``auto`` with :func:`is_lambda_style`)
    returns a Handler whose ``handle`` is :func:`lambda_handler` and whose hooks and ``close`` are
    the original's.
    """
    style = style.strip().lower()
    if style not in ("auto", "native", "lambda"):
        raise ValueError(f"unknown handler style {style!r}; use auto, native or lambda")
    if style == "native" or (style == "auto" and not is_lambda_style(handler)):
        return handler
    return Handler(
        handler.target,
        lambda_handler(handler, stream_arn=stream_arn, contexts=contexts, serialize=serialize),
        name=handler.name,
        on_lease_gained=handler.on_lease_gained,
        on_lease_lost=handler.on_lease_lost,
        on_shard_end=handler.on_shard_end,
        close=handler.close,
    )


# ----------------------------------------------------------------------------
# The response.
# ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What a handler's response means for its batch.

    ``failed_index`` is the index in the batch of the first record to retry (the one with the
    lowest failed sequence number): everything before it is done.  ``0`` means the whole batch
    failed; ``None`` means the whole batch succeeded.  ``reason`` says why, for logs.
    """

    failed_index: int | None
    reason: str

    @property
    def ok(self) -> bool:
        """True when the whole batch succeeded."""
        return self.failed_index is None


def _sequence_key(identifier: Any) -> int | None:
    if isinstance(identifier, bool):
        return None
    if isinstance(identifier, int):
        return identifier if identifier >= 0 else None
    if isinstance(identifier, str) and identifier.isascii() and identifier.isdigit():
        return int(identifier)
    return None


def parse_batch_response(response: Any, records: Sequence[Record]) -> BatchOutcome:
    """Read a handler's return value with Lambda's ``ReportBatchItemFailures`` rules for streams.

    Used for both handler styles: a native handler may return the same dict.  The rules, in
    order (AWS: "Configuring partial batch response with DynamoDB and Lambda"):

    1. ``None``, or anything that is not a mapping (a string, a list, a number) → success.
    2. A mapping without a ``batchItemFailures`` key, or with ``batchItemFailures: None``
       ("null list") or ``[]`` ("empty list") → success.
    3. ``batchItemFailures`` that is not a list → the whole batch fails (``failed_index`` 0).
       Lambda does not document this case; failing it keeps the records rather than silently
       dropping failures the handler meant to report.
    4. Any entry that is not a mapping, or whose ``itemIdentifier`` is missing (including a
       misspelled key), ``None`` or ``""`` → the whole batch fails (Lambda: "empty string
       itemIdentifier", "null itemIdentifier", "itemIdentifier with a bad key name").
    5. Any ``itemIdentifier`` that is not the ``SequenceNumber`` of a record of this batch → the
       whole batch fails.  Identifiers are compared as integers (sequence numbers are decimal
       strings of up to 40 digits); an int identifier is accepted too.
    6. Otherwise the batch failed from the record with the lowest failed sequence number:
       ``failed_index`` is its index; the records before it succeeded and are checkpointed, it and
       everything after it are retried (Lambda retries from the lowest one even if later records
       succeeded).  Duplicate identifiers are harmless.
    """
    if not isinstance(response, Mapping):
        return BatchOutcome(None, "success: the handler returned no batchItemFailures mapping")
    failures = response.get("batchItemFailures")
    if failures is None:
        return BatchOutcome(None, "success: no batchItemFailures")
    if not isinstance(failures, list | tuple):
        return BatchOutcome(0, f"whole batch failed: batchItemFailures is a {type(failures).__name__}, not a list")
    if not failures:
        return BatchOutcome(None, "success: batchItemFailures is empty")
    index_of: dict[int, int] = {}
    for i, r in enumerate(records):
        # The first record with that number: snapshot items all carry "0" (docs/snapshot.md), so an
        # identifier naming one fails the batch from its first item, never from its last.
        index_of.setdefault(int(r.sequence_number), i)
    lowest: int | None = None
    for n, entry in enumerate(failures):
        if not isinstance(entry, Mapping):
            return BatchOutcome(0, f"whole batch failed: batchItemFailures[{n}] is a {type(entry).__name__}, "
                                   "not an object")
        identifier = entry.get("itemIdentifier")
        if identifier is None or identifier == "":
            return BatchOutcome(0, f"whole batch failed: batchItemFailures[{n}] has an empty or missing "
                                   "itemIdentifier")
        key = _sequence_key(identifier)
        if key is None or key not in index_of:
            return BatchOutcome(0, f"whole batch failed: batchItemFailures[{n}] itemIdentifier {identifier!r} "
                                   "is not a sequence number of this batch")
        if lowest is None or key < lowest:
            lowest = key
    assert lowest is not None
    index = index_of[lowest]
    return BatchOutcome(index, f"{len(failures)} failure(s) reported; retrying from sequence number {lowest} "
                               f"(record {index} of {len(records)})")
