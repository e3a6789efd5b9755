"""Delivery of one batch of one shard to the handler, under the group's failure policy.

A :class:`BatchDelivery` holds one batch (records in shard order) and advances it
one round at a time, never blocking on a backoff: the consumer's step returns
the delay the delivery asks for.  Each record ends *done* in exactly one way:
handled, filtered out, or sent to the on-failure destination.  The shard may
checkpoint the end of the longest done prefix, and only that (records past a
failure are never skipped by the checkpoint).

Lanes (``parallelization_factor`` > 1): records are split by item key into up to
that many lanes, so one key's records always share a lane and stay in order;
the heads of the lanes run at once, each lane in order.

A failed unit (a handler exception, or a partial batch response naming its
lowest failed record) is, in this order:

1. with ``stop_on_failure``: retried from the failed record for ever (bisected
   first if ``bisect_on_error``), and reported; never skipped;
2. sent to the destination if its oldest record is older than ``max_record_age_s``;
3. split in two halves, each retried on its own, if ``bisect_on_error`` and it
   has more than one record (down to the single failing record);
4. sent to the destination once it failed ``max_retry_attempts`` + 1 times;
5. otherwise retried after an exponential backoff with jitter.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.backoff import backoff_s
from worker.handling.aio import HandlerCancelled
from worker.handling.calls import HandlerCalls
from worker.handling.destinations import Destination, FailureEntry, NoDestination, one_line
from worker.handling.filters import FilterCriteria
from worker.handling.handler import Handler, ShardContext
from worker.handling.lambda_compat import parse_batch_response
from worker.observability import Metrics
from worker.reading.records import Record
from worker.tracing import Tracing
from worker.tracing import from_environment as tracing_from_environment

log = logging.getLogger("shardlease.delivery")

EXITING_WAIT_S = 5.0
"""Seconds a unit whose call was cancelled for the process's exit waits before its next round (the process is
gone by then: a second signal exits within a second)."""

HandlerCall = Callable[[Sequence[Record]], Any]
"""Calls the user's handler on one sub-batch; returns its response (a partial batch response or None)."""
Backoff = Callable[[int], float]
Guard = Callable[[], str | None]
"""Asked immediately before each handler call: why the call must not start now, or None."""


@dataclass(frozen=True, slots=True)
class DeliveryPolicy:
    """What happens when the handler fails.  -1 means forever / no limit."""

    max_retry_attempts: int = -1
    max_record_age_s: float = -1.0
    bisect_on_error: bool = False
    stop_on_failure: bool = False
    parallelization_factor: int = 1


@dataclass(frozen=True, slots=True)
class FailureContext:
    """Who is delivering, for the entries sent to the destination."""

    group: str
    stream_arn: str
    shard_id: str
    worker_id: str


@dataclass(slots=True)
class _Unit:
    """Records of one lane (indexes into the batch, in order) delivered together."""

    indexes: list[int]
    attempts: int = 0
    not_before: float = 0.0
    last_error: str = ""
    last_error_type: str = ""


@dataclass(slots=True)
class _Outcome:
    unit: _Unit
    failed_at: int | None  # position in unit.indexes of the lowest failed record; None: all handled
    error_type: str = ""
    error: str = ""


def filter_view(raw: dict[str, Any], stream_arn: str) -> dict[str, Any]:
    """The record as Lambda's filters see it: with ``eventSourceARN`` and Lambda's lowercase
    ``userIdentity`` keys (a shallow view; images are shared, not copied)."""
    view = dict(raw)
    view["eventSourceARN"] = stream_arn
    identity = raw.get("userIdentity")
    if identity:
        view["userIdentity"] = {"type": identity.get("Type", identity.get("type")),
                                "principalId": identity.get("PrincipalId", identity.get("principalId"))}
    return view


def lane_of(record: Record, lanes: int) -> int:
    """The lane of a record: a stable hash of its item key, so one key always gets one lane."""
    if lanes == 1:
        return 0
    key = orjson.dumps(record.raw.get("dynamodb", {}).get("Keys", {}), option=orjson.OPT_SORT_KEYS)
    return zlib.crc32(key) % lanes


@dataclass(slots=True)
class BatchDelivery:
    """One batch on its way through the handler.  Not thread-safe: one consumer step at a time."""

    records: list[Record]
    call: HandlerCall
    policy: DeliveryPolicy
    destination: Destination
    failure: FailureContext
    metrics: Metrics
    backoff: Backoff
    executor: Executor | None = None
    filters: FilterCriteria | None = None
    calls: HandlerCalls = field(default_factory=HandlerCalls)
    done: list[bool] = field(default_factory=list)
    lanes: list[deque[_Unit]] = field(default_factory=list)
    handled: int = 0
    blocked_reported: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.done = [False] * len(self.records)
        count = max(1, self.policy.parallelization_factor)
        per_lane: list[list[int]] = [[] for _ in range(count)]
        filtered = 0
        arn = self.failure.stream_arn
        for i, record in enumerate(self.records):
            if self.filters is not None and not self.filters.matches(filter_view(record.raw, arn)):
                self.done[i] = True
                filtered += 1
                continue
            per_lane[lane_of(record, count)].append(i)
        if filtered:
            self.metrics.records_filtered(filtered)
        self.lanes = [deque([_Unit(indexes)]) for indexes in per_lane if indexes]

    # -- progress -----------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return not any(self.lanes)

    @property
    def retrying(self) -> bool:
        """True while a unit that failed waits for its next attempt (the batch is not moving)."""
        return any(lane[0].attempts > 0 or lane[0].last_error for lane in self.lanes if lane)

    def done_prefix(self) -> int:
        """How many records from the start are done: the checkpoint may move to the last of them."""
        for i, is_done in enumerate(self.done):
            if not is_done:
                return i
        return len(self.done)

    # -- one round --------------------------------------------------------------------------------

    def run_round(self, guard: Guard = lambda: None) -> float:
        """Deliver the head unit of every lane that is due; returns seconds until the next round
        (0 when work is ready now), or 0 when the batch is finished.

        ``guard`` is asked immediately before each handler call; a unit it refuses is not attempted
        (no attempt is counted) and stays at the head of its lane.
        """
        now = time.monotonic()
        due = [lane[0] for lane in self.lanes if lane and lane[0].not_before <= now]
        if due:
            deliver = functools.partial(self._deliver, guard=guard)
            if self.executor is not None and len(due) > 1:
                outcomes = list(self.executor.map(deliver, due))
            else:
                outcomes = [deliver(unit) for unit in due]
            for outcome in outcomes:
                if outcome is not None:
                    self._settle(outcome)
        self.lanes = [lane for lane in self.lanes if lane]
        if self.finished:
            return 0.0
        now = time.monotonic()
        return max(0.0, min(lane[0].not_before for lane in self.lanes) - now)

    def _deliver(self, unit: _Unit, guard: Guard) -> _Outcome | None:
        """One handler call on one unit; None if ``guard`` refused it (nothing was called)."""
        batch = [self.records[i] for i in unit.indexes]
        if guard() is not None:
            return None
        self.metrics.batch_size(len(batch))
        call = self.calls.running()
        try:
            with call:
                response = self.call(batch)
        except HandlerCancelled as exc:
            if not exc.exiting:
                return self._failed(unit, batch, call.duration_s, exc)
            # Cancelled because the process exits (a second signal): not a failure of the handler.  Nothing
            # is settled, so no failure policy applies and nothing is checkpointed; the next owner re-reads it.
            # Not before the process is gone: no new call starts meanwhile (the loop refuses them anyway).
            unit.not_before = time.monotonic() + EXITING_WAIT_S
            log.warning("handler call on %d records (%s..%s) cancelled: the worker is exiting; the records are "
                        "left for the next owner", len(batch), batch[0].sequence_number, batch[-1].sequence_number,
                        extra={"shard_id": self.failure.shard_id})
            return None
        except BaseException as exc:
            # The boundary of user code: whatever it raises (SystemExit and asyncio's CancelledError
            # are BaseExceptions) is a failed call under the failure policy, never the end of the shard.
            return self._failed(unit, batch, call.duration_s, exc)
        self.metrics.handler_duration(call.duration_s)
        outcome = parse_batch_response(response, batch)
        if outcome.failed_index is None:
            return _Outcome(unit, None)
        return _Outcome(unit, outcome.failed_index, "BatchItemFailure", outcome.reason)

    def _failed(self, unit: _Unit, batch: Sequence[Record], duration_s: float, exc: BaseException) -> _Outcome:
        self.metrics.handler_duration(duration_s)
        log.warning("handler failed on %d records (%s..%s): %s: %s", len(batch), batch[0].sequence_number,
                    batch[-1].sequence_number, type(exc).__name__, exc,
                    extra={"shard_id": self.failure.shard_id}, exc_info=True)
        return _Outcome(unit, 0, type(exc).__name__, one_line(str(exc)) or type(exc).__name__)

    def _settle(self, outcome: _Outcome) -> None:
        unit = outcome.unit
        lane = next(lane for lane in self.lanes if lane and lane[0] is unit)
        handled = unit.indexes if outcome.failed_at is None else unit.indexes[: outcome.failed_at]
        for i in handled:
            self.done[i] = True
        if handled:
            self.handled += len(handled)
            self.metrics.records_processed(len(handled))
            self.metrics.batches_processed()
        if outcome.failed_at is None:
            lane.popleft()
            return
        self.metrics.handler_error()
        failed = _Unit(unit.indexes[outcome.failed_at :], unit.attempts + 1, last_error=outcome.error,
                       last_error_type=outcome.error_type)
        lane.popleft()
        policy = self.policy
        if policy.stop_on_failure:
            self._retry_in_place(lane, failed, report=True)
            return
        if policy.max_record_age_s >= 0 and self._oldest_age_s(failed) > policy.max_record_age_s:
            self._give_up(lane, failed, "record_too_old")
            return
        if policy.bisect_on_error and len(failed.indexes) > 1:
            half = len(failed.indexes) // 2
            lane.appendleft(_Unit(failed.indexes[half:], 0, last_error=failed.last_error,
                                  last_error_type=failed.last_error_type))
            lane.appendleft(_Unit(failed.indexes[:half], 0, last_error=failed.last_error,
                                  last_error_type=failed.last_error_type))
            return
        if policy.max_retry_attempts >= 0 and failed.attempts > policy.max_retry_attempts:
            self._give_up(lane, failed, "retries_exhausted")
            return
        self._retry_in_place(lane, failed, report=False)

    def _retry_in_place(self, lane: deque[_Unit], unit: _Unit, *, report: bool) -> None:
        if report and self.policy.bisect_on_error and len(unit.indexes) > 1:
            half = len(unit.indexes) // 2
            lane.appendleft(_Unit(unit.indexes[half:], 0))
            lane.appendleft(_Unit(unit.indexes[:half], 0))
            return
        unit.not_before = time.monotonic() + self.backoff(unit.attempts)
        lane.appendleft(unit)
        if report:
            first = self.records[unit.indexes[0]]
            log.error("shard stopped at record %s (attempt %d): %s: %s; it is retried, never skipped "
                      "(--stop-on-failure)", first.sequence_number, unit.attempts, unit.last_error_type,
                      unit.last_error, extra={"shard_id": self.failure.shard_id})

    def _give_up(self, lane: deque[_Unit], unit: _Unit, reason: str) -> None:
        """Send the unit's records to the destination and mark them done; retried if the send fails."""
        records = [self.records[i] for i in unit.indexes]
        entry = FailureEntry.create(
            records, group=self.failure.group, stream_arn=self.failure.stream_arn, shard_id=self.failure.shard_id,
            attempts=unit.attempts, reason=reason, error=unit.last_error, error_type=unit.last_error_type,
            worker_id=self.failure.worker_id,
        )
        try:
            entry_id = self.destination.send(entry)
        except Exception as exc:
            self.metrics.destination_error()
            log.warning("could not send %d failed records to the on-failure destination (%s); retrying",
                        len(records), exc, extra={"shard_id": self.failure.shard_id})
            unit.not_before = time.monotonic() + self.backoff(unit.attempts)
            lane.appendleft(unit)
            return
        for i in unit.indexes:
            self.done[i] = True
        self.metrics.records_failed(reason, len(records))
        log.error("gave up on %d records (%s..%s) after %d attempts (%s): %s: %s; sent to the on-failure "
                  "destination as %s", len(records), entry.first_sequence_number, entry.last_sequence_number,
                  unit.attempts, reason, unit.last_error_type, unit.last_error, entry_id or "(none)",
                  extra={"shard_id": self.failure.shard_id})

    def _oldest_age_s(self, unit: _Unit) -> float:
        oldest = min(self.records[i].approximate_creation_time for i in unit.indexes)
        return (datetime.now(UTC) - oldest).total_seconds()


@dataclass(frozen=True, slots=True)
class DeliveryFactory:
    """Builds each batch's :class:`BatchDelivery`; one per worker, shared by its shard consumers."""

    call: Callable[[Sequence[Record], ShardContext], Any]
    """Calls the handler (native or Lambda style) on a sub-batch of one shard."""
    policy: DeliveryPolicy
    destination: Destination
    metrics: Metrics
    filters: FilterCriteria | None = None
    executor: Executor | None = None
    """Runs the lanes of one batch at once (parallelization_factor > 1)."""
    backoff: Backoff = backoff_s
    tracing: Tracing | None = field(default_factory=tracing_from_environment)
    """Spans of handler calls (and of GetRecords, made by the consumers); None: not traced."""

    def new(self, records: list[Record], ctx: ShardContext, calls: HandlerCalls | None = None,
            read_spans: Sequence[Any] = ()) -> BatchDelivery:
        """A delivery of ``records`` (one shard, in order); ``calls`` tracks its handler calls in flight;
        ``read_spans`` are the contexts of the GetRecords spans that read them (linked from each call's span)."""
        call = self.call

        def handler_call(batch: Sequence[Record]) -> Any:
            return call(batch, ctx)

        return BatchDelivery(
            records=records,
            call=handler_call if self.tracing is None else self.tracing.handler_call(ctx.shard_id, handler_call,
                                                                                     read_spans),
            policy=self.policy,
            destination=self.destination,
            failure=FailureContext(ctx.group, ctx.stream_arn, ctx.shard_id, ctx.worker_id),
            metrics=self.metrics,
            backoff=self.backoff,
            executor=self.executor,
            filters=self.filters,
            calls=calls or HandlerCalls(),
        )

    @classmethod
    def simple(cls, handler: Handler, metrics: Metrics) -> DeliveryFactory:
        """A native handler, retried forever on failure (Lambda's default), no filters, no lanes."""
        return cls(call=handler.handle, policy=DeliveryPolicy(), destination=NoDestination(), metrics=metrics)
