"""Reading an account's signers and thresholds from Horizon (SEP-10 §"Verifying the signed
challenge": accounts that exist are checked against their on-chain signers).

Horizon URLs come from operator-controlled tenant config, not from wallets, so this client
does not go through the SSRF filter of :mod:`kyc_host.net.safe_http`; it is a separate client
so that the two can never be confused. Every failure other than an honest 404 is an error:
treating "Horizon is down" like "account does not exist" would let a master key log in to an
account whose master key was disabled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from stellar_sdk import StrKey
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httputil import (
    HTTPHeaders,
    HTTPInputError,
    HTTPMessageDelegate,
    RequestStartLine,
    ResponseStartLine,
)
from tornado.iostream import IOStream, StreamClosedError
from tornado.tcpclient import TCPClient

from kyc_host.net.limits import KeyedLimiter, NoSlot

DEFAULT_TIMEOUT = 4.0
MAX_RESPONSE_BYTES = 1024 * 1024
#: Idle connections kept per Horizon origin, and for how long. Servers drop idle keep-alive
#: connections after a while (commonly 60-75 s); a reused connection that turns out closed is
#: retried once on a fresh one, so these only bound how often that happens.
MAX_IDLE_PER_ORIGIN = 16
IDLE_SECONDS = 30.0


class HorizonUnavailable(Exception):
    """Horizon could not be reached, timed out or answered 5xx/429: retry later (503)."""


class HorizonBadAnswer(Exception):
    """Horizon answered, but not with an account record we can read (502)."""


@dataclass(frozen=True, slots=True)
class AccountSigners:
    """The ed25519 signers of an existing account and its medium threshold."""

    account_id: str
    signers: tuple[tuple[str, int], ...]  # (G... key, weight), weight 0..255
    med_threshold: int


class HorizonClient:
    """``await account(horizon_url, G)`` -> AccountSigners, or None if Horizon says 404.

    At most ``per_horizon_limit`` lookups run against one Horizon URL at a time, so a tenant
    whose (custom) Horizon hangs cannot take every connection from the others. Connections
    are kept alive per origin (:class:`_KeepAlivePool`): a new TCP (and TLS) connection per
    login was ~13% of a login's CPU (BENCHMARKS.md) and, to a remote Horizon, round trips.
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT, max_clients: int = 128,
                 per_horizon_limit: int = 32) -> None:
        self.timeout = min(timeout, 5.0)
        self._max_clients = max_clients  # kept for callers; concurrency is per_horizon_limit
        self._limiter = KeyedLimiter(per_horizon_limit)
        self._pool = _KeepAlivePool(self.timeout)

    def close(self) -> None:
        self._pool.close()

    async def account(self, horizon_url: str, account_id: str) -> AccountSigners | None:
        if not StrKey.is_valid_ed25519_public_key(account_id):
            raise ValueError("account_id must be a G... address")
        url = f"{horizon_url}/accounts/{account_id}"
        try:
            async with self._limiter.slot(horizon_url, self.timeout):
                code, body = await asyncio.wait_for(self._pool.get(url), self.timeout)
        except NoSlot:
            raise HorizonUnavailable("too many lookups in progress") from None
        except TimeoutError:
            raise HorizonUnavailable(f"no answer within {self.timeout:.1f} s") from None
        except (HTTPInputError, StreamClosedError, OSError, ValueError) as exc:
            raise HorizonUnavailable(f"{type(exc).__name__}: {exc}") from None
        if code == 404:
            return None
        if code == 429 or code >= 500:
            raise HorizonUnavailable(f"HTTP {code}")
        if code != 200:
            raise HorizonBadAnswer(f"HTTP {code}")
        return _parse_account(account_id, body)


@dataclass(slots=True)
class _Response(HTTPMessageDelegate):
    """Collects one response (status code and body) from an HTTP1Connection."""

    code: int = 0
    keep_alive: bool = False
    chunks: list[bytes] = field(default_factory=list)
    done: bool = False

    def headers_received(self, start_line: RequestStartLine | ResponseStartLine,
                         headers: HTTPHeaders) -> Awaitable[None] | None:
        if not isinstance(start_line, ResponseStartLine):  # pragma: no cover - client mode
            raise HTTPInputError("expected a response")
        self.code = start_line.code
        connection = headers.get("Connection", "").lower()
        # Reusable only if the body is delimited (not "read until close") and the server
        # did not ask to close (RFC 9112 §9.3).
        self.keep_alive = (start_line.version == "HTTP/1.1" and connection != "close"
                           and ("Content-Length" in headers
                                or headers.get("Transfer-Encoding", "").lower() == "chunked"))
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.chunks.append(chunk)
        return None

    def finish(self) -> None:
        self.done = True

    def on_connection_close(self) -> None:
        self.done = False


class _KeepAlivePool:
    """HTTP/1.1 GETs over kept-alive connections, per (scheme, host, port).

    Tornado's ``simple_httpclient`` opens a connection per request. This speaks HTTP/1.1
    through Tornado's own ``HTTP1Connection`` (the parser its client and server use) and
    returns a connection to the pool only after a complete, length-delimited response.
    Redirects are never followed (a Horizon URL is operator-configured; a redirect is an
    unreadable answer). TLS uses the default context: certificates and host names verified.
    """

    def __init__(self, connect_timeout: float) -> None:
        #: TCPClient closes a connection attempt itself when this passes (the caller's
        #: overall timeout cancels the coroutine, which would not close a half-open socket).
        self.connect_timeout = connect_timeout
        self._tcp = TCPClient()
        self._idle: dict[tuple[str, str, int], list[tuple[float, IOStream]]] = {}
        #: Every connection this pool opened and has not closed yet (idle or in use), so that
        #: close() leaves no socket behind, even one still in use by a lookup.
        self._open: set[IOStream] = set()
        self._closed = False
        self._ssl = ssl.create_default_context()
        self._prune_timer: asyncio.TimerHandle | None = None

    def close(self) -> None:
        self._closed = True
        if self._prune_timer is not None:
            self._prune_timer.cancel()
            self._prune_timer = None
        for stream in list(self._open):
            stream.close()
        self._open.clear()
        self._idle.clear()

    def __del__(self) -> None:
        # A client replaced without close() (tests swap Services.horizon) must not leave
        # kept-alive sockets for the garbage collector to complain about. (At interpreter
        # exit the loop may already be gone; nothing is left to protect then.)
        with contextlib.suppress(Exception):
            self.close()

    async def get(self, url: str) -> tuple[int, bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported Horizon URL {url!r}")
        origin = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https"
                                                               else 80))
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        stream = self._take(origin)
        if stream is not None:
            response = await self._exchange(stream, parts.netloc, path)
            if response is not None:
                return self._finish(origin, stream, response)
            # The server closed the idle connection before answering: a fresh one, once
            # (GET is idempotent, so sending it twice is harmless).
        stream = await self._connect(origin)
        response = await self._exchange(stream, parts.netloc, path)
        if response is None:
            raise StreamClosedError()
        return self._finish(origin, stream, response)

    def _take(self, origin: tuple[str, str, int]) -> IOStream | None:
        streams = self._idle.get(origin)
        now = time.monotonic()
        while streams:
            since, stream = streams.pop()
            if not stream.closed() and now - since < IDLE_SECONDS:
                return stream
            self._drop(stream)
        return None

    async def _connect(self, origin: tuple[str, str, int]) -> IOStream:
        if self._closed:
            raise StreamClosedError()
        scheme, host, port = origin
        attempt = asyncio.ensure_future(self._tcp.connect(
            host, port, max_buffer_size=2 * MAX_RESPONSE_BYTES,
            ssl_options=self._ssl if scheme == "https" else None, timeout=self.connect_timeout))
        try:
            stream = await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # The caller gave up (its timeout); the attempt may still connect: close it then.
            attempt.add_done_callback(_close_connected)
            raise
        self._open.add(stream)
        return stream

    def _drop(self, stream: IOStream) -> None:
        stream.close()
        self._open.discard(stream)

    async def _exchange(self, stream: IOStream, netloc: str, path: str) -> _Response | None:
        """One request/response on ``stream``; None if it closed before a complete answer."""
        connection = HTTP1Connection(stream, True, HTTP1ConnectionParameters(
            no_keep_alive=False, max_body_size=MAX_RESPONSE_BYTES, decompress=False))
        response = _Response()
        try:
            await connection.write_headers(
                RequestStartLine("GET", path, "HTTP/1.1"),
                HTTPHeaders({"Host": netloc, "Accept": "application/json",
                             "Connection": "keep-alive"}))
            connection.finish()
            await connection.read_response(response)
        except StreamClosedError:
            response.done = False  # closed while sending or reading: decided below
        except BaseException:
            self._drop(stream)  # cancelled (the caller's timeout): the stream is mid-exchange
            raise
        if not response.done:
            self._drop(stream)
            if response.code:  # an answer started, then broke off: not a stale connection
                raise HTTPInputError("incomplete response from Horizon")
            return None
        return response

    def _finish(self, origin: tuple[str, str, int], stream: IOStream,
                response: _Response) -> tuple[int, bytes]:
        idle = self._idle.setdefault(origin, [])
        if (response.keep_alive and not self._closed and not stream.closed()
                and len(idle) < MAX_IDLE_PER_ORIGIN):
            idle.append((time.monotonic(), stream))
            if self._prune_timer is None:
                self._prune_timer = asyncio.get_running_loop().call_later(
                    IDLE_SECONDS, self._on_prune_timer)
        else:
            self._drop(stream)
        return response.code, b"".join(response.chunks)


    def _on_prune_timer(self) -> None:
        """Every IDLE_SECONDS while connections are idle: close those idle too long, of every
        origin. An origin no lookup goes to any more (a tenant that changed its Horizon URL,
        or was offboarded) never reaches ``_take`` again: its idle connections stayed open,
        up to 16 a Horizon, for good."""
        self._prune_timer = None
        self._prune(time.monotonic())
        if self._idle and not self._closed:
            self._prune_timer = asyncio.get_running_loop().call_later(
                IDLE_SECONDS, self._on_prune_timer)

    def _prune(self, now: float) -> None:
        for origin, streams in list(self._idle.items()):
            fresh = [(since, s) for since, s in streams
                     if now - since < IDLE_SECONDS and not s.closed()]
            for since, stream in streams:
                if (since, stream) not in fresh:
                    self._drop(stream)
            if fresh:
                self._idle[origin] = fresh
            else:
                del self._idle[origin]


def _close_connected(attempt: asyncio.Future[IOStream]) -> None:
    if not attempt.cancelled() and attempt.exception() is None:
        attempt.result().close()


def _parse_account(account_id: str, body: bytes) -> AccountSigners:
    try:
        doc: Any = json.loads(body)
        thresholds = doc["thresholds"]
        med = _weight(thresholds["med_threshold"])
        signers = tuple(
            (str(s["key"]), _weight(s["weight"])) for s in doc["signers"]
            if s.get("type", "ed25519_public_key") == "ed25519_public_key")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HorizonBadAnswer(f"unreadable account record: {type(exc).__name__}") from None
    if doc.get("account_id", account_id) != account_id:
        raise HorizonBadAnswer("account record is for another account")
    for key, _weight_value in signers:
        if not StrKey.is_valid_ed25519_public_key(key):
            raise HorizonBadAnswer("signer key is not a G... address")
    return AccountSigners(account_id, signers, med)


def _weight(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError("weight/threshold must be an integer 0..255")
    return value
