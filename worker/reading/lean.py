"""The lean GetRecords path: one signed POST over a connection of botocore's own pool.

botocore's request pipeline costs about 0.5 ms of CPU per call before any byte is sent (some 20
event emissions, endpoint-ruleset resolution, serialization, user-agent assembly, retry
bookkeeping; see the profile in docs/benchmarks.md), which is most of what an idle shard costs.
GetRecords is one fixed request shape (``{"ShardIterator": ..., "Limit": ...}`` to one URL), so
after botocore has prepared it once this module sends it directly:

* **Learned from botocore, not re-implemented.**  The first GetRecords of a client goes through
  botocore; a ``before-sign`` handler records what botocore resolved for it: the endpoint URL
  (endpoint rules, ``endpoint_url``, FIPS/dual-stack settings), the signing name and region
  (including an endpoint rule's override), the signature version, and the request's own
  headers (``Content-Type``, ``X-Amz-Target``, ``User-Agent``; what another library's ``request-created``
  hook appends to the User-Agent later, as Powertools does, is not carried).  Only a plain SigV4 request with
  no per-request credentials, no proxy and botocore's urllib3 session qualifies; anything else
  keeps botocore's pipeline for good (:attr:`LeanGetRecords.why_not` says why).
* **Credentials stay botocore's**: the client's credentials object, asked for frozen credentials
  on every call (refreshable credentials refresh themselves there).  **Signing** is SigV4 as
  :class:`botocore.auth.SigV4Auth` does it, with the fixed parts and the day's signing key cached
  (:class:`SigV4Signer`; tests compare it byte for byte with botocore's): ``SigV4Auth.add_auth``
  alone cost ~60 us a call.
* **Connections stay botocore's**: each call borrows a connection from the urllib3 pool of the
  client's own HTTP session (so its TLS settings, CA bundle, pool size, connect timeout and TCP
  keep-alive apply; a dropped one is reconnected by urllib3), writes the request in one
  ``sendall`` and reads the answer itself (:func:`_read_response`: a status line, headers, a
  ``Content-Length`` body; anything else is not read), then returns the connection to the pool.
  urllib3's and http.client's per-request machinery (header objects, the email-module header
  parser) cost more than the exchange itself.
* **Measured**: ~130,000 instructions per empty call instead of ~2.9 million through botocore
  (``bench/call_instructions.py``); worker CPU per empty call in ``bench/call_cpu.py``.
* **Every answer but a clean 200 goes back to botocore.**  :meth:`LeanGetRecords.send` returns the
  body of a 200 response (whose ``x-amz-crc32``, when present, matches) and ``None`` for anything
  else: an HTTP error status (throttling, expired iterator, trimmed data, 5xx, ...), a connection
  or timeout error, a checksum mismatch, missing credentials.  The caller then sends the same
  request through botocore, whose parser, standard retry mode and exceptions decide the outcome
  exactly as before (GetRecords only reads, and its iterator stays valid for 15 minutes, so
  sending it again is harmless).  A failure therefore costs at most one extra request; the
  classification of errors is botocore's and :func:`worker.reading.streams.translate_error`'s,
  unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import socket
import threading
import time
import zlib
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from botocore.auth import SIGNED_HEADERS_BLACKLIST, _host_from_url

__all__ = ["LeanGetRecords"]

log = logging.getLogger("shardlease.streams")

# Headers of botocore's prepared request that are copied to every lean request.  The others are
# per-request (date, signature, token, length, invocation id / attempt counter) or botocore's own.
_KEPT_HEADERS: Final = ("Content-Type", "X-Amz-Target", "User-Agent")
_MAX_HEAD: Final = 65536  # bytes of status line + headers accepted before giving up on an answer


class _Unusable(Exception):
    """The answer cannot be read by the lean path (close the connection, let botocore send it)."""


class SigV4Signer:
    """AWS Signature Version 4 for one fixed request shape (POST to ``/``, fixed headers).

    The same algorithm, header selection and host rule as :class:`botocore.auth.SigV4Auth` (its
    ``SIGNED_HEADERS_BLACKLIST`` and ``_host_from_url``; tests compare the two byte for byte), with
    the parts that do not change between calls computed once: the canonical header block up to the
    date, the signed-header list, and the signing key per (secret key, day).  Costs about a tenth
    of ``SigV4Auth.add_auth`` (which builds and walks an ``AWSRequest`` per call).
    """

    def __init__(self, url: str, headers: dict[str, str], signing_name: str, region: str) -> None:
        self.host = _host_from_url(url)
        self.signing_name, self.region = signing_name, region
        self.headers = headers
        self._fixed = {k.lower(): " ".join(v.split()) for k, v in headers.items()
                       if k.lower() not in SIGNED_HEADERS_BLACKLIST}
        self._keys: dict[tuple[str, str], bytes] = {}

    def _signing_key(self, secret_key: str, day: str) -> bytes:
        key = self._keys.get((secret_key, day))
        if key is None:
            k = hmac.new(("AWS4" + secret_key).encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, self.signing_name, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            self._keys = {(secret_key, day): k}  # one entry: credentials and days only move forward
            key = k
        return key

    def sign(self, body: bytes, access_key: str, secret_key: str, token: str | None,
             amz_date: str) -> dict[str, str]:
        """The headers to send (``self.headers`` plus Host, X-Amz-Date, the token, Authorization)."""
        day = amz_date[:8]
        canon = dict(self._fixed)
        canon["host"] = self.host
        canon["x-amz-date"] = amz_date
        if token:
            canon["x-amz-security-token"] = token
        names = sorted(canon)
        signed = ";".join(names)
        canonical_request = "\n".join((
            "POST", "/", "", "".join(f"{n}:{canon[n]}\n" for n in names), signed,
            hashlib.sha256(body).hexdigest(),
        ))
        scope = f"{day}/{self.region}/{self.signing_name}/aws4_request"
        string_to_sign = "\n".join((
            "AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()))
        signature = hmac.new(self._signing_key(secret_key, day), string_to_sign.encode(), hashlib.sha256).hexdigest()
        out = dict(self.headers)
        out["Host"] = self.host
        out["X-Amz-Date"] = amz_date
        if token:
            out["X-Amz-Security-Token"] = token
        out["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}")
        return out


def _amz_date() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def _before_send_handlers(client: Any, operation: str) -> bool:
    """True if anything listens to botocore's ``before-send`` for this operation (moto, a stubber,
    a user's hook): such a handler may answer or change the request, so botocore must send it."""
    hyphenized = client.meta.service_model.service_id.hyphenize()
    emitter = client.meta.events._emitter
    return bool(list(emitter._handlers.prefix_search(f"before-send.{hyphenized}.{operation}")))


class LeanGetRecords:
    """Sends GetRecords without botocore's pipeline once :meth:`learn` has seen botocore prepare one.

    Thread-safe: learning happens once under a lock; :meth:`send` takes a connection from the
    urllib3 pool (a thread-safe queue) for the duration of one exchange.  ``ready`` is False until
    then, and for good once ``why_not`` is set.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.Lock()
        self.ready = False
        self.why_not: str | None = None  # set once the lean path cannot be used with this client
        self._signer: SigV4Signer | None = None
        self._pool: Any = None
        self._credentials: Any = None
        self._read_timeout: float | None = None

    def give_up(self, why: str, level: int = logging.DEBUG) -> None:
        """Keep botocore's pipeline for good (logged once, at ``level``)."""
        with self._lock:
            if self.why_not is None:
                self.why_not = why
                self.ready = False
                log.log(level, "lean GetRecords path off (GetRecords goes through botocore's pipeline): %s", why)

    def close(self) -> None:
        """Stop for good and close the connections this path holds (the client's ``close()`` does not reach
        them: an embedded worker's stop left one open, and the endpoint's server thread for it)."""
        with self._lock:
            pool, self._pool = self._pool, None
            self.ready = False
            if self.why_not is None:
                self.why_not = "closed"
        if pool is not None:
            pool.close()

    def learn(self, request: Any, signing_name: str, region_name: str, signature_version: Any) -> None:
        """``before-sign`` handler body: record botocore's resolved request for GetRecords (once)."""
        if self.ready or self.why_not is not None:
            return
        try:
            why = self._learn(request, signing_name, region_name, signature_version)
        except Exception as exc:  # botocore internals moved: stay on botocore's pipeline
            why = f"could not read botocore's prepared request ({type(exc).__name__}: {exc})"
        if why is not None:
            self.give_up(why)

    def _learn(self, request: Any, signing_name: str, region_name: str, signature_version: Any) -> str | None:
        if signature_version != "v4":
            return f"signature version {signature_version!r} (only SigV4 is sent directly)"
        signing = request.context.get("signing") or {}
        if signing.get("request_credentials") or signing.get("identity_cache") is not None:
            return "per-request credentials or an identity cache are configured"
        credentials = self._client._get_credentials()
        if credentials is None:
            return "no credentials (botocore raises NoCredentialsError)"
        url = request.url
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.query or parts.path not in ("", "/"):
            return f"endpoint URL {url!r} is not a plain http(s) URL with path /"
        if _before_send_handlers(self._client, "GetRecords"):
            return "before-send handlers are registered (a stubber or mock answers requests)"
        http_session = self._client._endpoint.http_session
        proxy_config = getattr(http_session, "_proxy_config", None)
        if proxy_config is None or proxy_config.proxy_url_for(url):
            return "a proxy is configured (or botocore's HTTP session is not its urllib3 session)"
        pool = http_session._get_connection_manager(url, None).connection_from_url(url)
        headers = {}
        for name in _KEPT_HEADERS:
            value = request.headers.get(name)
            if value is not None:
                headers[name] = value.decode() if isinstance(value, bytes) else str(value)
        if "X-Amz-Target" not in headers:
            return "botocore's GetRecords request has no X-Amz-Target header"
        signer = SigV4Signer(url, headers, signing.get("signing_name") or signing_name,
                             signing.get("region") or region_name)
        with self._lock:
            if self.why_not is not None or self.ready:
                return None
            self._signer = signer
            self._pool = pool
            self._read_timeout = pool.timeout.read_timeout
            self._credentials = credentials
            self.ready = True
        log.info("GetRecords: lean path on for %s (signing %s/%s)", url, signer.signing_name, signer.region)
        return None

    def send(self, iterator: str, limit: int) -> bytes | None:
        """The body of a 200 answer to GetRecords, or None: send it through botocore instead."""
        signer = self._signer
        credentials = self._credentials.get_frozen_credentials()  # refreshes refreshable credentials
        if signer is None or credentials is None or not credentials.access_key:
            return None
        body = orjson.dumps({"ShardIterator": iterator, "Limit": limit})
        headers = signer.sign(body, credentials.access_key, credentials.secret_key, credentials.token, _amz_date())
        head = "".join(["POST / HTTP/1.1\r\n", *(f"{k}: {v}\r\n" for k, v in headers.items()),
                        f"Content-Length: {len(body)}\r\n\r\n"]).encode("latin-1")
        pool = self._pool
        if pool is None:  # closed
            return None
        try:
            conn = pool._get_conn()
        except Exception as exc:  # pool closed or exhausted: botocore's pipeline knows what to do
            log.debug("lean GetRecords: no connection from the pool (%r); sending through botocore", exc)
            return None
        keep = False
        try:
            if conn.sock is None:
                conn.connect()
            sock = conn.sock
            sock.settimeout(self._read_timeout)
            sock.sendall(head + body)
            status, data, keep = _read_response(sock)
        except (OSError, _Unusable, ValueError) as exc:
            # Connection refused/reset/timed out, TLS errors, an answer we do not read (chunked, no
            # length, malformed): botocore sends it again, retries and maps the failure as before.
            log.debug("lean GetRecords: %s: %s; sending through botocore", type(exc).__name__, exc)
            return None
        except Exception as exc:  # anything urllib3's connect raises (e.g. its own error classes)
            log.debug("lean GetRecords: %s: %s; sending through botocore", type(exc).__name__, exc)
            return None
        finally:
            if not keep:
                conn.close()
            pool._put_conn(conn)
        if status != 200:
            return None
        return data


def _read_response(sock: socket.socket) -> tuple[int, bytes, bool]:
    """(status, body, keep-alive) of one HTTP/1.1 answer with a Content-Length.

    Raises :class:`_Unusable` for anything else (no length, chunked, a torn or oversized head), and
    for a 200 whose ``x-amz-crc32`` does not match its body.
    """
    buf = b""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            break
        if len(buf) > _MAX_HEAD:
            raise _Unusable("answer head too large")
        chunk = sock.recv(65536)
        if not chunk:
            raise _Unusable("connection closed before the answer's head")
        buf += chunk
    lines = buf[:end].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    if not version.startswith("HTTP/1."):
        raise _Unusable(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(rest[:3])
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _Unusable("malformed header line")
        fields[name.strip().lower()] = value.strip()
    if "transfer-encoding" in fields or "content-length" not in fields:
        raise _Unusable("answer without a plain Content-Length")
    length = int(fields["content-length"])
    body = buf[end + 4:]
    if len(body) < length:
        parts = [body]
        have = len(body)
        while have < length:
            chunk = sock.recv(min(length - have, 1 << 20))
            if not chunk:
                raise _Unusable("connection closed inside the body")
            parts.append(chunk)
            have += len(chunk)
        body = b"".join(parts)
    elif len(body) > length:
        raise _Unusable("more bytes than Content-Length (a pipelined or malformed answer)")
    keep = fields.get("connection", "").lower() != "close" and version == "HTTP/1.1"
    if status == 200:
        checksum = fields.get("x-amz-crc32")
        if checksum is not None and (not checksum.isdigit() or zlib.crc32(body) != int(checksum)):
            raise _Unusable("x-amz-crc32 does not match the body")
    return status, body, keep
