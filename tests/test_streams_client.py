"""worker.reading.streams: the fast GetRecords path and error translation through a real boto3 client.

A tiny stdlib HTTP server on 127.0.0.1 answers canned AWS JSON 1.0 responses; each test installs
handlers per operation (``X-Amz-Target``) and can read the requests it got.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore
import orjson
import pytest
from boto3.dynamodb.types import Binary, TypeDeserializer
from botocore.config import Config
from botocore.stub import Stubber

from leaser.errors import ConfigError, FatalError, RetryableError
from worker.errors import (
    AccessDenied,
    ExpiredIterator,
    InvalidRequest,
    ShardNotFound,
    StreamDisabled,
    StreamNotFound,
    StreamsError,
    StreamServerError,
    StreamThrottled,
    TrimmedData,
)
from worker.local import LocalStreamsServer
from worker.reading.records import Record
from worker.reading.streams import GetRecordsPage, Shard, StreamArn, StreamsClient, parse_stream_arn

ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2024-01-01T00:00:00.000"
SHARD = "shardId-00000001714566896000-1a2b3c4d"

Reply = tuple[int, bytes]
Handler = Callable[[dict[str, Any]], Reply]


class Stub:
    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        stub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                target = self.headers.get("X-Amz-Target", "")
                op = target.rsplit(".", 1)[-1]
                with stub.lock:
                    stub.requests.append((op, payload))
                handler = stub.routes.get(op)
                status, body = handler(payload) if handler else error(400, "UnknownOperationException", op)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("x-amzn-RequestId", "req-1")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def ops(self, op: str) -> list[dict[str, Any]]:
        return [p for o, p in self.requests if o == op]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def ok(doc: Any) -> Reply:
    return 200, orjson.dumps(doc)


def error(status: int, code: str, message: str = "boom") -> Reply:
    return status, orjson.dumps({"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message})


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB_STREAMS", "AWS_ENDPOINT_URL_DYNAMODB"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def client(stub: Stub) -> Iterator[StreamsClient]:
    c = StreamsClient(region_name="us-east-1", endpoint_url=stub.url, max_attempts=1)
    try:
        yield c
    finally:
        c.close()


# --- a realistic page with every type ----------------------------------------------------------------


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def image(i: int, version: int) -> dict[str, Any]:
    return {
        "pk": {"S": f"ORDER#{i:06d}"},
        "sk": {"N": str(version)},
        "total": {"N": f"{i * 3}.{version:02d}"},
        "big": {"N": "12345678901234567890123456789012345678"},
        "tiny": {"N": "1E-130"},
        "flag": {"BOOL": i % 2 == 0},
        "none": {"NULL": True},
        "blob": {"B": b64(bytes([i % 256, version]) * 8)},
        "tags": {"SS": ["a", "b", f"t{i}"]},
        "nums": {"NS": ["1", "2.5", "-3E+10"]},
        "bins": {"BS": [b64(b"x"), b64(b"\x00\xff")]},
        "customer": {
            "M": {
                "name": {"S": "Ada Lövelace ✓"},
                "address": {"M": {"city": {"S": "London"}, "geo": {"L": [{"N": "51.52"}, {"N": "-0.15"}]}}},
            }
        },
        "items": {"L": [{"M": {"sku": {"S": f"SKU{j}"}, "qty": {"N": str(j)}}} for j in range(3)]},
        "emptyList": {"L": []},
        "emptyMap": {"M": {}},
    }


def page_body(n: int, next_iterator: str | None = "it-next") -> bytes:
    records = []
    for i in range(n):
        event = ("INSERT", "MODIFY", "REMOVE")[i % 3]
        ddb: dict[str, Any] = {
            "ApproximateCreationDateTime": 1714566896.0 + i,
            "Keys": {"pk": {"S": f"ORDER#{i:06d}"}, "sk": {"N": "2"}},
            "SequenceNumber": str(10**20 + i * 7),
            "SizeBytes": 200 + i,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        }
        if event != "REMOVE":
            ddb["NewImage"] = image(i, 2)
        if event != "INSERT":
            ddb["OldImage"] = image(i, 1)
        rec: dict[str, Any] = {
            "eventID": f"e{i}",
            "eventName": event,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "us-east-1",
            "dynamodb": ddb,
        }
        if event == "REMOVE" and i % 2:
            rec["userIdentity"] = {"PrincipalId": "dynamodb.amazonaws.com", "Type": "Service"}
        records.append(rec)
    doc: dict[str, Any] = {"Records": records}
    if next_iterator is not None:
        doc["NextShardIterator"] = next_iterator
    return orjson.dumps(doc)


def plain(value: Any) -> Any:
    """boto3's values with Binary turned into bytes (the one documented difference)."""
    if isinstance(value, Binary):
        return bytes(value.value)
    if isinstance(value, set):
        return {plain(v) for v in value}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return value


def exact(value: Any) -> Any:
    """Decimals as strings so Decimal('1.0') != Decimal('1')."""
    if isinstance(value, Decimal):
        return ("N", str(value))
    if isinstance(value, set):
        return frozenset(exact(v) for v in value)
    if isinstance(value, list):
        return [exact(v) for v in value]
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    return value


# --- the fast path -----------------------------------------------------------------------------------


def test_fast_path_equals_plain_boto3(stub: Stub, client: StreamsClient) -> None:
    body = page_body(30)
    stub.routes["GetRecords"] = lambda p: (200, body)

    page = client.get_records("it-1", 1000, shard_id=SHARD)
    assert isinstance(page, GetRecordsPage)
    assert page.next_iterator == "it-next" and not page.shard_end
    assert stub.ops("GetRecords") == [{"ShardIterator": "it-1", "Limit": 1000}]

    # The same body through an ordinary boto3 client (generic parser) and TypeDeserializer.
    normal = boto3.client("dynamodbstreams", endpoint_url=stub.url, config=Config(retries={"max_attempts": 1}))
    parsed = normal.get_records(ShardIterator="it-1")
    normal.close()
    deser = TypeDeserializer()
    wire = orjson.loads(body)["Records"]
    assert len(page.records) == len(parsed["Records"]) == 30
    for rec, ref, raw in zip(page.records, parsed["Records"], wire, strict=True):
        d = ref["dynamodb"]
        for ours, part in ((rec.keys, "Keys"), (rec.new_image, "NewImage"), (rec.old_image, "OldImage")):
            if part in d:
                want = plain({k: deser.deserialize(v) for k, v in d[part].items()})
                assert exact(ours) == exact(want)
            else:
                assert ours is None
        assert rec.event_id == ref["eventID"]
        assert rec.event_name == ref["eventName"]
        assert rec.sequence_number == d["SequenceNumber"]
        assert rec.size_bytes == d["SizeBytes"]
        assert rec.stream_view_type == d["StreamViewType"]
        assert rec.approximate_creation_time == d["ApproximateCreationDateTime"]  # aware, any tz
        assert rec.approximate_creation_time.tzinfo is not None
        assert rec.user_identity == ref.get("userIdentity")
        assert rec.shard_id == SHARD
        assert rec.raw == raw


def test_shard_end_and_empty_page(stub: Stub, client: StreamsClient) -> None:
    stub.routes["GetRecords"] = lambda p: (200, page_body(0, next_iterator=None))
    page = client.get_records("it-1", shard_id=SHARD)
    assert page.records == [] and page.next_iterator is None and page.shard_end
    stub.routes["GetRecords"] = lambda p: (200, page_body(0, next_iterator="it-2"))
    page = client.get_records("it-1", shard_id=SHARD)
    assert page.records == [] and page.next_iterator == "it-2"


def test_fast_path_is_per_client(stub: Stub, client: StreamsClient) -> None:
    stub.routes["GetRecords"] = lambda p: (200, page_body(2))
    other = boto3.client("dynamodbstreams", endpoint_url=stub.url)
    assert len(other.get_records(ShardIterator="x")["Records"]) == 2
    other.close()


def test_retry_still_works_after_server_error(stub: Stub) -> None:
    replies = [error(500, "InternalServerError"), (200, page_body(3))]
    stub.routes["GetRecords"] = lambda p: replies.pop(0)
    with StreamsClient(region_name="us-east-1", endpoint_url=stub.url, max_attempts=3) as c:
        page = c.get_records("it-1", shard_id=SHARD)
    assert len(page.records) == 3
    assert len(stub.ops("GetRecords")) == 2


def test_garbled_200_body_is_retryable(stub: Stub, client: StreamsClient) -> None:
    stub.routes["GetRecords"] = lambda p: (200, b'{"Records": [')
    with pytest.raises(StreamServerError):
        client.get_records("it-1", shard_id=SHARD)


def _one_record(user_identity: bytes = b"null", created: bytes = b"1714566896") -> bytes:
    return (b'{"Records":[{"eventID":"e","eventName":"INSERT","userIdentity":' + user_identity
            + b',"dynamodb":{"ApproximateCreationDateTime":' + created + b',"SequenceNumber":"1"}}]}')


@pytest.mark.parametrize("body", [
    _one_record(user_identity=b'{"a":' + b"[" * 1100 + b"]" * 1100 + b"}"),  # deeper than the decoder goes
    _one_record(created=b"1e300"),  # a creation time no datetime holds
    _one_record(created=b"-1e12"),
    # 39 significant digits (DynamoDB keeps 38):
    _one_record().replace(b'"SequenceNumber"', b'"Keys":{"n":{"N":"' + b"1" * 39 + b'"}},"SequenceNumber"'),
], ids=["too-deep", "time-overflow", "time-before-year-1", "number-too-precise"])
def test_200_body_of_a_malformed_page_is_retryable(stub: Stub, client: StreamsClient, body: bytes) -> None:
    """Every body that is not a page is a retryable StreamServerError (the consumer backs off and reads the same
    iterator again), not an arbitrary exception out of the decoder (RecursionError, OverflowError, ValueError,
    decimal.Inexact)."""
    stub.routes["GetRecords"] = lambda p: (200, body)
    with pytest.raises(StreamServerError, match="not a page"):
        client.get_records("it-1", shard_id=SHARD)


# --- the fast path's guard: a page it cannot read is an error, never a shard end ---------------------

FAST_PATH_EVENT = "before-parse.dynamodb-streams.GetRecords"


def lose_stash(client: StreamsClient) -> None:
    """Simulate a botocore that no longer merges ``customized_response_dict`` into the parsed result.

    A before-parse handler registered after the fast path's empties the dict; the fast path has
    already swapped the body for ``b"{}"``, so botocore's parse is ``{}`` plus ResponseMetadata.
    """

    def drop(customized_response_dict: dict[str, Any], **_: Any) -> None:
        customized_response_dict.clear()

    client.boto_client.meta.events.register(FAST_PATH_EVENT, drop, unique_id="test-lose-stash")


def break_fast_path(client: StreamsClient) -> None:
    """Lose the stash and let one GetRecords call notice it (the client then parses through botocore)."""
    lose_stash(client)
    with pytest.raises(StreamServerError):
        client.get_records("it-broken", shard_id=SHARD)


def fields(record: Record) -> tuple[Any, ...]:
    """Everything of a record but its wire JSON (the page's bytes, or botocore's parse of it on the slow path)."""
    return tuple(
        exact(getattr(record, f.name)) for f in dataclasses.fields(record) if f.name != "wire"
    )


def test_lost_stash_is_an_error_then_botocore_parses(
    stub: Stub, client: StreamsClient, caplog: pytest.LogCaptureFixture
) -> None:
    body = page_body(5, next_iterator="it-next")
    stub.routes["GetRecords"] = lambda p: (200, body)
    fast = client.get_records("it-0", shard_id=SHARD)
    assert len(fast.records) == 5
    lose_stash(client)
    with caplog.at_level(logging.INFO, logger="shardlease"):
        with pytest.raises(StreamServerError) as info:  # not an empty page with next_iterator None
            client.get_records("it-1", shard_id=SHARD)
        assert info.value.operation == "GetRecords"
        # The same iterator again: now parsed by botocore's own parser, same page.
        again = client.get_records("it-1", shard_id=SHARD)
        later = client.get_records("it-2", shard_id=SHARD)
    assert not client.fast_path
    assert again.next_iterator == "it-next" and not again.shard_end
    assert [fields(r) for r in again.records] == [fields(r) for r in fast.records]
    assert [fields(r) for r in later.records] == [fields(r) for r in fast.records]
    assert [p["ShardIterator"] for p in stub.ops("GetRecords")] == ["it-0", "it-1", "it-1", "it-2"]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # once per client, not per call
    message = errors[0].getMessage()
    assert botocore.__version__ in message and "_ShardleaseRawBody" in message
    # The before-parse handler is unregistered: the boto3 client parses GetRecords normally again.
    assert len(client.boto_client.get_records(ShardIterator="x")["Records"]) == 5


def test_stash_lost_while_botocore_parse_has_records(stub: Stub, client: StreamsClient) -> None:
    """Even if botocore's parse of the swapped-in ``{}`` grew a ``Records: []`` default, a stash that
    went missing is an error, not the last page of the shard."""

    def add_default(parsed: dict[str, Any], **_: Any) -> None:
        parsed.setdefault("Records", [])

    lose_stash(client)
    events = client.boto_client.meta.events
    events.register("after-call.dynamodb-streams.GetRecords", add_default, unique_id="test-default")
    stub.routes["GetRecords"] = lambda p: (200, page_body(3, next_iterator="it-next"))
    with pytest.raises(StreamServerError):
        client.get_records("it-1", shard_id=SHARD)
    page = client.get_records("it-1", shard_id=SHARD)
    assert len(page.records) == 3 and page.next_iterator == "it-next"


def test_handler_not_firing_falls_back_quietly(
    stub: Stub, client: StreamsClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An event botocore no longer emits (renamed): botocore parses the body itself; one WARNING."""
    client.boto_client.meta.events.unregister(FAST_PATH_EVENT, unique_id="shardlease-fast-getrecords")
    stub.routes["GetRecords"] = lambda p: (200, page_body(4, next_iterator="it-next"))
    with caplog.at_level(logging.INFO, logger="shardlease"):
        pages = [client.get_records(f"it-{i}", shard_id=SHARD) for i in range(3)]
    assert all(len(p.records) == 4 and p.next_iterator == "it-next" for p in pages)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert botocore.__version__ in warnings[0].getMessage()


BAD_BODIES = [
    b"{}",
    b'{"NextShardIterator": "it-2"}',
    b'{"Records": null}',
    b'{"Records": {}}',
    b'{"Records": "x"}',
    b"[]",
    b"null",
    b'"Records"',
    b"1",
]


@pytest.mark.parametrize("path", ["fast", "botocore"])
@pytest.mark.parametrize("body", BAD_BODIES, ids=[b.decode() for b in BAD_BODIES])
def test_200_body_without_records_is_an_error(stub: Stub, client: StreamsClient, body: bytes, path: str) -> None:
    if path == "botocore" and body == b'{"Records": {}}':
        pytest.skip("botocore's own parser turns this into Records: [] (a plain boto3 client reads it so too)")
    stub.routes["GetRecords"] = lambda p: (200, page_body(1))
    if path == "botocore":
        break_fast_path(client)
    stub.routes["GetRecords"] = lambda p: (200, body)
    with pytest.raises(StreamServerError) as info:
        client.get_records("it-1", shard_id=SHARD)
    assert info.value.operation == "GetRecords"
    assert isinstance(info.value, RetryableError)


@pytest.mark.parametrize("path", ["fast", "botocore"])
def test_genuine_shard_end(stub: Stub, client: StreamsClient, path: str) -> None:
    stub.routes["GetRecords"] = lambda p: (200, page_body(1))
    if path == "botocore":
        break_fast_path(client)
    stub.routes["GetRecords"] = lambda p: (200, page_body(2, next_iterator=None))
    last = client.get_records("it-1", shard_id=SHARD)
    assert len(last.records) == 2 and last.records[1].event_id == "e1"
    assert last.next_iterator is None and last.shard_end
    stub.routes["GetRecords"] = lambda p: (200, b'{"Records":[]}')
    empty = client.get_records("it-2", shard_id=SHARD)
    assert empty.records == [] and empty.shard_end
    stub.routes["GetRecords"] = lambda p: (200, page_body(0, next_iterator="it-3"))
    more = client.get_records("it-2", shard_id=SHARD)
    assert more.records == [] and more.next_iterator == "it-3" and not more.shard_end
    assert client.fast_path == (path == "fast")  # a genuine shard end does not switch the fast path off


def test_stubber_answers(client: StreamsClient, caplog: pytest.LogCaptureFixture) -> None:
    """Answers without HTTP (botocore's Stubber) are read from the generic parse, quietly."""
    with Stubber(client.boto_client) as stubber:
        stubber.add_response("get_records", {"Records": [], "NextShardIterator": "it-2"})
        stubber.add_response("get_records", {"Records": []})
        stubber.add_response("get_records", {})
        with caplog.at_level(logging.INFO, logger="shardlease"):
            assert client.get_records("it-1", shard_id=SHARD).next_iterator == "it-2"
            assert client.get_records("it-2", shard_id=SHARD).shard_end
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        with pytest.raises(StreamServerError):  # no Records at all: never a shard end
            client.get_records("it-3", shard_id=SHARD)


def test_every_record_read_when_fast_path_breaks_mid_shard() -> None:
    """End to end on the local endpoint: read a closed shard as the consumer does (retry the same
    iterator on a retryable error, stop when there is no next iterator); the fast path breaks
    after two pages and every record is still read, in order."""
    with LocalStreamsServer(port=0, empty_page_probability=0.0, seed=7) as server:
        table = server.create_table("orders", shards=1)
        for i in range(40):
            table.put_item({"pk": f"k{i}", "n": i})
        (shard_id,) = server.model.shard_ids(table)
        server.model.rollover_shard(table, shard_id)
        with StreamsClient(region_name="us-east-1", endpoint_url=server.endpoint_url, max_attempts=1) as c:
            iterator: str | None = c.get_shard_iterator(table.stream_arn, shard_id, "TRIM_HORIZON")
            got: list[Record] = []
            pages = retries = 0
            while iterator is not None:
                if pages == 2 and retries == 0:
                    lose_stash(c)
                try:
                    page = c.get_records(iterator, 7, shard_id=shard_id)
                except RetryableError:
                    retries += 1
                    assert retries < 5
                    continue
                pages += 1
                got.extend(page.records)
                iterator = page.next_iterator
    assert [r.new_image["n"] for r in got if r.new_image] == list(range(40))
    assert len(got) == 40 and len({r.sequence_number for r in got}) == 40
    assert retries == 1


def test_limit_validated_locally(client: StreamsClient) -> None:
    with pytest.raises(InvalidRequest, match=r"1\.\.1000"):
        client.get_records("it", 1001)
    with pytest.raises(InvalidRequest):
        client.describe_stream_page(ARN, limit=101)


# --- error translation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "ExpiredIteratorException", ExpiredIterator),
        (400, "TrimmedDataAccessException", TrimmedData),
        (400, "LimitExceededException", StreamThrottled),
        (400, "ThrottlingException", StreamThrottled),
        (500, "InternalServerError", StreamServerError),
        (503, "ServiceUnavailable", StreamServerError),
        (400, "ResourceNotFoundException", ShardNotFound),
        (400, "ValidationException", InvalidRequest),
        (400, "AccessDeniedException", AccessDenied),
        (400, "UnrecognizedClientException", AccessDenied),
        (400, "SomethingNewException", InvalidRequest),
    ],
)
def test_get_records_errors(stub: Stub, client: StreamsClient, status: int, code: str, cls: type) -> None:
    stub.routes["GetRecords"] = lambda p: error(status, code, "Requested resource not found: Shard does not exist")
    with pytest.raises(cls) as info:
        client.get_records("it-1", shard_id=SHARD)
    err = info.value
    assert type(err) is cls
    assert isinstance(err, StreamsError)
    assert err.code == code and err.operation == "GetRecords"
    assert code in str(err)
    assert isinstance(err, RetryableError) != isinstance(err, FatalError)
    assert err.__cause__ is not None  # the ClientError, chained, not leaked
    assert len(stub.ops("GetRecords")) == 1  # max_attempts=1: botocore does not retry
    if isinstance(err, TrimmedData):
        assert err.shard_id == SHARD


def test_error_classes_branch() -> None:
    retryable: tuple[type, ...] = (StreamThrottled, StreamServerError, ExpiredIterator)
    for cls in retryable:
        assert issubclass(cls, RetryableError)
    fatal: tuple[type, ...] = (TrimmedData, ShardNotFound, StreamNotFound, StreamDisabled, InvalidRequest, AccessDenied)
    for cls in fatal:
        assert issubclass(cls, FatalError)
    assert issubclass(ShardNotFound, TrimmedData)


def test_error_without_json_body(stub: Stub, client: StreamsClient) -> None:
    stub.routes["GetRecords"] = lambda p: (502, b"<html>bad gateway</html>")
    with pytest.raises(StreamServerError):
        client.get_records("it-1", shard_id=SHARD)


def test_resource_not_found_stream_vs_shard(stub: Stub, client: StreamsClient) -> None:
    stub.routes["DescribeStream"] = lambda p: error(400, "ResourceNotFoundException", f"Stream: {ARN} not found")
    with pytest.raises(StreamNotFound) as info:
        client.describe_stream_page(ARN)
    assert info.value.stream_arn == ARN
    stub.routes["GetShardIterator"] = lambda p: error(400, "ResourceNotFoundException", f"Stream: {ARN} not found")
    with pytest.raises(StreamNotFound):
        client.get_shard_iterator(ARN, SHARD, "TRIM_HORIZON")
    stub.routes["GetShardIterator"] = lambda p: error(400, "ResourceNotFoundException", "Shard does not exist")
    with pytest.raises(ShardNotFound) as info2:
        client.get_shard_iterator(ARN, SHARD, "TRIM_HORIZON")
    assert info2.value.shard_id == SHARD


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with StreamsClient(region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}", max_attempts=1) as c:
        with pytest.raises(StreamServerError) as info:
            c.get_records("it", shard_id=SHARD)
        assert info.value.code is None
        with pytest.raises(StreamServerError):
            c.list_shards(ARN)


# --- shards ------------------------------------------------------------------------------------------


def shard(i: int, parent: int | None = None, closed: bool = True) -> dict[str, Any]:
    rng: dict[str, str] = {"StartingSequenceNumber": str(100 * i + 1)}
    if closed:
        rng["EndingSequenceNumber"] = str(100 * i + 99)
    s: dict[str, Any] = {"ShardId": f"shardId-{i:020d}-abcd", "SequenceNumberRange": rng}
    if parent is not None:
        s["ParentShardId"] = f"shardId-{parent:020d}-abcd"
    return s


def listing(shards: list[dict[str, Any]], page_size: int, honour_filter: bool | None) -> Handler:
    """DescribeStream over ``shards`` in pages; ``honour_filter`` None = reject ShardFilter."""

    def handle(p: dict[str, Any]) -> Reply:
        if "ShardFilter" in p:
            if honour_filter is None:
                return error(400, "ValidationException", "Unknown parameter ShardFilter")
            if honour_filter:
                parent = p["ShardFilter"]["ShardId"]
                kids = [s for s in shards if s.get("ParentShardId") == parent]
                return ok({"StreamDescription": {"StreamStatus": "ENABLED", "Shards": kids}})
        start = p.get("ExclusiveStartShardId")
        idx = 0 if start is None else next(i for i, s in enumerate(shards) if s["ShardId"] == start) + 1
        chunk = shards[idx : idx + min(page_size, p.get("Limit", 100))]
        desc: dict[str, Any] = {
            "StreamArn": ARN,
            "StreamStatus": "ENABLED",
            "StreamViewType": "NEW_AND_OLD_IMAGES",
            "TableName": "Orders",
            "Shards": chunk,
        }
        if idx + len(chunk) < len(shards):
            desc["LastEvaluatedShardId"] = chunk[-1]["ShardId"]
        return ok({"StreamDescription": desc})

    return handle


def test_list_shards_follows_last_evaluated_shard_id(stub: Stub, client: StreamsClient) -> None:
    shards = [shard(i, i - 1 if i else None, closed=i < 6) for i in range(7)]
    stub.routes["DescribeStream"] = listing(shards, page_size=3, honour_filter=True)
    got = client.list_shards(ARN)
    assert [s.shard_id for s in got] == [s["ShardId"] for s in shards]
    reqs = stub.ops("DescribeStream")
    assert [r.get("ExclusiveStartShardId") for r in reqs] == [None, shards[2]["ShardId"], shards[5]["ShardId"]]
    assert all(r["Limit"] == 100 and r["StreamArn"] == ARN for r in reqs)
    assert got[0] == Shard(shards[0]["ShardId"], None, "1", "99")
    assert got[0].is_closed and not got[6].is_closed
    assert got[6].ending_sequence_number is None
    assert got[1].parent_shard_id == shards[0]["ShardId"]

    after = client.list_shards(ARN, after_shard_id=shards[4]["ShardId"])
    assert [s.shard_id for s in after] == [shards[5]["ShardId"], shards[6]["ShardId"]]

    page = client.describe_stream_page(ARN, limit=2)
    assert page.status == "ENABLED" and page.view_type == "NEW_AND_OLD_IMAGES"
    assert page.last_evaluated_shard_id == shards[1]["ShardId"] and len(page.shards) == 2
    assert client.stream_status(ARN) == "ENABLED"


@pytest.mark.parametrize("honour", [True, False, None], ids=["filter", "ignored", "rejected"])
def test_child_shards(stub: Stub, client: StreamsClient, honour: bool | None) -> None:
    shards = [shard(0), shard(1, 0), shard(2, 0, closed=False), shard(3, 1, closed=False)]
    stub.routes["DescribeStream"] = listing(shards, page_size=2, honour_filter=honour)
    kids = client.child_shards(ARN, shards[0]["ShardId"])
    assert [k.shard_id for k in kids] == [shards[1]["ShardId"], shards[2]["ShardId"]]
    first = stub.ops("DescribeStream")[0]
    assert first["ShardFilter"] == {"Type": "CHILD_SHARDS", "ShardId": shards[0]["ShardId"]}
    n = len(stub.requests)
    assert client.child_shards(ARN, shards[2]["ShardId"]) == []
    if honour is None:  # remembered: no second attempt with the filter
        assert all("ShardFilter" not in p for _, p in stub.requests[n:])


def test_get_shard_iterator(stub: Stub, client: StreamsClient) -> None:
    stub.routes["GetShardIterator"] = lambda p: ok({"ShardIterator": "it-" + p["ShardIteratorType"]})
    assert client.get_shard_iterator(ARN, SHARD, "TRIM_HORIZON") == "it-TRIM_HORIZON"
    seq = "100000000000000000123"
    assert client.get_shard_iterator(ARN, SHARD, "AFTER_SEQUENCE_NUMBER", seq) == "it-AFTER_SEQUENCE_NUMBER"
    assert stub.ops("GetShardIterator")[-1] == {
        "StreamArn": ARN,
        "ShardId": SHARD,
        "ShardIteratorType": "AFTER_SEQUENCE_NUMBER",
        "SequenceNumber": seq,
    }
    with pytest.raises(InvalidRequest):
        client.get_shard_iterator(ARN, SHARD, "AT_TIMESTAMP")
    with pytest.raises(InvalidRequest):
        client.get_shard_iterator(ARN, SHARD, "AT_SEQUENCE_NUMBER")
    stub.routes["GetShardIterator"] = lambda p: error(400, "TrimmedDataAccessException")
    with pytest.raises(TrimmedData) as info:
        client.get_shard_iterator(ARN, SHARD, "AT_SEQUENCE_NUMBER", seq)
    assert info.value.shard_id == SHARD


# --- tables ------------------------------------------------------------------------------------------


def test_latest_stream_arn(stub: Stub, client: StreamsClient) -> None:
    tables: dict[str, dict[str, Any]] = {
        "Orders": {
            "TableName": "Orders",
            "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
            "LatestStreamArn": ARN,
        },
        "Off": {"TableName": "Off", "StreamSpecification": {"StreamEnabled": False}, "LatestStreamArn": ARN},
        "Never": {"TableName": "Never"},
    }

    def describe(p: dict[str, Any]) -> Reply:
        t = tables.get(p["TableName"])
        if t is None:
            return error(400, "ResourceNotFoundException", "Requested resource not found: Table: x not found")
        return ok({"Table": t})

    stub.routes["DescribeTable"] = describe
    assert client.latest_stream_arn("Orders") == ARN
    with pytest.raises(StreamDisabled) as info:
        client.latest_stream_arn("Off")
    assert info.value.stream_arn == ARN and info.value.table_name == "Off"
    with pytest.raises(StreamDisabled, match="has no stream") as info2:
        client.latest_stream_arn("Never")
    assert info2.value.stream_arn is None
    with pytest.raises(ConfigError, match="not found"):
        client.latest_stream_arn("Missing")


# --- ARNs --------------------------------------------------------------------------------------------


def test_parse_stream_arn_ok() -> None:
    a = parse_stream_arn(ARN)
    assert a == StreamArn("aws", "us-east-1", "123456789012", "Orders", "2024-01-01T00:00:00.000")
    assert str(a) == ARN
    assert parse_stream_arn(ARN.replace("arn:aws:", "arn:aws-cn:")).partition == "aws-cn"
    assert parse_stream_arn(ARN.replace("arn:aws:", "arn:aws-us-gov:")).partition == "aws-us-gov"
    local = "arn:aws:dynamodb:ddblocal:000000000000:table/my_table.v2/stream/2024-05-01T12:34:56.123456"
    assert parse_stream_arn(local).table == "my_table.v2"


@pytest.mark.parametrize(
    ("arn", "needle"),
    [
        ("", "is empty"),
        ("Orders", "is not an ARN"),
        (" " + ARN, "whitespace"),
        (ARN.replace("arn:aws:", "arn:aws-moon:"), "unknown partition"),
        (ARN.replace(":dynamodb:", ":kinesis:"), "not a DynamoDB stream ARN"),
        (ARN.replace("123456789012", "12345"), "invalid account"),
        (ARN.replace("us-east-1", "US_EAST"), "invalid region"),
        ("arn:aws:dynamodb:us-east-1:123456789012:table/Orders", "table ARN, not a stream ARN"),
        ("arn:aws:dynamodb:us-east-1:123456789012:backup/x", "does not name a table"),
        ("arn:aws:dynamodb:us-east-1:123456789012:table/Orders/index/gsi1", "is not a stream ARN"),
        (ARN.replace("table/Orders", "table/O!"), "invalid table name"),
        (ARN.replace("2024-01-01T00:00:00.000", ""), "invalid stream label"),
    ],
)
def test_parse_stream_arn_errors(arn: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_stream_arn(arn)
    msg = str(info.value)
    assert info.value.setting == "stream_arn"
    assert needle in msg
    assert "\n" not in msg
    assert msg.startswith("stream_arn: ")
    assert "LatestStreamArn" in msg  # the fix
