"""BatchDelivery as a pure state machine: prefixes, lanes, bisect, retries, the destination, filters."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from worker.handling.delivery import BatchDelivery, DeliveryPolicy, FailureContext, filter_view, lane_of
from worker.handling.destinations import FailureEntry
from worker.handling.filters import FilterCriteria
from worker.observability import Metrics
from worker.reading.records import Record


def record(i: int, key: str = "", *, age_s: float = 0.0, ttl: bool = False) -> Record:
    created = datetime.now(UTC) - timedelta(seconds=age_s)
    raw: dict[str, Any] = {
        "eventID": f"e{i}", "eventName": "REMOVE" if ttl else "INSERT", "eventVersion": "1.1",
        "eventSource": "aws:dynamodb", "awsRegion": "us-east-1",
        "dynamodb": {"ApproximateCreationDateTime": created.timestamp(), "Keys": {"pk": {"S": key or f"k{i}"}},
                     "NewImage": {"pk": {"S": key or f"k{i}"}, "n": {"N": str(i)}},
                     "SequenceNumber": str(100000000000000000000 + i), "SizeBytes": 10,
                     "StreamViewType": "NEW_IMAGE"},
    }
    if ttl:
        raw["userIdentity"] = {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}
    return Record.from_wire(raw, "shard-1")


@dataclass
class Sink:
    poison: set[int] = field(default_factory=set)
    calls: list[list[int]] = field(default_factory=list)
    partial: bool = False

    def __call__(self, batch: Sequence[Record]) -> Any:
        ns = [int(r.new_image["n"]) for r in batch if r.new_image]
        self.calls.append(ns)
        bad = [r for r in batch if r.new_image and int(r.new_image["n"]) in self.poison]
        if not bad:
            return None
        if self.partial:
            return {"batchItemFailures": [{"itemIdentifier": r.sequence_number} for r in bad]}
        raise RuntimeError("poison")


@dataclass
class Destination:
    entries: list[FailureEntry] = field(default_factory=list)

    def send(self, entry: FailureEntry) -> str:
        self.entries.append(entry)
        return str(len(self.entries))

    def close(self) -> None:
        pass


def delivery(records: list[Record], sink: Sink, policy: DeliveryPolicy, **kw: Any) -> tuple[BatchDelivery, Destination]:
    dest = Destination()
    d = BatchDelivery(records=records, call=sink, policy=policy, destination=dest,
                      failure=FailureContext("g", "arn:aws:dynamodb:us-east-1:123456789012:table/t/stream/x",
                                             "shard-1", "w1"),
                      metrics=Metrics("w1", "g"), backoff=lambda attempt: 0.0, **kw)
    return d, dest


def run(d: BatchDelivery, rounds: int = 200) -> None:
    for _ in range(rounds):
        if d.finished:
            return
        d.run_round()
    raise AssertionError("delivery did not finish")


def test_partial_failure_moves_the_prefix_to_just_before_the_failed_record() -> None:
    sink = Sink(poison={3}, partial=True)
    d, _ = delivery([record(i) for i in range(6)], sink, DeliveryPolicy())
    d.run_round()
    assert d.done_prefix() == 3 and sink.calls == [[0, 1, 2, 3, 4, 5]]
    sink.poison.clear()
    run(d)
    assert sink.calls[1] == [3, 4, 5] and d.done_prefix() == 6


def test_bisect_isolates_the_poison_record_in_about_log2_calls() -> None:
    sink = Sink(poison={637})
    d, dest = delivery([record(i, f"k{i % 50}") for i in range(1000)], sink,
                       DeliveryPolicy(bisect_on_error=True, max_retry_attempts=0))
    run(d)
    assert [e.first_sequence_number for e in dest.entries] == [record(637).sequence_number]
    assert len(sink.calls) <= 2 * 11
    handled = sorted(n for call in sink.calls for n in call if n != 637)
    assert len(handled) >= 999 and d.done_prefix() == 1000


def test_retries_exhausted_send_the_failed_tail_with_its_attempts() -> None:
    sink = Sink(poison={2}, partial=True)
    d, dest = delivery([record(i) for i in range(5)], sink, DeliveryPolicy(max_retry_attempts=2))
    run(d)
    [entry] = dest.entries
    assert entry.attempts == 3 and entry.reason == "retries_exhausted" and entry.record_count == 3
    assert [r["dynamodb"]["SequenceNumber"] for r in entry.records] == [record(i).sequence_number for i in (2, 3, 4)]


def test_old_records_go_to_the_destination_at_once() -> None:
    sink = Sink(poison={1})
    d, dest = delivery([record(i, age_s=120) for i in range(3)], sink, DeliveryPolicy(max_record_age_s=60))
    run(d)
    assert [e.reason for e in dest.entries] == ["record_too_old"] and len(sink.calls) == 1


def test_strict_mode_never_gives_up() -> None:
    sink = Sink(poison={1})
    d, dest = delivery([record(i) for i in range(3)], sink, DeliveryPolicy(stop_on_failure=True))
    for _ in range(20):
        d.run_round()
    assert not d.finished and d.done_prefix() == 0 and dest.entries == []


def test_lanes_keep_each_key_in_order_and_the_prefix_waits_for_the_slowest_lane() -> None:
    keys = ["a", "b", "c", "d"]
    records = [record(i, keys[i % 4]) for i in range(40)]
    sink = Sink(poison={13}, partial=True)  # key "b"'s lane fails at record 13
    with ThreadPoolExecutor(4) as pool:
        d, _ = delivery(records, sink, DeliveryPolicy(parallelization_factor=4), executor=pool)
        d.run_round()
        assert d.done_prefix() == 13  # other lanes finished, but the checkpoint stops before 13
        sink.poison.clear()
        run(d)
    lanes = {k: lane_of(records[i], 4) for i, k in enumerate(keys)}
    assert len(set(lanes.values())) > 1  # the keys really spread over several lanes
    for call in sink.calls:
        assert call == sorted(call)
        assert len({lanes[keys[n % 4]] for n in call}) == 1  # one call, one lane
    by_key: dict[str, list[int]] = {}
    for call in sink.calls:
        for n in call:
            by_key.setdefault(keys[n % 4], []).append(n)
    for ns in by_key.values():
        first_seen = list(dict.fromkeys(ns))
        assert first_seen == sorted(first_seen)  # each key's records in order
    assert d.done_prefix() == 40


def test_filtered_records_are_done_without_a_call() -> None:
    sink = Sink()
    # Lambda's documented filter for TTL deletions, unchanged.
    ttl_only = FilterCriteria.parse(
        '{"userIdentity": {"type": ["Service"], "principalId": ["dynamodb.amazonaws.com"]}}'
    )
    records = [record(0), record(1, ttl=True), record(2)]
    d, _ = delivery(records, sink, DeliveryPolicy(), filters=ttl_only)
    run(d)
    assert sink.calls == [[1]] and d.done_prefix() == 3


def test_filter_view_is_what_lambda_filters_see() -> None:
    view = filter_view(record(1, ttl=True).raw, "arn:x")
    assert view["eventSourceARN"] == "arn:x"
    assert view["userIdentity"] == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
