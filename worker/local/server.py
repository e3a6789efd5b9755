"""HTTP front of the local endpoint: AWS JSON 1.0 over HTTP/1.1 keep-alive on loopback.

One port serves three target prefixes (the ``X-Amz-Target`` header):

- ``DynamoDBStreams_20120810.<Op>``: ListStreams, DescribeStream, GetShardIterator, GetRecords.
- ``DynamoDB_20120810.<Op>``: DescribeTable, Scan (docs/snapshot.md), plus PutItem, UpdateItem (``SET``-free form: see
  docs), DeleteItem and ListTables so a demo can write through an ordinary boto3 DynamoDB client.
- ``ShardleaseLocal.<Op>``: admin operations driving topology and faults from another process.

Credentials and signatures are accepted without checking.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from worker.local.model import Faults, LocalTable, StreamsApiError, StreamsModel, to_typed

STREAMS_PREFIX = "DynamoDBStreams_20120810."
DYNAMODB_PREFIX = "DynamoDB_20120810."
ADMIN_PREFIX = "ShardleaseLocal."
CONTENT_TYPE = "application/x-amz-json-1.0"


def _error(code: str, message: str, status: int = 400) -> StreamsApiError:
    return StreamsApiError(code, message, status)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    app: LocalStreamsServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _HTTPServer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        status, body = self.server.app.handle(self.headers.get("X-Amz-Target") or "", raw)
        self._send(status, body)

    def do_GET(self) -> None:  # health check
        self._send(200, b'{"status":"ok"}')

    def _send(self, status: int, body: bytes) -> None:
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"x-amzn-RequestId: {uuid.uuid4().hex}\r\n\r\n"
        ).encode()
        self.wfile.write(head + body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalStreamsServer:
    """A local DynamoDB Streams (+ DescribeTable) endpoint serving a :class:`StreamsModel`.

    >>> with LocalStreamsServer(port=0) as server:                     # doctest: +SKIP
    ...     table = server.create_table("orders", [("pk", "S"), ("sk", "S")], shards=4)
    ...     table.put_item({"pk": "a", "sk": "1", "v": 1})
    ...     client = server.client()          # boto3 dynamodbstreams client, retries off
    ...     client.describe_stream(StreamArn=table.stream_arn)

    ``port=0`` picks a free port. ``model_options`` go to :class:`StreamsModel` (``seed``,
    ``first_sequence_number``, ``region`` and any :class:`Faults` field such as ``iterator_ttl_s``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        model: StreamsModel | None = None,
        **model_options: Any,
    ) -> None:
        self.model = model if model is not None else StreamsModel(**model_options)
        self.host = host
        self._requested_port = port
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ops: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            STREAMS_PREFIX + "ListStreams": self.model.list_streams,
            STREAMS_PREFIX + "DescribeStream": self.model.describe_stream,
            STREAMS_PREFIX + "GetShardIterator": self.model.get_shard_iterator,
            STREAMS_PREFIX + "GetRecords": self.model.get_records,
            DYNAMODB_PREFIX + "DescribeTable": self.model.describe_table,
            DYNAMODB_PREFIX + "Scan": self.model.scan,
            DYNAMODB_PREFIX + "ListTables": self._ddb_list_tables,
            DYNAMODB_PREFIX + "PutItem": self._ddb_put_item,
            DYNAMODB_PREFIX + "UpdateItem": self._ddb_update_item,
            DYNAMODB_PREFIX + "DeleteItem": self._ddb_delete_item,
        }
        self._admin: dict[str, Callable[[Mapping[str, Any]], Any]] = {
            "CreateTable": self._admin_create_table,
            "PutItem": lambda p: {"SequenceNumber": self._table(p).put_item(p["Item"])},
            "UpdateItem": lambda p: {"SequenceNumber": self._table(p).update_item(p["Key"], p["Changes"])},
            "DeleteItem": lambda p: {
                "SequenceNumber": self._table(p).delete_item(p["Key"], ttl=bool(p.get("Ttl", False)))
            },
            "SplitShard": lambda p: {"ChildShardIds": list(self.model.split_shard(self._arn(p), p["ShardId"]))},
            "RolloverShard": lambda p: {"ChildShardIds": [self.model.rollover_shard(self._arn(p), p["ShardId"])]},
            "RolloverAll": lambda p: {"Children": self.model.rollover_all(self._arn(p))},
            "SplitAll": lambda p: {"Children": {k: list(v) for k, v in self.model.split_all(self._arn(p)).items()}},
            "DisableStream": lambda p: {"StreamArn": self.model.disable_stream(p["TableName"])},
            "EnableStream": lambda p: {"StreamArn": self.model.enable_stream(p["TableName"], p.get("StreamViewType"))},
            "SetStreamStatus": lambda p: self.model.set_stream_status(self._arn(p), p["StreamStatus"]),
            "Trim": lambda p: {
                "Removed": self.model.trim(
                    self._arn(p) if ("StreamArn" in p or "TableName" in p) else None, before=p.get("Before")
                )
            },
            "SetFaults": lambda p: {"Faults": vars(self.model.set_faults(**p))},
            "Seed": lambda p: self.model.seed(p.get("Seed")),
            "ListShards": lambda p: {
                "ShardIds": self.model.shard_ids(self._arn(p), open_only=bool(p.get("OpenOnly", False)))
            },
        }

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> LocalStreamsServer:
        """Bind and serve in a daemon thread. Returns ``self``."""
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self._requested_port), _Handler)
        httpd.app = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="local-streams", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> LocalStreamsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``: boto3 ``endpoint_url`` for both dynamodb and dynamodbstreams."""
        return f"http://{self.host}:{self.port}"

    # -- conveniences -------------------------------------------------------------------------
    def create_table(
        self,
        name: str,
        key_schema: Sequence[tuple[str, str]] | Sequence[str] = (("pk", "S"),),
        *,
        view_type: str = "NEW_AND_OLD_IMAGES",
        shards: int = 1,
        stream_enabled: bool = True,
    ) -> LocalTable:
        """Same as :meth:`StreamsModel.create_table`."""
        return self.model.create_table(
            name, key_schema, view_type=view_type, shards=shards, stream_enabled=stream_enabled
        )

    def client(self, service: str = "dynamodbstreams", *, retries: int = 1, **kwargs: Any) -> Any:
        """A boto3 client for ``service`` pointed here: dummy credentials, ``retries`` total attempts."""
        import boto3
        from botocore.config import Config

        config = Config(retries={"total_max_attempts": retries, "mode": "standard"})
        return boto3.client(
            service,
            endpoint_url=self.endpoint_url,
            region_name=self.model.region,
            aws_access_key_id="local",
            aws_secret_access_key="local",
            config=kwargs.pop("config", config),
            **kwargs,
        )

    # -- dispatch -----------------------------------------------------------------------------
    def handle(self, target: str, raw: bytes) -> tuple[int, bytes]:
        """Answer one request: returns (HTTP status, JSON body)."""
        try:
            try:
                params = orjson.loads(raw) if raw else {}
            except orjson.JSONDecodeError:
                raise _error("SerializationException", "Malformed JSON request body") from None
            if not isinstance(params, dict):
                raise _error("SerializationException", "Request body must be a JSON object")
            if target.startswith(ADMIN_PREFIX):
                return 200, self._handle_admin(target[len(ADMIN_PREFIX) :], params)
            op = self._ops.get(target)
            if op is None:
                raise _error("UnknownOperationException", f"Unknown operation {target!r}")
            latency = self.model.faults.latency_s
            if latency > 0:
                time.sleep(latency)
            self.model.maybe_fail()
            result = op(params)
            return 200, result if isinstance(result, bytes) else orjson.dumps(result)
        except StreamsApiError as exc:
            return exc.status, exc.wire_body()
        except Exception as exc:  # a bug: report as the real service would
            return 500, _error("InternalServerError", f"{type(exc).__name__}: {exc}", 500).wire_body()

    def _handle_admin(self, op: str, params: Mapping[str, Any]) -> bytes:
        fn = self._admin.get(op)
        if fn is None:
            raise _error("UnknownOperationException", f"Unknown admin operation {op!r}")
        try:
            result = fn(params)
        except KeyError as exc:
            raise _error("ValidationException", f"missing parameter {exc}") from None
        except LookupError as exc:
            raise _error("ResourceNotFoundException", str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise _error("ValidationException", str(exc)) from None
        return orjson.dumps(result if result is not None else {})

    def _table(self, params: Mapping[str, Any]) -> LocalTable:
        return self.model.table(params["TableName"])

    def _arn(self, params: Mapping[str, Any]) -> str:
        if "StreamArn" in params:
            return str(params["StreamArn"])
        return self._table(params).stream_arn

    def _admin_create_table(self, p: Mapping[str, Any]) -> dict[str, Any]:
        schema: list[tuple[str, str]] = []
        for entry in p.get("KeySchema") or [["pk", "S"]]:
            if isinstance(entry, Mapping):
                schema.append((entry["AttributeName"], entry.get("AttributeType", "S")))
            elif isinstance(entry, str):
                schema.append((entry, "S"))
            else:
                schema.append((entry[0], entry[1]))
        table = self.model.create_table(
            p["TableName"],
            schema,
            view_type=p.get("StreamViewType", "NEW_AND_OLD_IMAGES"),
            shards=int(p.get("Shards", 1)),
            stream_enabled=bool(p.get("StreamEnabled", True)),
        )
        return {"TableName": table.name, "StreamArn": table.stream_arn if table.streams else None}

    # -- minimal DynamoDB writes (no conditions or expressions) -------------------------------
    def _ddb_list_tables(self, params: Mapping[str, Any]) -> dict[str, Any]:
        with self.model.lock:
            return {"TableNames": sorted(self.model.tables)}

    def _ddb_put_item(self, params: Mapping[str, Any]) -> dict[str, Any]:
        table = self.model.table(params["TableName"])
        try:
            table.put_item(params["Item"], typed=True)
        except ValueError as exc:
            raise _error("ValidationException", str(exc)) from None
        return {}

    def _ddb_update_item(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Supports ``AttributeUpdates`` (legacy ``PUT`` actions) only; expressions are rejected."""
        table = self.model.table(params["TableName"])
        updates = params.get("AttributeUpdates")
        if params.get("UpdateExpression") or not isinstance(updates, Mapping):
            raise _error("ValidationException", "the local endpoint supports UpdateItem with AttributeUpdates only")
        changes: dict[str, Any] = {}
        for name, action in updates.items():
            if action.get("Action", "PUT") != "PUT":
                raise _error("ValidationException", "only PUT actions are supported locally")
            changes[name] = action["Value"]
        try:
            table.update_item(params["Key"], to_typed(changes, True), typed=True)
        except ValueError as exc:
            raise _error("ValidationException", str(exc)) from None
        return {}

    def _ddb_delete_item(self, params: Mapping[str, Any]) -> dict[str, Any]:
        table = self.model.table(params["TableName"])
        try:
            table.delete_item(params["Key"], typed=True)
        except ValueError as exc:
            raise _error("ValidationException", str(exc)) from None
        return {}


__all__ = ["Faults", "LocalStreamsServer"]
