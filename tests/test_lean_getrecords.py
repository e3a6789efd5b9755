"""worker.reading.lean: the lean GetRecords path and every way back to botocore's pipeline.

A stdlib HTTP server on 127.0.0.1 records each GetRecords with its headers.  botocore's requests
carry ``amz-sdk-invocation-id``; the lean path's do not, which tells the two apart.  A test can
make the server answer lean requests with raw bytes (chunked, no length, a bad checksum, ...).
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import botocore.auth
import botocore.session
import orjson
import pytest
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials, RefreshableCredentials

from tests.test_streams_client import SHARD, aws_env, error, exact, page_body  # noqa: F401 (aws_env: autouse)
from worker.errors import (
    AccessDenied,
    ExpiredIterator,
    InvalidRequest,
    ShardNotFound,
    StreamServerError,
    StreamThrottled,
    TrimmedData,
)
from worker.reading.lean import SigV4Signer, _read_response, _Unusable
from worker.reading.streams import BENCH_PATH_ENV, StreamsClient

Reply = tuple[int, bytes]


class Server:
    """Answers GetRecords with ``reply(payload)``; ``raw_for_lean`` (bytes) answers lean requests raw.
    ``tls``: (certificate file, key file) to serve HTTPS."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.reply: Callable[[dict[str, Any]], Reply] = lambda p: (200, page_body(3))
        self.raw_for_lean: bytes | None = None
        self.keep_alive = True
        self.seen: list[tuple[str, dict[str, Any], dict[str, str]]] = []  # (path, payload, headers)
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                headers = {k.lower(): v for k, v in self.headers.items()}
                lean = "amz-sdk-invocation-id" not in headers
                srv.seen.append(("lean" if lean else "botocore", payload, headers))
                if lean and srv.raw_for_lean is not None:
                    self.wfile.write(srv.raw_for_lean)
                    self.wfile.flush()
                    self.close_connection = True
                    return
                status, body = srv.reply(payload)
                self.send_response(status)
                self.send_header("Content-Type", "application/x-amz-json-1.0")
                self.send_header("x-amz-crc32", str(zlib.crc32(body)))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.close_connection = not srv.keep_alive

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.seen]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.close()


def new_client(**kwargs: Any) -> StreamsClient:
    """A StreamsClient without moto's before-send hook, which every botocore session created after
    moto's import carries (other test modules of this process import moto); it is inert while no
    mock runs, but the lean path rightly stays off for any client with a before-send handler."""
    client = StreamsClient(region_name="us-east-1", **kwargs)
    models = sys.modules.get("moto.core.models")
    if models is not None:
        client.boto_client.meta.events.unregister("before-send", models.botocore_stubber)
    return client


def warm(url: str, **kwargs: Any) -> StreamsClient:
    """A client whose first GetRecords went through botocore (so the lean path has learned)."""
    kwargs.setdefault("max_attempts", 1)
    kwargs.setdefault("lean_http", None)  # what the worker passes
    client = new_client(endpoint_url=url, **kwargs)
    client.get_records("it-0", shard_id=SHARD)
    return client


# --- the lean path is taken, and reads what botocore reads -------------------------------------------


def test_second_call_is_lean_and_equals_botocore_path(server: Server) -> None:
    body = page_body(30)
    server.reply = lambda p: (200, body)
    lean = warm(server.url)
    assert lean.lean_path
    slow = new_client(endpoint_url=server.url, max_attempts=1, lean_http=False)
    a = lean.get_records("it-1", 500, shard_id=SHARD)
    b = slow.get_records("it-1", 500, shard_id=SHARD)
    assert server.paths() == ["botocore", "lean", "botocore"]
    assert server.seen[1][1] == server.seen[2][1] == {"ShardIterator": "it-1", "Limit": 500}
    assert a.next_iterator == b.next_iterator == "it-next"
    assert len(a.records) == 30
    for x, y in zip(a.records, b.records, strict=True):
        assert exact((x.keys, x.new_image, x.old_image)) == exact((y.keys, y.new_image, y.old_image))
        assert (x.event_id, x.event_name, x.sequence_number, x.approximate_creation_time, x.raw) == (
            y.event_id, y.event_name, y.sequence_number, y.approximate_creation_time, y.raw)
    # The lean request carries what botocore's does, signed with the same scope.
    lean_h, boto_h = server.seen[1][2], server.seen[2][2]
    for name in ("content-type", "x-amz-target", "x-amz-security-token", "host"):
        assert lean_h[name] == boto_h[name], name
    # botocore's User-Agent as it was prepared; what other libraries' request-created hooks append in this process
    # (Powertools, imported by other tests, adds " PTEnv/...") is not carried by the lean path.
    assert lean_h["user-agent"].startswith("Boto3/") and boto_h["user-agent"].startswith(lean_h["user-agent"])
    assert lean_h["authorization"].split("Signature=")[0].replace(lean_h["x-amz-date"][:8], "D") == \
        boto_h["authorization"].split("Signature=")[0].replace(boto_h["x-amz-date"][:8], "D")
    lean.close()
    slow.close()


def test_shard_end_and_empty_page_over_lean(server: Server) -> None:
    client = warm(server.url)
    server.reply = lambda p: (200, page_body(0))
    page = client.get_records("it-1", shard_id=SHARD)
    assert page.records == [] and page.next_iterator == "it-next"
    server.reply = lambda p: (200, page_body(0, next_iterator=None))
    assert client.get_records("it-2", shard_id=SHARD).shard_end
    assert server.paths() == ["botocore", "lean", "lean"]


@pytest.mark.parametrize(
    "body", [b"{}", b"[]", b'{"Records": {}}', b"not json", b'{"Records": [], "NextShardIterator": 5}'])
def test_unreadable_200_over_lean_is_retryable_never_shard_end(server: Server, body: bytes) -> None:
    client = warm(server.url)
    server.reply = lambda p: (200, body)
    with pytest.raises(StreamServerError):
        client.get_records("it-1", shard_id=SHARD)
    # botocore was asked too, and read the same non-page: a retryable error, the lean path stays on.
    assert server.paths() == ["botocore", "lean", "botocore"]
    assert client.lean_path


def test_lean_only_non_page_turns_the_lean_path_off(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """A 200 to the lean request that is not a page, while botocore's answer is: the endpoint does not
    understand the lean request, so the page is botocore's and later calls stay on botocore."""
    client = warm(server.url)
    server.raw_for_lean = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    with caplog.at_level(logging.WARNING, logger="shardlease"):
        page = client.get_records("it-1", shard_id=SHARD)
    assert len(page.records) == 3 and page.next_iterator == "it-next"
    assert not client.lean_path and "not a page" in (client._lean.why_not or "")
    assert [r.getMessage() for r in caplog.records if "lean GetRecords path off" in r.getMessage()]
    client.get_records("it-2", shard_id=SHARD)
    assert server.paths() == ["botocore", "lean", "botocore", "botocore"]


# --- errors: the same request goes through botocore, which classifies as before --------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "ExpiredIteratorException", ExpiredIterator),
        (400, "TrimmedDataAccessException", TrimmedData),
        (400, "LimitExceededException", StreamThrottled),
        (400, "ProvisionedThroughputExceededException", StreamThrottled),
        (500, "InternalServerError", StreamServerError),
        (503, "ServiceUnavailable", StreamServerError),
        (400, "ResourceNotFoundException", ShardNotFound),
        (400, "ValidationException", InvalidRequest),
        (400, "ExpiredTokenException", AccessDenied),
    ],
)
def test_errors_go_through_botocore(server: Server, status: int, code: str, cls: type) -> None:
    client = warm(server.url)
    server.reply = lambda p: error(status, code, "Requested resource not found: Shard does not exist")
    with pytest.raises(cls) as info:
        client.get_records("it-1", shard_id=SHARD)
    assert type(info.value) is cls and getattr(info.value, "code", None) == code
    assert info.value.__cause__ is not None  # botocore's ClientError
    assert server.paths() == ["botocore", "lean", "botocore"]  # one extra request, then botocore's answer
    server.reply = lambda p: (200, page_body(1))
    assert len(client.get_records("it-2", shard_id=SHARD).records) == 1
    assert server.paths()[-1] == "lean"  # an error does not turn the lean path off


def test_botocore_retries_still_apply(server: Server) -> None:
    client = warm(server.url.replace("127.0.0.1", "localhost"), max_attempts=3)
    assert client.lean_path
    client = new_client(endpoint_url=server.url, max_attempts=3, lean_http=True)
    client.get_records("it-0", shard_id=SHARD)
    server.seen.clear()
    replies = iter([error(500, "InternalServerError"), error(500, "InternalServerError"), (200, page_body(2))])
    server.reply = lambda p: next(replies)
    assert len(client.get_records("it-1", shard_id=SHARD).records) == 2
    # The lean request got a 500; botocore's first attempt too, its standard-mode retry the page.
    assert server.paths() == ["lean", "botocore", "botocore"]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"Rec\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n\r\n{\"Records\": []}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nx-amz-crc32: 12345\r\n\r\n{\"Records\": []}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"Records\": []}",
        b"HTTP/1.1 200 OK\r\nContent-Len",
        b"garbage\r\n\r\n",
        b"",
    ],
    ids=["chunked", "no-length", "bad-crc32", "short-body", "torn-head", "not-http", "closed"],
)
def test_unreadable_answers_are_resent_through_botocore(server: Server, raw: bytes) -> None:
    client = warm(server.url)
    server.raw_for_lean = raw
    server.reply = lambda p: (200, page_body(4))
    page = client.get_records("it-1", shard_id=SHARD)
    assert len(page.records) == 4 and page.next_iterator == "it-next"
    assert server.paths() == ["botocore", "lean", "botocore"]
    server.raw_for_lean = None
    assert len(client.get_records("it-2", shard_id=SHARD).records) == 4
    assert server.paths()[-1] == "lean"  # the broken connection was dropped, a new one works


def test_connection_refused_after_learning_is_retryable(server: Server) -> None:
    server.keep_alive = False
    client = warm(server.url)
    assert client.lean_path
    server.close()
    with pytest.raises(StreamServerError):
        client.get_records("it-1", shard_id=SHARD)


def test_read_response_keep_alive_and_crc() -> None:
    body = b'{"Records": []}'
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 15\r\nx-amz-crc32: %d\r\n\r\n" % zlib.crc32(body) + body)
        assert _read_response(b) == (200, body, True)
        a.sendall(b"HTTP/1.1 400 Bad\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
        assert _read_response(b) == (400, b"{}", False)
        a.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}EXTRA")
        with pytest.raises(_Unusable):
            _read_response(b)


# --- signing: byte for byte what botocore's SigV4Auth produces ---------------------------------------


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/", "https://streams.dynamodb.us-east-1.amazonaws.com",
                                 "https://streams.dynamodb.eu-west-1.amazonaws.com:443/", "http://[::1]:4566/",
                                 "http://LOCALHOST:80"])
@pytest.mark.parametrize("token", [None, "FwoGZXIvYXdzE//token+with/odd=chars"])
def test_signer_matches_botocore(monkeypatch: pytest.MonkeyPatch, url: str, token: str | None) -> None:
    when = datetime.datetime(2026, 12, 1, 23, 59, 59)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: when)
    headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDBStreams_20120810.GetRecords",
               "User-Agent": "Boto3/1.44.8 md/Botocore#1.44.8  ua/2.1 os/linux"}
    body = orjson.dumps({"ShardIterator": "arn:aws:dynamodb:...|1|abc==", "Limit": 1000})
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    request = AWSRequest("POST", url, data=body, headers=headers)
    botocore.auth.SigV4Auth(creds, "dynamodb", "eu-west-1").add_auth(request)
    ours = SigV4Signer(url, headers, "dynamodb", "eu-west-1").sign(
        body, creds.access_key, creds.secret_key, token, when.strftime("%Y%m%dT%H%M%SZ"))
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["X-Amz-Date"] == request.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == request.headers.get("X-Amz-Security-Token")
    assert ours["Host"] == botocore.auth._host_from_url(url)


def test_refreshed_credentials_are_used(server: Server) -> None:
    keys = iter(f"AKID{i}" for i in range(100))
    now = datetime.datetime.now(datetime.UTC)

    def refresh() -> dict[str, str]:
        # Expiring within botocore's mandatory refresh window: every use refreshes.
        return {"access_key": next(keys), "secret_key": "s", "token": "t",
                "expiry_time": (now + datetime.timedelta(seconds=30)).isoformat()}

    bs = botocore.session.Session()
    bs._credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    client = warm(server.url, session=boto3.Session(botocore_session=bs))
    client.get_records("it-1", shard_id=SHARD)
    client.get_records("it-2", shard_id=SHARD)
    assert server.paths() == ["botocore", "lean", "lean"]
    used = [h["authorization"].split("Credential=")[1].split("/")[0] for _, _, h in server.seen]
    assert len(set(used)) == 3, used  # a fresh key for each call, the lean ones included


# --- when the lean path stays off --------------------------------------------------------------------


def test_off_when_asked(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    off = warm(server.url, lean_http=False)
    off.get_records("it-1", shard_id=SHARD)
    default = new_client(endpoint_url=server.url)  # not the worker: off
    default.get_records("it-0", shard_id=SHARD)
    default.get_records("it-1", shard_id=SHARD)
    monkeypatch.setenv(BENCH_PATH_ENV, "botocore")
    bench_off = warm(server.url)
    bench_off.get_records("it-1", shard_id=SHARD)
    forced = warm(server.url, lean_http=True)  # an explicit True ignores the bench switch
    forced.get_records("it-1", shard_id=SHARD)
    assert not off.lean_path and not default.lean_path and not bench_off.lean_path and forced.lean_path
    assert server.paths() == ["botocore"] * 7 + ["lean"]


def test_off_with_before_send_handlers(server: Server) -> None:
    """moto (and any user hook) answers or changes requests in before-send: botocore must send them."""
    client = new_client(endpoint_url=server.url, max_attempts=1, lean_http=True)
    client.boto_client.meta.events.register("before-send.dynamodb-streams", lambda **kw: None)
    client.get_records("it-0", shard_id=SHARD)
    client.get_records("it-1", shard_id=SHARD)
    assert not client.lean_path and "before-send" in (client._lean.why_not or "")
    assert server.paths() == ["botocore", "botocore"]


def test_off_behind_a_proxy(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", server.url)  # the server answers proxied requests just the same
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = warm(server.url.replace("127.0.0.1", "shardlease-test.invalid"))
    client.get_records("it-1", shard_id=SHARD)
    assert not client.lean_path and "proxy" in (client._lean.why_not or "")


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_https_uses_botocores_tls_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lean path's connections come from botocore's pool: botocore's CA bundle verifies them, and a
    certificate that bundle does not trust is refused (the lean attempt falls back; botocore refuses too)."""
    if not shutil.which("openssl"):
        pytest.skip("openssl not installed")
    trusted = _self_signed(tmp_path, "trusted")
    other = _self_signed(tmp_path, "other")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(trusted[0]))
    good, bad = Server(tls=trusted), Server(tls=other)
    try:
        client = warm(good.url)
        assert client.lean_path
        assert len(client.get_records("it-1", shard_id=SHARD).records) == 3
        assert good.paths() == ["botocore", "lean"]
        # Point the lean path's pool (botocore's, same TLS settings) at a server with an untrusted certificate:
        # the handshake fails, so the lean attempt never sends the request and botocore reads the page.
        client._lean._pool = client.boto_client._endpoint.http_session._get_connection_manager(
            bad.url, None).connection_from_url(bad.url)
        assert len(client.get_records("it-2", shard_id=SHARD).records) == 3
        assert bad.seen == [] and good.paths() == ["botocore", "lean", "botocore"]
        with pytest.raises(StreamServerError):  # botocore refuses it too
            warm(bad.url)
        assert bad.seen == []
    finally:
        good.close()
        bad.close()


_CLOSE_SCRIPT = """
import os, threading
from worker.local import LocalStreamsServer
from worker.reading.streams import StreamsClient

os.environ.update(AWS_ACCESS_KEY_ID="t", AWS_SECRET_ACCESS_KEY="t", AWS_REGION="us-east-1")
with LocalStreamsServer(port=0) as server:
    table = server.create_table("orders", shards=1)
    table.put_item({"pk": "a"})
    before = set(threading.enumerate())
    client = StreamsClient(region_name="us-east-1", endpoint_url=server.endpoint_url, lean_http=True)
    shard = client.list_shards(table.stream_arn)[0]
    iterator = client.get_shard_iterator(table.stream_arn, shard.shard_id, "TRIM_HORIZON")
    for _ in range(3):
        iterator = client.get_records(iterator, 100, shard_id=shard.shard_id).next_iterator
    assert client.lean_path, "the lean path is not in use"
    client.close()
    for _ in range(100):
        left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
        if not left:
            break
        threading.Event().wait(0.02)
    assert left == [], left
print("closed")
"""


def test_close_closes_the_lean_paths_connections() -> None:
    """StreamsClient.close() left the lean path's connection open (botocore's close does not reach it): an embedded
    worker's stop left the endpoint's request thread for it running (tests/test_embedding.py saw it).

    Runs in a fresh interpreter: once a test of this process has imported moto (it listens to botocore's
    before-send), the lean path stays off here, and the test would check nothing."""
    done = subprocess.run([sys.executable, "-c", _CLOSE_SCRIPT], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0 and done.stdout.strip() == "closed", done.stderr[-3000:]
