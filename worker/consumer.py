"""ShardConsumer: one owned shard, read in order, handed to the handler, checkpointed.

A consumer is a small state machine advanced by :meth:`ShardConsumer.step`, one
step at a time on the :class:`~worker.scheduler.Scheduler`'s bounded thread pool.
A step reads one page (GetRecords), hands its records to the handler as one
batch, and checkpoints the batch's last sequence number, fenced by the lease's
token.  It returns the delay before the next step, or ``None`` when the
consumer is finished.

Invariants:

* Records reach the handler in shard order; a batch is retried until the handler
  succeeds, and the checkpoint never passes a batch the handler has not finished
  (at-least-once, the shard waits as Lambda's does by default).
* Every fenced write (checkpoint, SHARD_END, release) carries this consumer's own
  token, never a newer acquisition's, and :meth:`LeaseManager.may_act` is asked
  immediately before every handler call and checkpoint: a consumer whose lease is
  gone, superseded, or not renewed for ``lease_ttl_s`` minus a safety margin (a
  paused process waking up) hands its handler nothing more.
* A stop (lost lease, handoff, shutdown) takes effect between steps; a step in
  flight finishes first, so a lease is released only once no handler call of
  its consumer is running.  A lost lease's checkpoint is refused by the token.
* The shard is marked ended only after the handler finished its last record;
  ``on_shard_end`` runs once, even when SHARD_END has to be retried.
* A caught-up shard waits at most ``idle_poll_interval_s`` between polls (pacing: worker.polling; a
  woken poll's next one up to half that more), unless a GetRecords budget is set: then each GetRecords
  waits for a token of worker.reading.budget (busy shards first, no shard starves) and a stop, handoff or
  shutdown still takes effect at the next step, which the scheduler runs at once.
* With ``checkpoint_interval_s`` > 0 a handled position is written at most once per interval, and
  always before a handoff or shutdown release and by SHARD_END; a crash or lost lease re-delivers what
  was handled since the last write (at most ``checkpoint_interval_s`` of records).  Reads resume after
  the last *handled* position, written or not.
* Whatever the handler or a hook raises (``BaseException`` included) is caught
  at the step's boundary: the shard is never left wedged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leaser import Acquired, CoordinationUnavailable, LeaseLostError, LeaseManager
from worker.backoff import backoff_s
from worker.errors import ExpiredIterator, ShardNotFound, StreamServerError, StreamThrottled, TrimmedData
from worker.handling.calls import HandlerCalls
from worker.handling.delivery import BatchDelivery, DeliveryFactory
from worker.handling.handler import Handler, ShardContext
from worker.observability import Metrics
from worker.polling import FIRST_IDLE_DELAY_S, PollPacer, PollPolicy
from worker.reading.budget import ReadBudget
from worker.reading.records import Record
from worker.reading.streams import StreamsClient
from worker.snapshot.gate import HOLD_POLL_S, StreamGate

log = logging.getLogger("shardlease.consumer")

LATEST_MARGIN_S = 2.0
"""Seconds before the first LATEST read of a shard whose records a later owner still hands over
(ApproximateCreationDateTime has second precision; a few extra records beat a skipped one)."""
RENEWAL_WAIT_S = 0.2
"""Seconds between checks while the worker's renewals are late (nothing is handed to the handler)."""
ITERATOR_REFRESH_S = 600.0
"""Seconds after which a kept shard iterator (AWS expires them at 900 s) is replaced by a fresh one from the
position before a GetRecords, if no records are gathered: under a GetRecords budget a shard's polls can be
further apart, and a call on an expired iterator would spend a token for nothing."""


class StopReason:
    LOST = "lost"
    HANDOFF = "handoff"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True, slots=True)
class ConsumerSettings:
    stream_arn: str
    group: str
    worker_id: str
    batch_size: int
    initial_position: str
    """TRIM_HORIZON or LATEST; applies only to shards open when the group first listed the stream and
    never checkpointed since.  Shards created later (children) always start at TRIM_HORIZON."""
    idle_poll_interval_s: float
    """Longest wait between polls of a caught-up shard (the ceiling of worker.polling's pacing)."""
    lease_ttl_s: float
    batching_window_s: float = 0.0
    """Seconds to keep gathering records into a batch; 0 delivers as soon as no more are waiting."""
    active_poll_interval_s: float = 1.0
    """Longest wait between polls of a shard that had records within ``quiet_after_s``."""
    quiet_after_s: float = 60.0
    """Seconds without records after which a shard is polled more slowly (up to ``idle_poll_interval_s``)."""
    checkpoint_interval_s: float = 0.0
    """At most one checkpoint per this many seconds (0: one per batch)."""

    @property
    def poll_policy(self) -> PollPolicy:
        return PollPolicy(active_interval_s=self.active_poll_interval_s, ceiling_s=self.idle_poll_interval_s,
                          quiet_after_s=self.quiet_after_s)


class ShardConsumer:
    """Reads one shard for as long as this worker holds its lease."""

    def __init__(
        self,
        acquired: Acquired,
        *,
        settings: ConsumerSettings,
        streams: StreamsClient,
        manager: LeaseManager,
        handler: Handler,
        metrics: Metrics,
        on_shard_ended: Callable[[str, list[str]], None],
        deliveries: DeliveryFactory | None = None,
        on_quiet_activity: Callable[[], object] | None = None,
        gate: StreamGate | None = None,
        budget: ReadBudget | None = None,
    ) -> None:
        self.shard_id = acquired.shard_id
        self.token = acquired.token
        """The token of the acquisition this consumer serves: every fenced write carries it."""
        self._read_from_start = acquired.read_from_start
        self.settings = settings
        self._streams = streams
        self._manager = manager
        self._handler = handler
        self._metrics = metrics
        self._on_shard_ended = on_shard_ended
        self.checkpoint = acquired.checkpoint
        """Last sequence number checkpointed ('' = none: start at the initial position)."""
        self._unsaved = ""
        """Last sequence number handled but not checkpointed yet ('' = none): see _save_checkpoint."""
        self._checkpointed_at = float("-inf")
        """Monotonic time of the last checkpoint written (for checkpoint_interval_s)."""
        self._pacer = PollPacer(settings.poll_policy, time.monotonic())
        self._on_quiet_activity = on_quiet_activity
        """Called (no arguments) when this shard gets records after being quiet: wakes the worker's others."""
        self._budget = budget
        """The worker's GetRecords budget (``--max-getrecords-per-second``); None: no budget."""
        self._iterator: str | None = None
        self._iterator_at = 0.0
        """Monotonic time the kept iterator was asked for (for ITERATOR_REFRESH_S)."""
        self._gathered: list[Record] = []
        self._read_spans: list[Any] = []
        """Contexts of the traced GetRecords calls that read records into the next batch (see worker.tracing)."""
        self._gather_started = 0.0
        self._delivery: BatchDelivery | None = None
        self._delivered_prefix = 0
        self._deliveries = deliveries or DeliveryFactory.simple(handler, metrics)
        self._gate = gate
        self._hold = 0
        """> 0: the gathered records wait for snapshot pages announced at or before this clock value
        (docs/snapshot.md); 0: they may be handed over."""
        self._at_end = False
        self._failures = 0
        self._from_trim_horizon = False
        self._skip_before_s = 0.0
        """While > 0 (and no checkpoint yet): drop records created before it (Unix s): see _new_iterator."""
        if acquired.skip_before_ms and not acquired.checkpoint:
            # Repositioned to a time (a rewind or --to-latest): read from the trim horizon and skip what was
            # created before it.  ApproximateCreationDateTime is whole seconds (rounded down), so the cutoff
            # is the second of that time: records of the same second just before it are handled too (the
            # documented margin); never is a record at or after it skipped.
            self._read_from_start = True
            self._skip_before_s = float(acquired.skip_before_ms // 1000)
        self._skipped_page = False
        """The last page read had records, all skipped (created before the start time)."""
        self._started = False
        self._lock = threading.Lock()
        self._stop_reason: str | None = None
        self._handoff_to = ""
        self._stop_detail = ""
        self._end_hook_called = False
        self.calls = HandlerCalls()
        """Handler calls (and hooks) of this shard in flight, for the hang watchdog."""
        self._stuck: tuple[str, float] | None = None
        self.finished = False
        self.ctx = ShardContext(
            shard_id=self.shard_id,
            worker_id=settings.worker_id,
            stream_arn=settings.stream_arn,
            group=settings.group,
            lease_token=self.token,
        )

    # -- control (any thread) ----------------------------------------------------------------

    def request_stop(self, reason: str, handoff_to: str = "", detail: str = "") -> None:
        """Stop after the step in flight.  A lost lease overrides a handoff or shutdown."""
        with self._lock:
            if self._stop_reason is None or reason == StopReason.LOST:
                self._stop_reason = reason
                self._handoff_to = handoff_to
                self._stop_detail = detail

    @property
    def stop_reason(self) -> str | None:
        with self._lock:
            return self._stop_reason

    def stuck(self) -> tuple[str, float] | None:
        """(state, since) while the shard makes no progress, else None.  ``since`` is monotonic seconds;
        the state is one of :data:`worker.observability.STUCK_STATES` (``hung`` is judged by the runtime
        from :attr:`calls`)."""
        with self._lock:
            return self._stuck

    def _set_stuck(self, state: str | None) -> None:
        with self._lock:
            if state is None:
                self._stuck = None
            elif self._stuck is None or self._stuck[0] != state:
                self._stuck = (state, time.monotonic())

    # -- one step (the scheduler guarantees one at a time) ------------------------------------

    def step(self) -> float | None:
        """Advance the shard; returns seconds until the next step, or None when finished."""
        if self.stop_reason is not None:
            return self._finish()
        if not self._holds_lease():
            return self._finish()
        if not self._started:
            self._started = True
            self._call_hook(self._handler.on_lease_gained)
        if self._manager.may_act(self.shard_id, self.token) is not None:
            # The lease may have expired while this process could not renew it (a pause, a
            # partition): hand nothing more to the handler until a heartbeat gets through.
            self._set_stuck("renewal_late")
            return RENEWAL_WAIT_S
        try:
            return self._until_checkpoint_due(self._advance())
        except LeaseLostError as exc:
            log.warning("lease lost: %s", exc.reason, extra={"shard_id": self.shard_id})
            self.request_stop(StopReason.LOST, detail=exc.reason)
            return self._finish()
        except ExpiredIterator:
            log.info("iterator expired; resuming after checkpoint %s", self.checkpoint or "(none)",
                     extra={"shard_id": self.shard_id})
            self._iterator = None
            self._gathered = []
            return 0.0
        except ShardNotFound:
            log.error("shard no longer exists (trimmed past the stream's retention); records after checkpoint "
                      "%s that were not handled are lost; ending it so its children can start",
                      self.checkpoint or "(none)", extra={"shard_id": self.shard_id})
            self._metrics.trimmed_data()
            self._gathered = []
            self._at_end = True
            self._end_shard()
            return None
        except TrimmedData as exc:
            log.error("records of shard %s after checkpoint %s are past the 24 h retention and lost (%s); "
                      "continuing from TRIM_HORIZON", self.shard_id, self.checkpoint or "(none)", exc,
                      extra={"shard_id": self.shard_id})
            self._metrics.trimmed_data()
            self._iterator = None
            self._gathered = []
            self._from_trim_horizon = True
            return 0.0
        except StreamThrottled:
            self._metrics.throttle("GetRecords")
            self._failures += 1
            self._set_stuck("read_failing")
            return backoff_s(self._failures)
        except (StreamServerError, CoordinationUnavailable) as exc:
            if isinstance(exc, CoordinationUnavailable):
                self._metrics.checkpoint_failure()
            self._failures += 1
            self._set_stuck("read_failing")
            delay = backoff_s(self._failures)
            log.warning("retrying in %.1f s: %s", delay, exc, extra={"shard_id": self.shard_id})
            return delay

    @property
    def position(self) -> str:
        """The last sequence number handled (checkpointed or not); '' before the first."""
        return self._unsaved or self.checkpoint

    def wake(self, now: float) -> bool:
        """True (and noted) for a quiet shard whose next poll is within the wake gap and not polled within it
        (worker.polling): the scheduler then runs that poll now, and the one after stays on the shard's grid.
        Called only while no step runs.  Never for a shard backing off after a failed read or write (throttled,
        AWS or Redis errors)."""
        return (self._delivery is None and not self._gathered and not self._at_end and self._stop_reason is None
                and not self._failures and self._pacer.wake(now))

    def _until_checkpoint_due(self, delay: float | None) -> float | None:
        """Shorten a wait so that a coalesced checkpoint is written when its interval is up."""
        if delay is None or not self._unsaved:
            return delay
        due = self._checkpointed_at + self.settings.checkpoint_interval_s - time.monotonic()
        return min(delay, max(due, 0.0))

    def _holds_lease(self) -> bool:
        """False (and a stop for a lost lease) once this worker no longer holds this consumer's token."""
        why = self._manager.why_not_held(self.shard_id, self.token)
        if why is None:
            return True
        log.warning("lease lost (%s); stopping the shard", why, extra={"shard_id": self.shard_id})
        self.request_stop(StopReason.LOST, detail=why)
        return False

    def _guard(self) -> str | None:
        """Asked immediately before each handler call: why it must not start, or None."""
        if self.stop_reason is not None:
            return f"stopping ({self.stop_reason})"
        return self._manager.may_act(self.shard_id, self.token)

    def _advance(self) -> float | None:
        self._save_checkpoint()
        if self._delivery is None:
            if not (self._gathered and self._hold):  # held records: read no more (a read would move the hold)
                wait = self._gather()
                if wait is not None:
                    return wait
            if self._gathered and self._hold:
                if self._gate is not None and not self._gate.clear(self._hold):
                    return HOLD_POLL_S
                self._hold = 0
            if self._gathered:
                self._delivery = self._deliveries.new(self._gathered, self.ctx, self.calls, self._read_spans)
                self._gathered, self._read_spans = [], []
                self._delivered_prefix = 0
            elif self._at_end:
                self._end_shard()
                return None
            else:
                self._set_stuck(None)
        delivery = self._delivery
        assert delivery is not None
        self._metrics.pending_since(self.shard_id, self._oldest_unfinished(delivery))
        delay = delivery.run_round(self._guard)
        self._checkpoint_progress(delivery)
        if delivery.finished and self._unsaved and not self.settings.checkpoint_interval_s:
            # Done, but the checkpoint waits until the lease may be acted on again (its position is kept
            # in _unsaved and written by the next step's _save_checkpoint before anything is read).
            self._delivery = None
            return RENEWAL_WAIT_S
        if not delivery.finished:
            if not self._holds_lease():
                return 0.0
            self._metrics.pending_since(self.shard_id, self._oldest_unfinished(delivery))
            self._set_stuck("retrying" if delivery.retrying else None)
            return delay
        last = delivery.records[-1]
        self._metrics.iterator_age(
            self.shard_id, (datetime.now(UTC) - last.approximate_creation_time).total_seconds()
        )
        self._set_stuck(None)
        self._delivery = None
        self._failures = 0
        if self._at_end:
            self._end_shard()
            return None
        return 0.0

    @staticmethod
    def _oldest_unfinished(delivery: BatchDelivery) -> float:
        """Creation time (Unix seconds) of the batch's first record not yet done."""
        prefix = min(delivery.done_prefix(), len(delivery.records) - 1)
        return delivery.records[prefix].approximate_creation_time.timestamp()

    def _gather(self) -> float | None:
        """Read pages into the next batch.  None when the batch is ready (or the shard ended);
        otherwise the seconds to wait before reading again."""
        settings = self.settings
        want = settings.batch_size - len(self._gathered)
        if want > 0 and not self._at_end and (wait := self._budget_wait()) > 0:
            # No GetRecords token yet: deliver what is gathered (once its batching window is up), else wait.
            if not self._gathered:
                return wait
            if settings.batching_window_s > 0:
                left = self._gather_started + settings.batching_window_s - time.monotonic()
                if left > 0:
                    return min(wait, left)
            if self._budget is not None:  # it delivers instead of waiting: no place in line while its handler runs
                self._budget.forget(self)
            return None
        if want > 0 and not self._at_end:
            limit = min(want, 1000)
            page = self._read(limit)
            if page:
                if not self._gathered:
                    self._gather_started = time.monotonic()
                self._gathered.extend(page)
            more_waiting = len(page) == limit
        else:
            more_waiting = False
        if not self._gathered:
            if self._at_end:
                return None
            if self._skipped_page:  # a page of records skipped (before the start time) is not an idle shard
                self._skipped_page = False
                return 0.0
            self._metrics.iterator_age(self.shard_id, 0.0)  # caught up: nothing waits to be read
            return self._pacer.empty_delay(time.monotonic())
        full = len(self._gathered) >= settings.batch_size
        if full or self._at_end:
            return None
        if settings.batching_window_s > 0:
            left = self._gather_started + settings.batching_window_s - time.monotonic()
            if left <= 0:
                return None
            return 0.0 if more_waiting else min(left, FIRST_IDLE_DELAY_S * 2)
        return 0.0 if more_waiting else None

    def _budget_wait(self) -> float:
        """Seconds until this shard may call GetRecords under the worker's budget (0.0: a token was taken)."""
        if self._budget is None:
            return 0.0
        wait = self._budget.request(self, busy=not self._pacer.quiet(time.monotonic()))
        if wait > 0:
            self._metrics.budget_wait()
        return wait

    def _checkpoint_progress(self, delivery: BatchDelivery) -> None:
        """Note the end of the batch's done prefix as handled, if it moved, and checkpoint it when due."""
        prefix = delivery.done_prefix()
        if prefix > self._delivered_prefix:
            self._unsaved = delivery.records[prefix - 1].sequence_number
            self._delivered_prefix = prefix
        self._save_checkpoint()

    def _save_checkpoint(self, *, force: bool = False) -> bool:
        """Write the handled position if it is unsaved, ``checkpoint_interval_s`` has passed since the last
        write (or ``force``), and the lease may be acted on (fenced by the token).  True when nothing is
        left unsaved.  A refused or failed write raises (LeaseLostError, CoordinationUnavailable) and keeps
        the position unsaved, for the next step."""
        if not self._unsaved:
            return True
        now = time.monotonic()
        if not force and now < self._checkpointed_at + self.settings.checkpoint_interval_s:
            return False
        if self._manager.may_act(self.shard_id, self.token) is not None:
            return False
        sequence_number = self._unsaved
        self._manager.checkpoint(self.shard_id, sequence_number, token=self.token)
        self.checkpoint = sequence_number
        self._unsaved = ""
        self._checkpointed_at = now
        return True

    def _read(self, limit: int) -> list[Record]:
        if (self._iterator is not None and not self._gathered
                and time.monotonic() - self._iterator_at > ITERATOR_REFRESH_S):
            self._iterator = None  # about to expire (a long wait for a budget token): resume from the position
        if self._iterator is None:
            self._iterator = self._new_iterator()
            self._iterator_at = time.monotonic()
        started = time.monotonic()
        iterator, tracing = self._iterator, self._deliveries.tracing
        if tracing is None:
            page = self._streams.get_records(iterator, limit, shard_id=self.shard_id)
        else:
            page = tracing.get_records(
                self.shard_id, lambda: self._streams.get_records(iterator, limit, shard_id=self.shard_id),
                self._read_spans)
        ended = time.monotonic()
        self._metrics.getrecords_call(ended - started)
        if page.records and self._gate is not None:
            # Read the snapshot clock after the records and before keeping them: if Redis fails here the
            # iterator has not moved and the page is read again.
            tag = self._gate.tag(read_at=ended)
            self._hold = tag if tag else 0  # clear now also clears what was gathered before
        if self._pacer.polled(ended, bool(page.records)) and self._on_quiet_activity is not None:
            self._on_quiet_activity()
        self._iterator, self._iterator_at = page.next_iterator, started
        self._at_end = page.next_iterator is None
        self._failures = 0
        if self._skip_before_s and not self.position:
            cutoff = self._skip_before_s
            kept = [r for r in page.records if r.approximate_creation_time.timestamp() >= cutoff]
            if len(kept) < len(page.records):
                self._metrics.records_skipped_before_start.inc(len(page.records) - len(kept))
                self._skipped_page = not kept  # more may follow at once: no idle wait (see _gather)
            return kept
        return page.records

    def _new_iterator(self) -> str:
        arn = self.settings.stream_arn
        if self.position and not self._from_trim_horizon:
            return self._streams.get_shard_iterator(arn, self.shard_id, "AFTER_SEQUENCE_NUMBER", self.position)
        # LATEST only for a shard open when the group first listed the stream and never
        # checkpointed since: never for one it is resuming, one created later (a child: records
        # written to it before its first read would be skipped), or after trimmed data.
        fresh = not self.position and not self._read_from_start and not self._from_trim_horizon
        self._from_trim_horizon = False
        if fresh and self.settings.initial_position == "LATEST":
            # The first reader fixes where LATEST was; a later owner of the shard (still without a
            # checkpoint: a crash or handoff during the first batch) starts from there, not from
            # its own "now", which would skip what was written in between.
            began_ms, first = self._manager.begin(self.shard_id, token=self.token)
            if not first:
                self._skip_before_s = began_ms / 1000 - LATEST_MARGIN_S
                log.info("resuming a shard first read at LATEST at %s: from TRIM_HORIZON, skipping records "
                         "written before", datetime.fromtimestamp(began_ms / 1000, UTC).isoformat(),
                         extra={"shard_id": self.shard_id})
                return self._streams.get_shard_iterator(arn, self.shard_id, "TRIM_HORIZON")
            return self._streams.get_shard_iterator(arn, self.shard_id, "LATEST")
        return self._streams.get_shard_iterator(arn, self.shard_id, "TRIM_HORIZON")

    def _end_shard(self) -> None:
        if not self._end_hook_called:
            self._end_hook_called = True
            self._call_hook(self._handler.on_shard_end)
        # A CoordinationUnavailable here leaves the lease held and renewed: the step retries.
        children = self._manager.end_shard(self.shard_id, token=self.token)
        if children is None:
            # The process exits at once (a second signal), perhaps with a thread the hook started still running:
            # the lease expires and its next owner ends the shard (the children wait until then).
            log.info("shard end left to the next owner (the process is exiting)", extra={"shard_id": self.shard_id})
            self.finished = True
            return
        log.info("shard ended (SHARD_END checkpointed)%s",
                 f"; children ready: {', '.join(children)}" if children else "", extra={"shard_id": self.shard_id})
        self._metrics.lease_lost("shard_end")
        self._metrics.forget_shard(self.shard_id)
        if self._budget is not None:
            self._budget.forget(self)
        self.finished = True
        self._on_shard_ended(self.shard_id, children)

    def _finish(self) -> float | None:
        """Leave the shard for the reason given to :meth:`request_stop` (None when done).

        Records read but not yet handled are dropped: the next owner reads them again after
        the checkpoint.
        """
        reason = self.stop_reason
        try:
            if reason in (StopReason.HANDOFF, StopReason.SHUTDOWN):
                # Records handled but not checkpointed yet (coalesced, or a checkpoint that had to wait):
                # write them before letting go, so the next owner does not handle them again.
                if self._delivery is not None:
                    self._checkpoint_progress(self._delivery)
                if not self._save_checkpoint(force=True) and self._manager.why_not_held(
                        self.shard_id, self.token) is None:
                    # Renewals are late (may_act refuses): wait for a heartbeat rather than release the
                    # lease with handled records unsaved; a lease lost meanwhile ends the wait.
                    return RENEWAL_WAIT_S
            self._delivery = None
            self._gathered = []
            if reason == StopReason.HANDOFF:
                released = self._manager.release(self.shard_id, to=self._handoff_to, token=self.token)
                self._metrics.lease_lost("handoff")
                log.info("%s after checkpoint %s", f"handed over to {self._handoff_to}" if released else
                         "left to expire (the process is exiting)", self.checkpoint or "(none)",
                         extra={"shard_id": self.shard_id})
            elif reason == StopReason.SHUTDOWN:
                released = self._manager.release(self.shard_id, token=self.token)
                self._metrics.lease_lost("shutdown")
                log.info("%s after checkpoint %s", "released for shutdown" if released else
                         "left to expire (the process is exiting)", self.checkpoint or "(none)",
                         extra={"shard_id": self.shard_id})
            else:
                self._metrics.lease_lost("expired" if "expired" in self._stop_detail else "stolen")
        except LeaseLostError as exc:
            log.warning("lease lost (%s) while letting it go", exc.reason, extra={"shard_id": self.shard_id})
            self._metrics.lease_lost("stolen")
        except CoordinationUnavailable as exc:
            log.warning("cannot release yet (%s); retrying", exc, extra={"shard_id": self.shard_id})
            return 0.5
        self._call_hook(self._handler.on_lease_lost)
        self._metrics.forget_shard(self.shard_id)
        if self._budget is not None:
            self._budget.forget(self)
        self.finished = True
        return None

    def _call_hook(self, hook: Callable[[ShardContext], Any]) -> None:
        """Call a lease hook of the handler; whatever it raises is logged, never propagated."""
        try:
            with self.calls.running():
                hook(self.ctx)
        except BaseException:
            log.exception("handler hook %s failed", getattr(hook, "__name__", hook), extra={"shard_id": self.shard_id})
