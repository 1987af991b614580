"""The one outbound HTTP client for URLs that come from outside (wallet domains, callback URLs,
plugin requests): SSRF-safe, size- and time-capped, bounded per tenant.

Rules (reliability-plan A6/A7; sep-digest §7):

- https only, no userinfo, and only hosts that resolve to public addresses; the address is
  checked inside the resolver used for the connect (:class:`PinnedResolver`), so the checked
  address is the connected address.
- Redirects are never followed; a 3xx answer is an error (an open redirect on a public host
  must not lead us to an internal one).
- A total deadline (at most :data:`MAX_TIMEOUT` seconds) covers waiting for a slot,
  resolving, connecting and reading; the body is cut while streaming as soon as it passes
  ``max_bytes``.
- At most ``per_key_limit`` requests in flight per ``limit_key`` (a tenant id), so one
  tenant's hanging fetches cannot use up the others' capacity, and ``max_clients`` overall.

Dev mode (never in production) allows http and non-public addresses, and honours
``static_hosts``: ``{"wallet.test": ("127.0.0.1", 8123)}`` sends any request for
``http(s)://wallet.test/...`` to that address over plain HTTP (with ``Host: wallet.test``), so
tests and the local demo can stand in for a wallet's site without DNS or TLS.
"""

from __future__ import annotations

import asyncio
import errno
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPInputError
from tornado.iostream import StreamClosedError
from tornado.netutil import Resolver
from tornado.simple_httpclient import (
    HTTPStreamClosedError,
    HTTPTimeoutError,
    SimpleAsyncHTTPClient,
)

from kyc_host.net.addresses import BlockedAddressError, PinnedResolver, is_public_address, parse_ip
from kyc_host.net.limits import KeyedLimiter, NoSlot

MAX_TIMEOUT = 5.0
DEFAULT_MAX_BYTES = 1024 * 1024
#: Nothing may ever buffer more than this, whatever a caller asks for.
HARD_MAX_BYTES = 10 * 1024 * 1024
_HOST = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
USER_AGENT = "kyc-host (+https://github.com/stellar/stellar-protocol)"


class FetchError(Exception):
    """An outbound request failed. ``str()`` is safe to show to the client who named the URL
    (it never contains response content)."""


class UnsafeUrl(FetchError):
    """The URL itself is not allowed (scheme, userinfo, IP literal, malformed)."""


class BlockedDestination(FetchError):
    """The host resolves to an address outside the public internet."""


class FetchTimeout(FetchError):
    """No complete answer within the deadline."""


class ResponseTooLarge(FetchError):
    """The response body passed ``max_bytes``; reading stopped there."""


class RedirectRefused(FetchError):
    """The server answered 3xx; redirects are never followed."""


class FetchFailed(FetchError):
    """DNS, TCP or TLS failure, or a connection closed early."""


@dataclass(frozen=True, slots=True)
class SafeResponse:
    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes

    def text(self) -> str:
        """The body as UTF-8; raises UnicodeDecodeError for anything else."""
        return self.body.decode("utf-8")


class _TooLarge(HTTPInputError):
    """Raised inside Tornado's reader to stop reading; as an HTTPInputError it closes the
    connection quietly instead of being logged as an uncaught exception."""


class _Body:
    """Collects a response body, refusing to hold more than ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.data = bytearray()
        self.too_large = False

    def on_header(self, line: str) -> None:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length" and value.strip().isdigit() \
                and int(value) > self.max_bytes:
            self._refuse()

    def on_chunk(self, chunk: bytes) -> None:
        # Enforced while streaming: reading stops as soon as the cap is passed.
        if len(self.data) + len(chunk) > self.max_bytes:
            self._refuse()
        self.data.extend(chunk)

    def _refuse(self) -> None:
        self.too_large = True
        raise _TooLarge("response body over the size limit")


class SafeHttpClient:
    """See the module docstring. One instance per process, on ``Services.http``."""

    def __init__(
        self,
        *,
        dev_mode: bool = False,
        static_hosts: Mapping[str, tuple[str, int]] | None = None,
        resolver: Resolver | None = None,
        per_key_limit: int = 10,
        max_clients: int = 64,
    ) -> None:
        if static_hosts and not dev_mode:
            raise ValueError("static_hosts is a dev-mode-only override")
        self.dev_mode = dev_mode
        self._static = {host.lower(): addr for host, addr in (static_hosts or {}).items()}
        self._inner_resolver = resolver
        self._limiter = KeyedLimiter(per_key_limit)
        self._max_clients = max_clients
        self._client: SimpleAsyncHTTPClient | None = None

    @property
    def resolver(self) -> Resolver | None:
        """The name resolver under the address check (None: the system's). Another client
        for untrusted URLs is built with it (callbacks/worker.py), so that every outbound
        path resolves the same way: a resolver injected for a test covers them all."""
        return self._inner_resolver

    def _http(self) -> SimpleAsyncHTTPClient:
        # Created on first use so it binds to the running event loop.
        if self._client is None:
            resolver = PinnedResolver(inner=self._inner_resolver, allow_private=self.dev_mode)
            self._client = SimpleAsyncHTTPClient(
                force_instance=True, resolver=resolver, max_clients=self._max_clients,
                max_body_size=HARD_MAX_BYTES, max_header_size=16 * 1024)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def check_url(self, url: str) -> SplitResult:
        """Validate a URL's form (not its DNS answer); raises UnsafeUrl. Use it to refuse
        bad URLs when they are registered, long before anything is fetched."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise UnsafeUrl("malformed URL") from None
        allowed = ("https", "http") if self.dev_mode else ("https",)
        if parts.scheme not in allowed:
            raise UnsafeUrl(f"URL scheme must be {' or '.join(allowed)}")
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise UnsafeUrl("URL must not contain credentials")
        host = (parts.hostname or "").lower()
        ip = parse_ip(host)
        if ip is None and _HOST.fullmatch(host) is None:
            raise UnsafeUrl("URL must name a DNS host (ASCII letters, digits, '-', '.') or an IP")
        if port == 0:
            raise UnsafeUrl("URL port must be 1..65535")
        if ip is not None and not self.dev_mode and not is_public_address(ip):
            raise BlockedDestination("URL points at a non-public address")
        return parts

    async def fetch(
        self,
        url: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = MAX_TIMEOUT,  # noqa: ASYNC109 - also bounds Tornado's socket timeouts
        limit_key: str = "",
    ) -> SafeResponse:
        """Fetch ``url`` under every rule above; raises a FetchError subclass.

        Any status other than 3xx is returned (the caller decides what a 404 means).
        ``timeout`` is clamped to :data:`MAX_TIMEOUT`, ``max_bytes`` to :data:`HARD_MAX_BYTES`.
        """
        parts = self.check_url(url)
        timeout = min(timeout, MAX_TIMEOUT)
        max_bytes = min(max_bytes, HARD_MAX_BYTES)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with self._limiter.slot(limit_key, timeout):
                request, received = self._request(parts, method, body, headers, max_bytes,
                                                  max(deadline - loop.time(), 0.05))
                response = await self._send(request, received)
        except NoSlot:
            raise FetchTimeout("too many outbound requests in progress") from None
        if 300 <= response.code < 400:
            raise RedirectRefused(f"server answered {response.code}; redirects are not followed")
        return SafeResponse(url=url, status=response.code, headers=dict(response.headers),
                            body=bytes(received.data))

    def _request(self, parts: SplitResult, method: str, body: bytes | None,
                 headers: Mapping[str, str] | None, max_bytes: int,
                 remaining: float) -> tuple[HTTPRequest, _Body]:
        all_headers = {"User-Agent": USER_AGENT, "Accept": "*/*", **(headers or {})}
        target = urlunsplit(parts)
        static = self._static.get((parts.hostname or "").lower())
        if static is not None:
            all_headers["Host"] = parts.netloc
            target = urlunsplit(("http", f"{static[0]}:{static[1]}", parts.path, parts.query, ""))
        received = _Body(max_bytes)
        request = HTTPRequest(
            target, method=method, body=body, headers=all_headers, follow_redirects=False,
            connect_timeout=remaining, request_timeout=remaining, decompress_response=False,
            header_callback=received.on_header, streaming_callback=received.on_chunk,
            allow_nonstandard_methods=True, validate_cert=True)
        return request, received

    async def _send(self, request: HTTPRequest, received: _Body) -> HTTPResponse:
        try:
            return await self._http().fetch(request, raise_error=False)
        except FetchError:
            raise
        except Exception as exc:
            if received.too_large:  # we closed the connection ourselves
                raise ResponseTooLarge(f"response larger than {received.max_bytes} bytes"
                                       ) from None
            raise _classify(exc) from None


def _classify(exc: Exception) -> Exception:
    """Tornado's and the OS's failures as FetchErrors (anything unexpected is kept)."""
    if isinstance(exc, BlockedAddressError):
        return BlockedDestination("host resolves to a non-public address")
    if isinstance(exc, HTTPTimeoutError):
        return FetchTimeout("no answer in time")
    if isinstance(exc, HTTPClientError | HTTPInputError | OSError | ValueError):
        return FetchFailed(f"could not fetch: {_reason(exc)}")
    return exc


def _reason(exc: Exception) -> str:
    """What went wrong, in words, for the common failures (never the host or URL, which the
    caller may not show); the exception's class name for the rest."""
    if isinstance(exc, socket.gaierror):
        return "host name could not be resolved"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate not accepted"
    if isinstance(exc, ssl.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError | ConnectionAbortedError | BrokenPipeError
                  | StreamClosedError | HTTPStreamClosedError):
        return "connection closed before an answer"
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "host unreachable"
    return type(exc).__name__
