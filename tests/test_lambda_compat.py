"""Lambda-compatible handlers: the event, the context, detection, the partial batch response, Powertools."""

from __future__ import annotations

import base64
import copy
import functools
import importlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from worker.handling.calls import HandlerCalls
from worker.handling.handler import Handler, ShardContext, as_handler, load_handler
from worker.handling.lambda_compat import (
    BatchOutcome,
    ContextFactory,
    LambdaContext,
    apply_handler_style,
    is_lambda_style,
    lambda_event,
    lambda_handler,
    lambda_record,
    memory_limit_mb,
    parse_batch_response,
)
from worker.reading.records import Record

ARN = "arn:aws:dynamodb:eu-west-1:123456789012:table/orders/stream/2024-05-01T10:00:00.000"
SHARD = "shardId-00000001714557600000-abcdef01"
CTX = ShardContext(shard_id=SHARD, worker_id="w-1", stream_arn=ARN, group="orders-indexer", lease_token=3)
PT_MOD = f"{__package__}.powertools_handler" if __package__ else "powertools_handler"
BLOB = b"\x00\x01binary\xff"
BLOB64 = base64.b64encode(BLOB).decode()


def seq(i: int) -> str:
    return str(4_000_000_000_000_000_000_000_000 + i * 1000)


def wire(
    i: int,
    *,
    view: str = "NEW_AND_OLD_IMAGES",
    name: str = "MODIFY",
    new: dict[str, Any] | None = None,
    old: dict[str, Any] | None = None,
    identity: dict[str, Any] | None = None,
    created: Any = 1.714557612e9,
) -> dict[str, Any]:
    """A record as GetRecords returns it (orjson-decoded wire JSON)."""
    keys = {"pk": {"S": f"order-{i}"}}
    new_image = new if new is not None else {**keys, "total": {"N": "12.50"}, "blob": {"B": BLOB64},
                                             "tags": {"SS": ["a", "b"]}, "fail": {"BOOL": False}}
    old_image = old if old is not None else {**keys, "total": {"N": "10"}, "blob": {"B": BLOB64}}
    ddb: dict[str, Any] = {"ApproximateCreationDateTime": created, "Keys": keys}
    if view in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES") and name != "REMOVE":
        ddb["NewImage"] = new_image
    if view in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES") and name != "INSERT":
        ddb["OldImage"] = old_image
    ddb.update({"SequenceNumber": seq(i), "SizeBytes": 87, "StreamViewType": view})
    out = {
        "awsRegion": "eu-west-1",
        "dynamodb": ddb,
        "eventID": f"{i:032x}",
        "eventName": name,
        "eventSource": "aws:dynamodb",
        "eventVersion": "1.1",
    }
    if identity is not None:
        out["userIdentity"] = identity
    return out


def rec(i: int, **kwargs: Any) -> Record:
    return Record.from_wire(wire(i, **kwargs), SHARD)


def batch(n: int, failing: tuple[int, ...] = ()) -> list[Record]:
    return [
        rec(i, name="INSERT", new={"pk": {"S": f"order-{i}"}, "fail": {"BOOL": i in failing}, "n": {"N": str(i)}})
        for i in range(n)
    ]


# ----------------------------------------------------------------------------
# The event.
# ----------------------------------------------------------------------------


def test_record_is_exactly_lambdas_shape() -> None:
    r = rec(1)
    assert lambda_record(r.raw, ARN) == {
        "eventID": f"{1:032x}",
        "eventName": "MODIFY",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "eu-west-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1714557612,
            "Keys": {"pk": {"S": "order-1"}},
            "NewImage": {"pk": {"S": "order-1"}, "total": {"N": "12.50"}, "blob": {"B": BLOB64},
                         "tags": {"SS": ["a", "b"]}, "fail": {"BOOL": False}},
            "OldImage": {"pk": {"S": "order-1"}, "total": {"N": "10"}, "blob": {"B": BLOB64}},
            "SequenceNumber": seq(1),
            "SizeBytes": 87,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        },
        "eventSourceARN": ARN,
    }
    out = lambda_record(r.raw, ARN)
    assert list(out) == ["eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb",
                         "eventSourceARN"]
    assert type(out["dynamodb"]["ApproximateCreationDateTime"]) is int
    assert "userIdentity" not in out
    json.dumps(out)  # plain JSON, as Lambda delivers it


def test_event_wraps_records_in_order() -> None:
    records = [rec(i) for i in range(3)]
    event = lambda_event(records, ARN)
    assert list(event) == ["Records"]
    assert [r["dynamodb"]["SequenceNumber"] for r in event["Records"]] == [seq(0), seq(1), seq(2)]
    assert all(r["eventSourceARN"] == ARN for r in event["Records"])
    assert lambda_event([], ARN) == {"Records": []}


@pytest.mark.parametrize(
    ("view", "images"),
    [
        ("KEYS_ONLY", set()),
        ("NEW_IMAGE", {"NewImage"}),
        ("OLD_IMAGE", {"OldImage"}),
        ("NEW_AND_OLD_IMAGES", {"NewImage", "OldImage"}),
    ],
)
def test_view_types_carry_only_their_images(view: str, images: set[str]) -> None:
    ddb = lambda_record(rec(5, view=view).raw, ARN)["dynamodb"]
    assert ddb["StreamViewType"] == view
    assert {"NewImage", "OldImage"} & set(ddb) == images
    assert ddb["Keys"] == {"pk": {"S": "order-5"}}


def test_ttl_remove_has_lambdas_lowercase_user_identity() -> None:
    r = rec(2, name="REMOVE", view="OLD_IMAGE", identity={"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"})
    assert r.is_ttl_delete
    out = lambda_record(r.raw, ARN)
    assert out["userIdentity"] == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert out["eventName"] == "REMOVE"
    assert "NewImage" not in out["dynamodb"] and out["dynamodb"]["OldImage"]["blob"] == {"B": BLOB64}
    assert r.raw["userIdentity"] == {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"}  # untouched


def test_creation_time_is_a_number_of_epoch_seconds() -> None:
    assert lambda_record(wire(1, created=1714557612), ARN)["dynamodb"]["ApproximateCreationDateTime"] == 1714557612
    fractional = lambda_record(wire(1, created=1714557612.25), ARN)["dynamodb"]["ApproximateCreationDateTime"]
    assert fractional == 1714557612.25
    parsed = wire(1, created=datetime(2024, 5, 1, 10, 0, 12, tzinfo=UTC))  # botocore's parsed form
    assert lambda_record(parsed, ARN)["dynamodb"]["ApproximateCreationDateTime"] == 1714557612


def test_botocore_parsed_binary_goes_back_to_base64() -> None:
    raw = wire(1, new={"pk": {"S": "x"}, "b": {"B": BLOB}, "bs": {"BS": [BLOB]}})
    image = lambda_record(raw, ARN)["dynamodb"]["NewImage"]
    assert image == {"pk": {"S": "x"}, "b": {"B": BLOB64}, "bs": {"BS": [BLOB64]}}


def test_defaults_when_the_wire_record_lacks_fields() -> None:
    raw = wire(1)
    for key in ("awsRegion", "eventSource", "eventVersion"):
        del raw[key]
    out = lambda_record(raw, ARN)
    assert (out["awsRegion"], out["eventSource"], out["eventVersion"]) == ("eu-west-1", "aws:dynamodb", "1.1")


def test_a_handler_cannot_change_the_raw_record() -> None:
    r = rec(1, identity={"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"})
    before = copy.deepcopy(r.raw)
    event = lambda_event([r], ARN)
    record = event["Records"][0]
    record["dynamodb"]["NewImage"]["total"]["N"] = "0"
    record["dynamodb"]["NewImage"].pop("blob")
    record["dynamodb"]["Keys"]["pk"] = {"S": "other"}
    record["dynamodb"]["OldImage"]["blob"]["B"] = ""
    record["dynamodb"]["SequenceNumber"] = "1"
    record["userIdentity"]["type"] = "User"
    record["eventName"] = "INSERT"
    assert r.raw == before
    assert lambda_event([r], ARN)["Records"][0]["dynamodb"]["NewImage"]["total"] == {"N": "12.50"}  # a retry


# ----------------------------------------------------------------------------
# The context.
# ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_context_attributes() -> None:
    factory = ContextFactory("orders-indexer", ARN, "eu-west-1", 300, memory_mb=2048)
    c = factory.new()
    assert isinstance(c, LambdaContext)
    assert c.function_name == "orders-indexer"
    assert c.function_version == "$LATEST"
    assert c.invoked_function_arn == "arn:aws:lambda:eu-west-1:123456789012:function:orders-indexer"
    assert c.memory_limit_in_mb == 2048 and isinstance(c.memory_limit_in_mb, int)
    assert uuid.UUID(c.aws_request_id).version == 4
    assert c.log_group_name == "/aws/lambda/orders-indexer"
    assert c.log_stream_name.startswith(datetime.now(UTC).strftime("%Y/%m/%d") + "/[$LATEST]")
    assert c.identity is None and c.client_context is None and c.tenant_id is None
    assert 299_000 < c.get_remaining_time_in_millis() <= 300_000
    d = factory.new()
    assert d.aws_request_id != c.aws_request_id  # one per invocation
    assert d.log_stream_name == c.log_stream_name  # one per "execution environment"


def test_context_names_and_arn_partition() -> None:
    gov = "arn:aws-us-gov:dynamodb:us-gov-west-1:210987654321:table/t/stream/label"
    c = ContextFactory("g", gov, None, 60, function_name="my-func", memory_mb=128).new()
    assert c.invoked_function_arn == "arn:aws-us-gov:lambda:us-gov-west-1:210987654321:function:my-func"
    assert c.log_group_name == "/aws/lambda/my-func"
    assert ContextFactory("g", ARN, "", 1).new().memory_limit_in_mb > 0  # read from this machine


def test_remaining_time_counts_down_from_each_invocations_start() -> None:
    clock = FakeClock()
    factory = ContextFactory("g", ARN, "eu-west-1", 30, memory_mb=128, clock=clock)
    c = factory.new()
    assert c.get_remaining_time_in_millis() == 30_000
    clock.now += 12.5
    assert c.get_remaining_time_in_millis() == 17_500
    assert factory.new().get_remaining_time_in_millis() == 30_000  # a new invocation, a new budget
    clock.now += 60
    assert c.get_remaining_time_in_millis() == 0  # never negative


def test_remaining_time_decreases_on_the_real_clock() -> None:
    c = ContextFactory("g", ARN, "eu-west-1", 5, memory_mb=128).new()
    first = c.get_remaining_time_in_millis()
    time.sleep(0.02)
    assert c.get_remaining_time_in_millis() < first


def test_context_log_writes_a_line(capsys: pytest.CaptureFixture[str]) -> None:
    ContextFactory("g", ARN, "eu-west-1", 5, memory_mb=1).new().log("hello")
    assert capsys.readouterr().out == "hello\n"


GIB = 1024**3


@pytest.mark.parametrize(
    ("v2", "v1", "expected_mb"),
    [
        ("536870912\n", None, 512),  # cgroup v2 limit
        ("max\n", None, 8192),  # v2 without a limit: total RAM
        (None, "1073741824\n", 1024),  # cgroup v1 limit
        (None, "9223372036854771712\n", 8192),  # v1 "no limit": above RAM
        (None, None, 8192),  # no cgroup files: total RAM
    ],
)
def test_memory_limit(tmp_path: Path, v2: str | None, v1: str | None, expected_mb: int) -> None:
    files = []
    for name, text in (("memory.max", v2), ("memory.limit_in_bytes", v1)):
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        files.append(str(path))
    assert memory_limit_mb(files, total_bytes=8 * GIB) == expected_mb
    assert memory_limit_mb() > 0


# ----------------------------------------------------------------------------
# Detection.
# ----------------------------------------------------------------------------


def handler_event_context(event: Any, context: Any) -> Any:
    return None


def handler_event_ctx(event: Any, ctx: Any) -> Any:
    return None


def handler_event_underscore(event: Any, _: Any) -> Any:
    return None


def native(records: Any, ctx: Any) -> Any:
    return None


def native_event_first_only(event: Any) -> Any:
    return None


def with_wraps(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


def without_wraps(fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return wrapper


class NativeClass:
    def handle(self, records: Any, ctx: Any) -> None:
        return None


class CallableLambda:
    def __call__(self, event: Any, context: Any) -> None:
        return None


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        (handler_event_context, True),
        (handler_event_ctx, True),
        (handler_event_underscore, True),
        (lambda event, context: None, True),
        (with_wraps(handler_event_context), True),
        (with_wraps(with_wraps(handler_event_context)), True),
        (without_wraps(handler_event_context), False),  # signature hidden: use --handler-style lambda
        (functools.partial(handler_event_context), True),
        (native, False),
        (lambda records, ctx: None, False),
        (native_event_first_only, False),
        (with_wraps(native), False),
        (NativeClass, False),
        (NativeClass(), False),
        (NativeClass().handle, False),
        (CallableLambda(), True),
        (len, False),
        (object(), False),
    ],
)
def test_is_lambda_style(obj: Any, expected: bool) -> None:
    assert is_lambda_style(obj) is expected


def test_detection_through_a_loaded_handler() -> None:
    assert is_lambda_style(as_handler(handler_event_context))
    assert not is_lambda_style(as_handler(native))
    assert not is_lambda_style(as_handler(NativeClass))
    assert is_lambda_style(load_handler(f"{PT_MOD}:lambda_handler"))  # Powertools' decorators use wraps


# ----------------------------------------------------------------------------
# Calling.
# ----------------------------------------------------------------------------


def factory() -> ContextFactory:
    return ContextFactory(CTX.group, ARN, "eu-west-1", 300, memory_mb=512)


def test_lambda_handler_passes_event_and_context_and_returns_the_response() -> None:
    seen: list[tuple[Any, Any]] = []

    def fn(event: Any, context: Any) -> Any:
        seen.append((event, context))
        return {"batchItemFailures": [{"itemIdentifier": event["Records"][1]["dynamodb"]["SequenceNumber"]}]}

    handle = lambda_handler(as_handler(fn), stream_arn=ARN, contexts=factory())
    records = batch(3)
    response = handle(records, CTX)
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(1)}]}
    assert parse_batch_response(response, records) == BatchOutcome(1, parse_batch_response(response, records).reason)
    event, context = seen[0]
    assert event == lambda_event(records, ARN)
    assert isinstance(context, LambdaContext) and context.function_name == CTX.group
    handle(records, CTX)
    assert seen[1][1].aws_request_id != context.aws_request_id


def test_lambda_handler_uses_the_shard_contexts_arn_when_none_given() -> None:
    events: list[Any] = []
    handle = lambda_handler(as_handler(lambda event, context: events.append(event)), stream_arn="", contexts=factory())
    handle(batch(1), CTX)
    assert events[0]["Records"][0]["eventSourceARN"] == CTX.stream_arn


def test_lambda_handler_exceptions_propagate() -> None:
    def fn(event: Any, context: Any) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        lambda_handler(as_handler(fn), stream_arn=ARN, contexts=factory())(batch(1), CTX)


@pytest.mark.parametrize(("serialize", "expected_peak"), [(True, 1), (False, 4)])
def test_one_invocation_at_a_time_unless_told_otherwise(serialize: bool, expected_peak: int) -> None:
    lock = threading.Lock()
    running = 0
    peak = 0
    barrier = threading.Barrier(4)

    def fn(event: Any, context: Any) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    handle = lambda_handler(as_handler(fn), stream_arn=ARN, contexts=factory(), serialize=serialize)

    def call() -> None:
        barrier.wait()
        handle(batch(1), CTX)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == expected_peak


def test_waiting_for_its_turn_does_not_count_toward_the_handler_timeout() -> None:
    """Shard B's invocation waits while shard A's runs: B's call is not "running" (so not hung) until
    it gets its turn, and its duration counts from then."""
    release = threading.Event()
    entered = threading.Event()

    returned: list[float] = []

    def fn(event: Any, context: Any) -> None:
        entered.set()
        release.wait(10)
        returned.append(time.monotonic())

    handle = lambda_handler(as_handler(fn), stream_arn=ARN, contexts=factory())
    calls_a, calls_b = HandlerCalls(), HandlerCalls()
    started: dict[str, float] = {}

    def run(name: str, calls: HandlerCalls) -> None:
        with calls.running() as call:
            handle(batch(1), CTX)
        started[name] = call.started

    a = threading.Thread(target=run, args=("a", calls_a))
    a.start()
    assert entered.wait(5)
    entered.clear()
    b = threading.Thread(target=run, args=("b", calls_b))
    b.start()
    time.sleep(0.3)
    assert calls_a.oldest_start() is not None  # A runs
    assert calls_b.oldest_start() is None  # B waits for the lock: not running yet
    release.set()
    a.join()
    b.join()
    assert started["b"] >= returned[0]  # B's clock started once A's invocation was over


class LambdaWithHooks:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, event: Any, context: Any) -> str:
        return "called"

    def on_lease_gained(self, ctx: ShardContext) -> None:
        self.calls.append("gained")

    def close(self) -> None:
        self.calls.append("close")


def test_apply_handler_style() -> None:
    lam, nat = as_handler(handler_event_context), as_handler(native)
    kw: dict[str, Any] = {"stream_arn": ARN, "contexts": factory()}
    assert apply_handler_style(nat, "auto", **kw) is nat
    assert apply_handler_style(lam, "native", **kw) is lam
    adapted = apply_handler_style(lam, "auto", **kw)
    assert adapted is not lam and isinstance(adapted, Handler) and adapted.name == lam.name
    forced = apply_handler_style(as_handler(without_wraps(handler_event_context)), "lambda", **kw)
    assert forced.handle(batch(1), CTX) is None
    with pytest.raises(ValueError, match="handler style"):
        apply_handler_style(lam, "bogus", **kw)

    obj = LambdaWithHooks()
    wrapped = apply_handler_style(as_handler(obj), "auto", **kw)
    assert wrapped.handle(batch(1), CTX) == "called"
    wrapped.on_lease_gained(CTX)
    wrapped.close()
    wrapped.close()
    assert obj.calls == ["gained", "close"]


# ----------------------------------------------------------------------------
# The partial batch response.
# ----------------------------------------------------------------------------

RECORDS = batch(10)


def fail(*identifiers: Any) -> dict[str, Any]:
    return {"batchItemFailures": [{"itemIdentifier": i} for i in identifiers]}


@pytest.mark.parametrize(
    "response",
    [None, "ok", 0, 1, True, ["x"], {}, {"statusCode": 200}, {"batchItemFailures": None}, {"batchItemFailures": []}],
)
def test_success_responses(response: Any) -> None:
    outcome = parse_batch_response(response, RECORDS)
    assert outcome.failed_index is None and outcome.ok and outcome.reason.startswith("success")


def test_lowest_failed_sequence_number_wins() -> None:
    assert parse_batch_response(fail(seq(3)), RECORDS).failed_index == 3
    assert parse_batch_response(fail(seq(7), seq(3), seq(9)), RECORDS).failed_index == 3
    assert parse_batch_response(fail(seq(5), seq(5)), RECORDS).failed_index == 5
    assert parse_batch_response(fail(seq(0)), RECORDS).failed_index == 0
    assert parse_batch_response(fail(int(seq(4))), RECORDS).failed_index == 4  # an int identifier
    outcome = parse_batch_response(fail(seq(9)), RECORDS)
    assert not outcome.ok and seq(9) in outcome.reason


def test_sequence_numbers_compare_as_integers() -> None:
    # "99..." sorts after "100..." as a string; as numbers it is lower.
    records = [Record.from_wire({**wire(0), "dynamodb": {**wire(0)["dynamodb"], "SequenceNumber": s}}, SHARD)
               for s in ("99000000000000000000", "100000000000000000000", "100000000000000000001")]
    assert parse_batch_response(fail("100000000000000000001", "99000000000000000000"), records).failed_index == 0
    assert parse_batch_response(fail("100000000000000000001", "100000000000000000000"), records).failed_index == 1


@pytest.mark.parametrize(
    "response",
    [
        fail(""),  # empty identifier
        fail(None),  # null identifier
        {"batchItemFailures": [{"itemidentifier": seq(3)}]},  # wrong key name
        {"batchItemFailures": [{}]},
        fail(seq(3), ""),  # one bad entry fails the whole batch
        fail("12345"),  # not a sequence number of this batch
        fail(seq(3), seq(10)),  # one unknown identifier among good ones
        fail("not-a-number"),
        fail(-1),
        fail(True),
        {"batchItemFailures": [seq(3)]},  # an entry that is not an object
        {"batchItemFailures": "oops"},  # not a list
        {"batchItemFailures": {"itemIdentifier": seq(3)}},
    ],
)
def test_whole_batch_failures(response: Any) -> None:
    outcome = parse_batch_response(response, RECORDS)
    assert outcome.failed_index == 0
    assert outcome.reason.startswith("whole batch failed")


def test_outcome_is_frozen() -> None:
    outcome = BatchOutcome(None, "x")
    with pytest.raises(AttributeError):
        outcome.failed_index = 1  # type: ignore[misc]


# ----------------------------------------------------------------------------
# An unmodified Powertools handler.
# ----------------------------------------------------------------------------


@pytest.fixture
def powertools(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "orders-indexer")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.delenv("POWERTOOLS_TEST_FAIL_KEYS", raising=False)
    module = importlib.import_module(PT_MOD)
    yield module


def test_powertools_handler_reports_failed_records(powertools: Any) -> None:
    handler = load_handler(f"{PT_MOD}:lambda_handler")
    handle = apply_handler_style(handler, "auto", stream_arn=ARN, contexts=factory()).handle
    records = batch(10, failing=(3, 7))
    response = handle(records, CTX)
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(3)}, {"itemIdentifier": seq(7)}]}
    outcome = parse_batch_response(response, records)
    assert outcome.failed_index == 3
    # Logger's inject_lambda_context copied the context's attributes into every later log line.
    keys = powertools.logger.get_current_keys()
    assert keys["function_name"] == CTX.group
    assert keys["function_memory_size"] == 512
    assert keys["function_arn"] == "arn:aws:lambda:eu-west-1:123456789012:function:orders-indexer"
    assert uuid.UUID(keys["function_request_id"]).version == 4


def test_powertools_handler_fails_by_key_from_the_environment(
    powertools: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_TEST_FAIL_KEYS", "order-5,order-8")
    handle = lambda_handler(load_handler(f"{PT_MOD}:lambda_handler"), stream_arn=ARN, contexts=factory())
    records = batch(10)
    response = handle(records, CTX)
    assert response == {"batchItemFailures": [{"itemIdentifier": seq(5)}, {"itemIdentifier": seq(8)}]}
    assert parse_batch_response(response, records).failed_index == 5
    monkeypatch.setenv("POWERTOOLS_TEST_FAIL_KEYS", "")
    assert parse_batch_response(handle(records, CTX), records).ok


def test_powertools_handler_whole_batch_failure_raises(powertools: Any) -> None:
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    handle = lambda_handler(load_handler(f"{PT_MOD}:lambda_handler"), stream_arn=ARN, contexts=factory())
    with pytest.raises(BatchProcessingError):  # Powertools raises when every record failed
        handle(batch(3, failing=(0, 1, 2)), CTX)


def test_powertools_data_classes_parse_the_event(powertools: Any) -> None:
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import (
        DynamoDBRecordEventName,
        DynamoDBStreamEvent,
        StreamViewType,
    )

    ttl = rec(2, name="REMOVE", view="OLD_IMAGE", identity={"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"})
    event = DynamoDBStreamEvent(lambda_event([rec(1), ttl], ARN))
    first, second = list(event.records)
    assert first.event_source_arn == ARN
    assert first.event_source == "aws:dynamodb"
    assert first.aws_region == "eu-west-1"
    assert first.event_name == DynamoDBRecordEventName.MODIFY
    assert first.dynamodb is not None
    assert first.dynamodb.sequence_number == seq(1)
    assert first.dynamodb.approximate_creation_date_time == 1714557612
    assert first.dynamodb.stream_view_type == StreamViewType.NEW_AND_OLD_IMAGES
    assert first.dynamodb.keys == {"pk": "order-1"}
    image = first.dynamodb.new_image
    assert image["pk"] == "order-1" and str(image["total"]) == "12.50" and image["tags"] == {"a", "b"}
    assert image["blob"] == BLOB64  # Powertools leaves Lambda's base64 text as it is
    assert first.dynamodb.old_image["total"] == 10
    assert second.user_identity == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    assert second.dynamodb is not None and second.dynamodb.new_image == {}
