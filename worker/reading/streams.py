"""A thin client over boto3's ``dynamodbstreams`` (and ``dynamodb`` for DescribeTable).

boto3 keeps doing credentials, signing, endpoint resolution and retries; this module adds:

* **The fast GetRecords path.**  botocore's generic response parser (a walk of the output shape
  per value) plus boto3's ``TypeDeserializer`` manage about 1,400 realistic 1.4 KB records per
  second per core.  botocore's endpoint emits ``before-parse.dynamodb-streams.GetRecords`` with
  the HTTP ``response_dict`` and a ``customized_response_dict`` that is merged into the parsed
  result (``botocore/endpoint.py``, ``_do_get_response``).  Our handler, registered on this
  client's own event emitter only, moves the raw body of a **200** response into
  ``customized_response_dict["_ShardleaseRawBody"]`` and gives the parser ``b"{}"``, which it
  turns into ``{}`` at once.  :func:`worker.reading.records.decode_get_records` then decodes the bytes with
  msgspec.  Non-200 responses are left alone, so botocore still parses error codes, raises
  ``ClientError`` and its retry handler (which looks at the parsed error only on failures, and
  at the CRC32 header of ``http_response.content``, untouched) still works.
* **The fast path's guard.**  The hook above relies on botocore internals (the event's name,
  the merge of ``customized_response_dict``, the body's type), and a fast path that silently
  stopped working would return ``{}``: no ``Records``, no ``NextShardIterator``, which reads as
  the end of the shard and would skip the rest of it.  So a page is only a page if it
  demonstrably came from a real body: the raw body is decoded when present (and
  :func:`~worker.reading.records.decode_get_records` accepts only a JSON object with a ``Records``
  list); otherwise botocore's own parse is used only if the handler did not take this
  response's body (a thread-local flag the handler sets) and the parse has a ``Records`` list
  (a closed shard's genuine last page is ``{"Records": []}``).  Anything else means the fast
  path is broken: the client logs one ERROR (botocore version, what was missing), switches to
  botocore's own parser for good (the handler is unregistered by its ``unique_id`` and inert
  anyway) and raises :class:`StreamServerError`, so the consumer retries the same iterator
  (valid for 15 minutes) through the slower parser; an empty page without a next iterator is
  never made up.  Answers without HTTP (botocore's ``Stubber``) take the same generic route.
  There is no start-up probe (it would need a signed call); instead the first page a client
  reads over HTTP checks that the handler ran, and logs one WARNING if it did not (correct
  but slower: the event was not emitted, e.g. renamed).  :attr:`StreamsClient.fast_path`
  tells whether the fast path is still on.
* **The lean GetRecords path** (:mod:`worker.reading.lean`, on in the worker).  After botocore has
  sent one GetRecords of this client, later ones skip botocore's request pipeline (about 0.5 ms
  of CPU per call): one SigV4-signed POST through botocore's own urllib3 pool, the 200 body
  decoded as above.  Anything but a clean 200 (an error status, a connection error, a checksum
  mismatch) is sent again through botocore, so errors, retries and their classification are
  botocore's and :func:`translate_error`'s exactly as before.  The worker turns it on
  (``lean_http=None``; for the benchmarks only, ``SHARDLEASE_BENCH_GETRECORDS_PATH=botocore``
  keeps every call on botocore); a ``StreamsClient()`` built without ``lean_http`` does not use it.
* **Error translation.**  ``ClientError``/``BotoCoreError`` never escape: they become the classes
  of :mod:`worker.errors` (original chained as ``__cause__``).
* **Small helpers**: shard pagination, child-shard lookup with fallback, stream-ARN validation,
  and the table's latest stream ARN.

botocore is configured with the ``standard`` retry mode and few attempts (the worker does its
own backoff), bounded connect/read timeouts and a connection pool sized for many shard threads.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Final

import botocore
import botocore.session
import orjson
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from leaser.errors import ConfigError, ShardleaseError
from worker.errors import (
    AccessDenied,
    ExpiredIterator,
    InvalidRequest,
    ShardNotFound,
    StreamDisabled,
    StreamNotFound,
    StreamServerError,
    StreamThrottled,
    TrimmedData,
)
from worker.reading.lean import LeanGetRecords
from worker.reading.records import Record, _from_wire, decode_get_records

if TYPE_CHECKING:
    import boto3

__all__ = [
    "ITERATOR_TYPES",
    "GetRecordsPage",
    "Shard",
    "StreamArn",
    "StreamPage",
    "StreamsClient",
    "parse_stream_arn",
    "translate_error",
]

ITERATOR_TYPES: Final = frozenset({"TRIM_HORIZON", "LATEST", "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"})
_RAW_BODY_KEY: Final = "_ShardleaseRawBody"
_FAST_PATH_ID: Final = "shardlease-fast-getrecords"  # unique_id of the before-parse handler
_LEAN_PATH_ID: Final = "shardlease-lean-getrecords"  # unique_id of the before-sign handler
# Bench-only switch (bench/call_cpu.py measures "before" in the same run): "botocore" turns the
# lean path off in every StreamsClient built without an explicit ``lean_http``.
BENCH_PATH_ENV: Final = "SHARDLEASE_BENCH_GETRECORDS_PATH"
_PARTITIONS: Final = (
    "aws",
    "aws-cn",
    "aws-us-gov",
    "aws-iso",
    "aws-iso-b",
    "aws-iso-e",
    "aws-iso-f",
    "aws-eusc",
)

log = logging.getLogger("shardlease.streams")

# ---------------------------------------------------------------------------------------------
# Value types


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard of a stream.  ``ending_sequence_number`` is ``None`` while the shard is open."""

    shard_id: str
    parent_shard_id: str | None
    starting_sequence_number: str | None
    ending_sequence_number: str | None

    @property
    def is_closed(self) -> bool:
        return self.ending_sequence_number is not None

    @classmethod
    def from_wire(cls, shard: dict[str, Any]) -> Shard:
        rng = shard.get("SequenceNumberRange") or {}
        return cls(
            shard["ShardId"],
            shard.get("ParentShardId"),
            rng.get("StartingSequenceNumber"),
            rng.get("EndingSequenceNumber"),
        )


@dataclass(frozen=True, slots=True)
class StreamPage:
    """One DescribeStream page.  Only ``last_evaluated_shard_id is None`` means the listing ended."""

    status: str
    view_type: str | None
    shards: list[Shard]
    last_evaluated_shard_id: str | None


@dataclass(frozen=True, slots=True)
class GetRecordsPage:
    """One GetRecords page.  May be empty while more records follow; ``next_iterator`` is ``None``
    only when the shard is closed and fully read."""

    records: list[Record]
    next_iterator: str | None

    @property
    def shard_end(self) -> bool:
        return self.next_iterator is None


@dataclass(frozen=True, slots=True)
class StreamArn:
    partition: str
    region: str
    account: str
    table: str
    label: str

    def __str__(self) -> str:
        head = f"arn:{self.partition}:dynamodb:{self.region}:{self.account}"
        return f"{head}:table/{self.table}/stream/{self.label}"


_EXAMPLE_ARN: Final = "arn:aws:dynamodb:us-east-1:123456789012:table/Orders/stream/2024-01-01T00:00:00.000"
_FIX_ARN: Final = (
    f"use the table's LatestStreamArn (aws dynamodb describe-table --table-name T "
    f"--query Table.LatestStreamArn), e.g. {_EXAMPLE_ARN}"
)
_TABLE_RE: Final = re.compile(r"[A-Za-z0-9_.-]{3,255}")
_REGION_RE: Final = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_LABEL_RE: Final = re.compile(r"[A-Za-z0-9:._+-]+")


def parse_stream_arn(arn: str) -> StreamArn:
    """Validate a DynamoDB stream ARN; raise :class:`ConfigError` (setting ``stream_arn``) if malformed.

    Region and label are checked loosely so local endpoints (region ``ddblocal``, microsecond
    labels) pass; partition, service, account, table name and layout are checked strictly.
    """

    def bad(problem: str) -> ConfigError:
        return ConfigError("stream_arn", problem, _FIX_ARN)

    if not arn or not arn.strip():
        raise bad("is empty")
    if arn != arn.strip():
        raise bad(f"{arn!r} has leading or trailing whitespace")
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn":
        raise bad(f"{arn!r} is not an ARN (expected arn:PARTITION:dynamodb:REGION:ACCOUNT:table/...)")
    _, partition, service, region, account, resource = parts
    if partition not in _PARTITIONS:
        raise bad(f"{arn!r} has unknown partition {partition!r} (expected one of {', '.join(_PARTITIONS)})")
    if service != "dynamodb":
        raise bad(f"{arn!r} is a {service or 'blank'!r} ARN, not a DynamoDB stream ARN")
    if not _REGION_RE.fullmatch(region):
        raise bad(f"{arn!r} has invalid region {region!r}")
    if not (len(account) == 12 and account.isascii() and account.isdigit()):
        raise bad(f"{arn!r} has invalid account {account!r} (expected 12 digits)")
    pieces = resource.split("/")
    if not pieces or pieces[0] != "table" or len(pieces) < 2:
        raise bad(f"{arn!r} does not name a table (expected table/NAME/stream/LABEL after the account)")
    if len(pieces) == 2:
        raise bad(f"{arn!r} is a table ARN, not a stream ARN (missing /stream/LABEL)")
    if len(pieces) != 4 or pieces[2] != "stream":
        raise bad(f"{arn!r} is not a stream ARN (expected table/NAME/stream/LABEL after the account)")
    table, label = pieces[1], pieces[3]
    if not _TABLE_RE.fullmatch(table):
        raise bad(f"{arn!r} has invalid table name {table!r} (3-255 of A-Z a-z 0-9 _ . -)")
    if not _LABEL_RE.fullmatch(label):
        raise bad(f"{arn!r} has invalid stream label {label!r} (expected a timestamp)")
    return StreamArn(partition, region, account, table, label)


# ---------------------------------------------------------------------------------------------
# Error translation

_THROTTLE_CODES: Final = frozenset(
    {
        "LimitExceededException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "RequestThrottled",
        "RequestThrottledException",
    }
)
_SERVER_CODES: Final = frozenset(
    {
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalServerErrorException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_ACCESS_CODES: Final = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "IncompleteSignatureException",
        "MissingAuthenticationToken",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
        "ExpiredTokenException",
        "ExpiredToken",
        "SignatureDoesNotMatch",
    }
)


def translate_error(
    exc: BaseException,
    operation: str,
    *,
    shard_id: str | None = None,
    stream_arn: str | None = None,
) -> ShardleaseError:
    """Map a botocore exception (or our own decode failure) to a :mod:`worker.errors` class.

    ``shard_id`` marks a shard operation: a ResourceNotFoundException then means the shard is
    gone (:class:`ShardNotFound`) unless the message speaks only of the stream.
    """
    if isinstance(exc, ShardleaseError):
        return exc
    if isinstance(exc, ClientError):
        err = exc.response.get("Error") or {}
        code = str(err.get("Code") or "")
        message = str(err.get("Message") or exc)
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        text = f"{operation}: {code or status}: {message}"
        if code == "ExpiredIteratorException":
            return ExpiredIterator(text, code=code, operation=operation)
        if code == "TrimmedDataAccessException":
            return TrimmedData(text, shard_id=shard_id, code=code, operation=operation)
        if code == "ResourceNotFoundException":
            lower = message.lower()
            if shard_id is not None and ("shard" in lower or "stream" not in lower):
                return ShardNotFound(text, shard_id=shard_id, code=code, operation=operation)
            return StreamNotFound(text, stream_arn=stream_arn, code=code, operation=operation)
        if code in _THROTTLE_CODES or status == 429:
            return StreamThrottled(text, code=code, operation=operation)
        if code in _SERVER_CODES or status >= 500:
            return StreamServerError(text, code=code, operation=operation)
        if code in _ACCESS_CODES or status in (401, 403):
            return AccessDenied(text, code=code, operation=operation)
        return InvalidRequest(text, code=code or None, operation=operation)
    if isinstance(exc, NoRegionError):
        return ConfigError(
            "region (--region / SHARDLEASE_REGION)", "no AWS region configured", "set AWS_REGION or pass --region"
        )
    if isinstance(exc, NoCredentialsError):
        return ConfigError(
            "aws credentials",
            "no AWS credentials found",
            "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or use IRSA/instance roles",
        )
    if isinstance(exc, ParamValidationError):
        return InvalidRequest(f"{operation}: {exc}", operation=operation)
    if isinstance(exc, HTTPClientError | BotoConnectionError):
        return StreamServerError(f"{operation}: {type(exc).__name__}: {exc}", operation=operation)
    if isinstance(exc, BotoCoreError | orjson.JSONDecodeError | KeyError | TypeError | AttributeError):
        # Unexpected low-level failure (unparseable response, credential refresh, botocore's parser
        # choking on a malformed body, ...): retryable.
        return StreamServerError(f"{operation}: {type(exc).__name__}: {exc}", operation=operation)
    raise TypeError(f"cannot translate {type(exc).__name__}") from exc


@contextmanager
def _boundary(
    operation: str, *, shard_id: str | None = None, stream_arn: str | None = None
) -> Iterator[None]:
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise translate_error(exc, operation, shard_id=shard_id, stream_arn=stream_arn) from exc


def _stash_raw_body(response_dict: dict[str, Any], customized_response_dict: dict[str, Any]) -> bool:
    """Keep a 200 body for the page decoder, hand the generic parser an empty object; True if it did."""
    if response_dict.get("status_code") == 200:
        body = response_dict.get("body")
        if isinstance(body, bytes | bytearray):
            customized_response_dict[_RAW_BODY_KEY] = body
            response_dict["body"] = b"{}"
            return True
    return False


# ---------------------------------------------------------------------------------------------
# The client


def _boto3_like_session() -> Any:
    """A botocore session as ``boto3.Session()`` sets one up for the ``dynamodbstreams`` and ``dynamodb``
    clients, without importing boto3 (its import, s3transfer and the resource layer included, cost ~20 ms
    of every worker's start-up).  boto3's Session changes only the User-Agent for these clients (its other
    handlers are for resources, S3 and EC2): the same three settings are made here, so requests carry
    ``Boto3/<version> md/Botocore#<version> ...`` as before (tests compare the header with boto3's)."""
    session = botocore.session.get_session()
    if session.user_agent_name == "Botocore":  # as boto3.session.Session.__init__ does
        info = f"Botocore/{session.user_agent_version}"
        session.user_agent_extra = f"{session.user_agent_extra} {info}" if session.user_agent_extra else info
        session.user_agent_name = "Boto3"
        try:
            session.user_agent_version = metadata.version("boto3")
        except metadata.PackageNotFoundError:  # not installed as a distribution: boto3 knows its version
            import boto3 as installed

            session.user_agent_version = installed.__version__
    return session


class StreamsClient:
    """DynamoDB Streams operations with the fast GetRecords path and translated errors.

    Thread-safe (boto3 clients are).  ``session`` defaults to a new ``boto3.Session()`` (its equivalent:
    :func:`_boto3_like_session`);
    ``region_name``/``endpoint_url`` default to boto3's standard sources (``AWS_REGION``,
    ``AWS_ENDPOINT_URL_DYNAMODB_STREAMS``, profiles, IRSA).  The DynamoDB client used for
    DescribeTable takes ``dynamodb_endpoint_url``, defaulting to ``endpoint_url`` when that is
    given (local emulators serve both APIs on one URL), else boto3's sources
    (``AWS_ENDPOINT_URL_DYNAMODB``).  ``max_attempts`` counts every attempt botocore makes
    (standard retry mode; 1 = no retry inside botocore), the worker adds its own backoff.
    ``lean_http`` sends GetRecords by the lean path once botocore has sent one; the worker passes
    ``None``: on, unless the bench-only ``SHARDLEASE_BENCH_GETRECORDS_PATH=botocore`` is set.
    Off by default for other callers, whose tests may hook botocore's GetRecords pipeline.
    """

    def __init__(
        self,
        session: boto3.Session | None = None,
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        dynamodb_endpoint_url: str | None = None,
        max_pool_connections: int = 64,
        connect_timeout: float = 5.0,
        read_timeout: float = 15.0,
        max_attempts: int = 3,
        lean_http: bool | None = False,
    ) -> None:
        # A boto3 Session given makes the clients (Session.client); by default a botocore session set up as
        # boto3's would be (_boto3_like_session), whose create_client takes the same arguments.
        self._new_client: Any = session.client if session is not None else _boto3_like_session().create_client
        self._region_name = region_name
        self._dynamodb_endpoint_url = dynamodb_endpoint_url or endpoint_url
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": max_attempts},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=max_pool_connections,
            tcp_keepalive=True,
        )
        with _boundary("CreateClient"):
            self._client: Any = self._new_client(
                "dynamodbstreams", region_name=region_name, endpoint_url=endpoint_url, config=self._config
            )
        self._dynamodb: Any = None
        service_id = self._client.meta.service_model.service_id.hyphenize()
        self._fast_event = f"before-parse.{service_id}.GetRecords"
        self._fast_lock = threading.Lock()
        self._fast_on = True  # False once the fast path failed: botocore's parser from then on
        self._fast_checked = False  # the first page read over HTTP checks that the handler runs
        self._stash_state = threading.local()  # .stashed: the handler took this thread's current body
        self._client.meta.events.register(self._fast_event, self._before_parse, unique_id=_FAST_PATH_ID)
        if lean_http is None:
            lean_http = os.environ.get(BENCH_PATH_ENV, "") != "botocore"
        self._lean = LeanGetRecords(self._client)
        if lean_http:
            self._client.meta.events.register(
                f"before-sign.{service_id}.GetRecords", self._before_sign, unique_id=_LEAN_PATH_ID
            )
        else:
            self._lean.give_up("turned off (lean_http=False)")
        self._shard_filter_supported = True

    @property
    def boto_client(self) -> Any:
        """The underlying ``dynamodbstreams`` client (its GetRecords answers carry only the raw body
        while the fast path is on)."""
        return self._client

    @property
    def lean_path(self) -> bool:
        """True while GetRecords is sent by the lean path (from the second call of a client on)."""
        return self._lean.ready

    @property
    def fast_path(self) -> bool:
        """False once the fast GetRecords path failed and this client switched to botocore's parser."""
        return self._fast_on

    def close(self) -> None:
        self._lean.close()
        self._client.close()
        if self._dynamodb is not None:
            self._dynamodb.close()

    def __enter__(self) -> StreamsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- shards -----------------------------------------------------------------------------

    def describe_stream_page(
        self,
        stream_arn: str,
        exclusive_start_shard_id: str | None = None,
        limit: int = 100,
        *,
        child_shards_of: str | None = None,
    ) -> StreamPage:
        """One DescribeStream call (``limit`` 1..100).  ``child_shards_of`` sets ShardFilter CHILD_SHARDS."""
        if not 1 <= limit <= 100:
            raise InvalidRequest(
                f"DescribeStream: limit must be 1..100, got {limit}", operation="DescribeStream"
            )
        kwargs: dict[str, Any] = {"StreamArn": stream_arn, "Limit": limit}
        if exclusive_start_shard_id is not None:
            kwargs["ExclusiveStartShardId"] = exclusive_start_shard_id
        if child_shards_of is not None:
            kwargs["ShardFilter"] = {"Type": "CHILD_SHARDS", "ShardId": child_shards_of}
        with _boundary("DescribeStream", stream_arn=stream_arn):
            desc = self._client.describe_stream(**kwargs)["StreamDescription"]
        return StreamPage(
            desc.get("StreamStatus", ""),
            desc.get("StreamViewType"),
            [Shard.from_wire(s) for s in desc.get("Shards") or ()],
            desc.get("LastEvaluatedShardId"),
        )

    def iter_shards(
        self, stream_arn: str, after_shard_id: str | None = None, **page_kwargs: Any
    ) -> Iterator[Shard]:
        """Every shard, page by page, until a page has no LastEvaluatedShardId."""
        start = after_shard_id
        seen: set[str] = set()
        while True:
            page = self.describe_stream_page(stream_arn, start, **page_kwargs)
            yield from page.shards
            nxt = page.last_evaluated_shard_id
            if nxt is None or nxt in seen:  # a repeated cursor would loop forever: stop
                return
            seen.add(nxt)
            start = nxt

    def list_shards(self, stream_arn: str, after_shard_id: str | None = None) -> list[Shard]:
        """All shards of the stream (after ``after_shard_id`` if given), following LastEvaluatedShardId."""
        return list(self.iter_shards(stream_arn, after_shard_id))

    def child_shards(self, stream_arn: str, parent_shard_id: str) -> list[Shard]:
        """The children of one shard: DescribeStream with ShardFilter CHILD_SHARDS.

        Endpoints (or older botocore) that reject the filter get a full listing filtered by
        parent instead, and are remembered so later calls go straight to the listing.  Results
        are always filtered by parent, in case an endpoint silently ignores the filter.
        """
        if self._shard_filter_supported:
            try:
                shards = list(self.iter_shards(stream_arn, child_shards_of=parent_shard_id))
            except InvalidRequest:
                self._shard_filter_supported = False
            else:
                return [s for s in shards if s.parent_shard_id == parent_shard_id]
        return [s for s in self.iter_shards(stream_arn) if s.parent_shard_id == parent_shard_id]

    def stream_status(self, stream_arn: str) -> str:
        """ENABLING, ENABLED, DISABLING or DISABLED."""
        return self.describe_stream_page(stream_arn, limit=1).status

    # -- reading ----------------------------------------------------------------------------

    def get_shard_iterator(
        self, stream_arn: str, shard_id: str, kind: str, sequence_number: str | None = None
    ) -> str:
        """A shard iterator (valid 15 minutes).  AT_/AFTER_SEQUENCE_NUMBER need ``sequence_number``."""
        if kind not in ITERATOR_TYPES:
            raise InvalidRequest(
                f"GetShardIterator: unknown iterator type {kind!r} "
                f"(expected one of {', '.join(sorted(ITERATOR_TYPES))})",
                operation="GetShardIterator",
            )
        needs_seq = kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER")
        if needs_seq != (sequence_number is not None):
            raise InvalidRequest(
                f"GetShardIterator: {kind} {'needs' if needs_seq else 'takes no'} sequence_number",
                operation="GetShardIterator",
            )
        kwargs: dict[str, Any] = {"StreamArn": stream_arn, "ShardId": shard_id, "ShardIteratorType": kind}
        if sequence_number is not None:
            kwargs["SequenceNumber"] = sequence_number
        with _boundary("GetShardIterator", shard_id=shard_id, stream_arn=stream_arn):
            iterator = self._client.get_shard_iterator(**kwargs).get("ShardIterator")
        if not iterator:
            raise StreamServerError(
                "GetShardIterator: response has no ShardIterator", operation="GetShardIterator"
            )
        return str(iterator)

    def get_records(self, iterator: str, limit: int = 1000, *, shard_id: str = "") -> GetRecordsPage:
        """One GetRecords call through the fast path (or botocore's parser once it failed).

        ``shard_id`` is stamped on each :class:`Record` (and on ShardNotFound/TrimmedData
        errors); pass it, iterators do not reveal it.  A response that cannot be read as a page
        raises :class:`StreamServerError` (retry the same iterator), never an empty shard end.
        """
        if not 1 <= limit <= 1000:
            raise InvalidRequest(f"GetRecords: limit must be 1..1000, got {limit}", operation="GetRecords")
        lean_unreadable: BaseException | None = None
        if self._lean.ready and self._fast_on:
            raw = self._lean.send(iterator, limit)
            if raw is not None:
                try:
                    records, next_iterator = decode_get_records(raw, shard_id)
                except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                    # A 200 that is not a page: botocore sends the request again (below).  If its answer
                    # reads as a page, the lean request is what the endpoint does not understand.
                    lean_unreadable = exc
                else:
                    return GetRecordsPage(records, next_iterator)
        page = self._get_records_botocore(iterator, limit, shard_id)
        if lean_unreadable is not None:
            self._lean.give_up(
                f"a 200 answer to the lean request was not a page ({type(lean_unreadable).__name__}: "
                f"{lean_unreadable}) while botocore's answer to the same request was",
                level=logging.WARNING,
            )
        return page

    def _get_records_botocore(self, iterator: str, limit: int, shard_id: str) -> GetRecordsPage:
        """One GetRecords through botocore's pipeline (the before-parse fast path, else its parser)."""
        sid = shard_id or None
        state = self._stash_state
        state.stashed = False
        try:
            with _boundary("GetRecords", shard_id=sid):
                parsed = self._client.get_records(ShardIterator=iterator, Limit=limit)
            raw = parsed.get(_RAW_BODY_KEY)
            if raw is not None:
                records, next_iterator = decode_get_records(raw, shard_id)
                self._fast_checked = True
            else:
                records, next_iterator = self._generic_page(parsed, shard_id, bool(state.stashed))
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            # AttributeError/TypeError: also botocore's own parser on a 200 body of the wrong shape.
            raise translate_error(exc, "GetRecords") from exc
        return GetRecordsPage(records, next_iterator)

    def _before_sign(
        self, request: Any, signing_name: str, region_name: str, signature_version: Any, **_: Any
    ) -> None:
        """The before-sign handler of this client's GetRecords: the lean path learns the request once."""
        if not self._lean.ready and self._lean.why_not is None:
            self._lean.learn(request, signing_name, region_name, signature_version)

    def _before_parse(
        self, response_dict: dict[str, Any], customized_response_dict: dict[str, Any], **_: Any
    ) -> None:
        """The before-parse handler of this client's GetRecords (inert once the fast path is off)."""
        if self._fast_on and _stash_raw_body(response_dict, customized_response_dict):
            self._stash_state.stashed = True

    def _generic_page(
        self, parsed: dict[str, Any], shard_id: str, stashed: bool
    ) -> tuple[list[Record], str | None]:
        """A page from botocore's own parse, accepted only if it demonstrably came from a real body.

        ``stashed``: the fast path took this response's body (so the parse is of ``b"{}"``).  A page
        is accepted only if the handler did not take the body and the parse has a ``Records``
        list; anything else is a retryable error (and, the first time, switches the fast path
        off), never an empty page without a next iterator, which would end the shard.
        """
        wire = parsed.get("Records")
        if stashed or not isinstance(wire, list):
            if stashed:
                missing = (
                    f"the raw body its before-parse handler stashed in customized_response_dict"
                    f"[{_RAW_BODY_KEY!r}] is missing from the parsed response (not merged any more?)"
                )
            else:
                missing = (
                    f"the response carries neither the raw body (customized_response_dict"
                    f"[{_RAW_BODY_KEY!r}]) nor a Records list (keys: {sorted(parsed)})"
                )
            switched = self._switch_to_botocore_parser(missing)
            raise StreamServerError(
                f"GetRecords: unreadable response: {missing}"
                + ("; switched to botocore's own parser, retry the same iterator" if switched else ""),
                operation="GetRecords",
            )
        if not self._fast_checked and "HTTPHeaders" in (parsed.get("ResponseMetadata") or {}):
            # First page read over HTTP (Stubber answers have no HTTPHeaders): the handler did not run.
            self._fast_checked = True
            if self._fast_on:
                log.warning(
                    "GetRecords fast path not in effect with botocore %s: its before-parse handler (%s) "
                    "did not run, so pages are parsed by botocore's own (slower) parser",
                    botocore.__version__,
                    self._fast_event,
                )
        next_iterator = parsed.get("NextShardIterator")
        if next_iterator is not None and not isinstance(next_iterator, str):
            raise TypeError(
                f"GetRecords response has NextShardIterator of type {type(next_iterator).__name__}"
            )
        times: dict[Any, Any] = {}
        return [_from_wire(r, shard_id, times) for r in wire], next_iterator

    def _switch_to_botocore_parser(self, missing: str) -> bool:
        """Turn the fast path off for good (ERROR logged once); False if it was already off."""
        with self._fast_lock:
            if not self._fast_on:
                return False
            self._fast_on = False
        try:
            self._client.meta.events.unregister(self._fast_event, unique_id=_FAST_PATH_ID)
        except Exception as exc:  # the handler is inert anyway once _fast_on is False
            log.warning("could not unregister the GetRecords before-parse handler: %r", exc)
        log.error(
            "GetRecords fast path failed with botocore %s: %s; this client now parses GetRecords with "
            "botocore's own (slower) parser. This call fails as retryable, so its iterator is read again "
            "and no record is skipped",
            botocore.__version__,
            missing,
        )
        return True

    # -- tables -----------------------------------------------------------------------------

    def _dynamodb_client(self) -> Any:
        if self._dynamodb is None:
            with _boundary("CreateClient"):
                self._dynamodb = self._new_client(
                    "dynamodb",
                    region_name=self._region_name,
                    endpoint_url=self._dynamodb_endpoint_url,
                    config=self._config,
                )
        return self._dynamodb

    def latest_stream_arn(self, table_name: str) -> str:
        """The table's current stream ARN (DynamoDB DescribeTable).

        Raises :class:`ConfigError` (setting ``table``) when the table does not exist and
        :class:`StreamDisabled` when it has no stream or the stream is disabled (``stream_arn``
        then carries the last ARN, readable for 24 h after disabling).
        """
        client = self._dynamodb_client()
        try:
            with _boundary("DescribeTable"):
                table = client.describe_table(TableName=table_name)["Table"]
        except StreamNotFound as exc:
            raise ConfigError(
                "table", f"table {table_name!r} not found", "check the table name, region and account"
            ) from exc
        spec = table.get("StreamSpecification") or {}
        arn = table.get("LatestStreamArn")
        if not arn:
            raise StreamDisabled(
                f"table {table_name!r} has no stream; enable one "
                f"(aws dynamodb update-table --table-name {table_name} "
                f"--stream-specification StreamEnabled=true,StreamViewType=NEW_AND_OLD_IMAGES)",
                table_name=table_name,
                operation="DescribeTable",
            )
        if not spec.get("StreamEnabled", False):
            raise StreamDisabled(
                f"table {table_name!r} has its stream disabled (last stream {arn}); re-enable it "
                f"(this creates a new stream ARN) or pass the old ARN explicitly to drain it",
                table_name=table_name,
                stream_arn=str(arn),
                operation="DescribeTable",
            )
        return str(arn)
