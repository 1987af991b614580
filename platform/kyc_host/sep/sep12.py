"""SEP-12 KYC API (v1.15) at each tenant's ``KYC_SERVER`` (``<origin>/kyc``).

Thin handlers: authenticate, read the body, call the tenant's :class:`Sep12Service`, write.
Every handler streams its body (``@stream_request_body``) so that the SEP-10 token and the
declared size are checked in ``prepare()`` *before* any byte of the body is read: a request
without a valid token, or one larger than the tenant's limit, is answered (401 / 413 JSON)
without buffering it (reliability-plan B5). A body without ``Content-Length`` is counted as
it arrives and refused with 413 the moment it passes the limit.

Endpoints (SEP-12 §4.1; status codes per digest §4.10):

- ``GET/PUT /kyc/customer`` (PUT answers 202 ``{"id"}``)
- ``PUT /kyc/customer/verification`` (deprecated, still served: 200 + GET body)
- ``DELETE /kyc/customer/{account}`` (``G...`` or ``M...``; memo in the body)
- ``PUT /kyc/customer/callback``
- ``GET/POST /kyc/customer/files``

All of them answer CORS preflights: browser wallets call them cross-origin. ``PUT
/customer`` and uploads are counted against the tenant's rate limits in ``prepare()``, before
the body is read (kyc_host/ratelimit); ``GET /customer`` is not limited.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable

from tornado.web import stream_request_body

from kyc_host.errors import ApiError, BadRequest, RequestTimeout, ServiceUnavailable
from kyc_host.ratelimit import pacing
from kyc_host.ratelimit import web as limits
from kyc_host.ratelimit.bodyrate import BodyRate
from kyc_host.ratelimit.budget import NoRoom
from kyc_host.sep import sep9
from kyc_host.sep.sep10_tokens import Identity, bearer_token, verify_token
from kyc_host.sep.sep12_body import (
    SMALL_BODY_BYTES,
    Body,
    BodyBuffer,
    parse_body,
    parse_query,
    too_large,
)
from kyc_host.sep.sep12_service import Sep12Service
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.files import threaded_if_large
from kyc_host.web.base import BaseHandler
from kyc_host.web.turns import take_turn

log = logging.getLogger(__name__)

#: ``tcpi_state`` of a connection both sides still have open (linux/tcp_states.h).
_TCP_ESTABLISHED = 1
#: Methods whose requests carry a body that handlers read with :meth:`Sep12Handler.body`.
_BODY_METHODS = frozenset({"PUT", "POST", "DELETE"})
#: Multipart part names that carry file contents (with or without ``filename=``).
FILE_PARTS = sep9.binary_fields() | {"file"}


@stream_request_body
class Sep12Handler(BaseHandler):
    """Base of the SEP-12 handlers: token check and bounded body before the body arrives."""

    identity: Identity
    _buffer: BodyBuffer | None = None
    #: Methods whose bodies are uploads, metered by ``limits.upload_bytes_per_second``.
    paced_methods: frozenset[str] = frozenset()
    _admitted = 0  # declared bytes of this request still queued in its tenant's share
    _held = 0  # bytes this request holds of the process's upload memory (ratelimit/budget.py)
    _body_taken = False  # the handler method has the body: it is in memory until the answer
    _watch: BodyRate | None = None  # cuts an upload whose body cannot arrive in time

    def body_limit(self) -> int:
        """The most body bytes this request may carry (endpoints without files: 64 KiB)."""
        return SMALL_BODY_BYTES

    def prepare(self) -> None:
        super().prepare()  # resolves the tenant from Host (unknown -> 404, suspended -> 503)
        if self.request.method == "OPTIONS":
            return  # CORS preflights carry no token (BaseHandler.options answers them)
        token = bearer_token(self.request.headers.get("Authorization"))
        self.identity = verify_token(self.tenant, token, self.services.verified_tokens)
        self._buffer = BodyBuffer(self.body_limit(), self.request.headers.get("Content-Length"))
        if self.request.method in _BODY_METHODS:
            self.waiting_on_client()  # until body(): no loop work while the body is on its way

    def compute_etag(self) -> None:
        """No ETag: answers are one customer's current state, sent ``Cache-Control: no-store``,
        so nothing may keep them to revalidate. Tornado's default hashed every GET body
        (SHA-1) and matched If-None-Match (``*`` turned any GET into an empty 304): ~2% of a
        GET /customer's CPU for no use (BENCHMARKS.md)."""
        return None

    def check_etag_header(self) -> bool:
        return False  # no ETag, so no conditional answer (and no If-None-Match parsing)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        if self._buffer is None or self._finished:
            return None
        keep_reading = self._buffer.add(chunk)
        if self._buffer.overflowed and (not keep_reading or self.request.method == "GET"):
            # Answer now; Tornado stops handing us the rest and closes the connection.
            # (Below the drain cap, PUT/POST/DELETE answer 413 from body() instead.)
            self._refuse(too_large(self._buffer.limit))
            return None
        if self.request.method in self.paced_methods and not self._buffer.overflowed:
            return self._pace(len(chunk))
        return None

    async def _admit_upload(self) -> None:
        """Before any byte of the body is read: queue this upload's declared length in its
        tenant's bandwidth share (429 if its turn does not come within half the body
        timeout: ratelimit/pacing.py), then hold it in the process's upload memory (503 if
        that does not come within what is left of the half: ratelimit/budget.py). Called
        after the rate limits."""
        length = self.request.headers.get("Content-Length", "")
        declared = int(length) if length.isdigit() else 0  # BodyBuffer refused the others
        services, tenant_id = self.services, self.tenant.id
        max_wait = services.settings.body_timeout_seconds / 2
        started = time.monotonic()
        try:
            await services.upload_pacers.of(self.tenant).admit(declared, max_wait,
                                                               self._stop_waiting)
        finally:
            waited = time.monotonic() - started
            if waited > 0.001:
                services.metrics.upload_admission_wait.labels(tenant_id).inc(waited)
        self._admitted = declared
        # A chunked body may grow to the endpoint's limit: that much is held for it.
        await self._hold_memory(declared or self.body_limit(), max_wait - waited)
        await take_turn()  # a busy tenant's uploads, admitted, read their bodies after others
        if declared > pacing.SMALL_BYTES and self._buffer is not None:
            buffer = self._buffer
            self._watch = BodyRate(declared, services.settings.body_timeout_seconds,
                                   lambda: buffer.received, self._too_slow)

    def _too_slow(self, error: RequestTimeout) -> None:
        """The rest of this upload cannot arrive in time (ratelimit/bodyrate.py): 408 now
        (Tornado closes the connection, its body unread), its bytes given back."""
        self._watch = None
        if self._finished or self._body_taken:
            return
        self.services.metrics.upload_too_slow.labels(self.tenant.id).inc()
        self._refuse(error)

    async def _hold_memory(self, size: int, max_wait: float) -> None:
        services, tenant_id = self.services, self.tenant.id
        started = time.monotonic()
        try:
            self._held = await services.upload_budget.reserve(tenant_id, size, max_wait,
                                                              self._stop_waiting)
        except NoRoom:
            services.metrics.upload_budget_refused.labels(tenant_id).inc()
            raise
        finally:
            waited = time.monotonic() - started
            if waited > 0.001:
                services.metrics.upload_budget_wait.labels(tenant_id).inc(waited)
        services.metrics.upload_bytes_in_flight.set(services.upload_budget.held)

    def _stop_waiting(self) -> ApiError | None:
        """Why an upload waiting for its turn should stop waiting, if it should. Tornado does
        not watch a connection for its client leaving until the request is read, so the
        socket is asked: a client that left must not keep its place in the line."""
        if self.services.draining:
            return ServiceUnavailable("the server is shutting down; retry", retry_after=1)
        stream = self.request.connection.stream  # type: ignore[union-attr]
        if stream is None or stream.closed() or _peer_closed(stream.socket):
            return BadRequest("the client closed the connection while its upload waited")
        return None

    def _release_upload(self) -> None:
        if self._admitted:
            self.services.upload_pacers.of(self.tenant).release(self._admitted)
            self._admitted = 0

    def _release_memory(self) -> None:
        if self._held:
            budget = self.services.upload_budget
            budget.release(self.tenant.id, self._held)
            self._held = 0
            self.services.metrics.upload_bytes_in_flight.set(budget.held)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None

    def on_finish(self) -> None:
        self._stop_watch()
        self._release_upload()
        self._release_memory()
        super().on_finish()

    def on_connection_close(self) -> None:
        self._stop_watch()
        self._release_upload()
        if not self._body_taken:  # else the body is in use until the answer (on_finish)
            self._release_memory()
        super().on_connection_close()

    def _pace(self, size: int) -> Awaitable[None] | None:
        """Hold the upload back while its tenant is over ``upload_bytes_per_second``
        (ratelimit/pacing.py); Tornado reads no more of this body until the pause ends."""
        admitted = min(size, self._admitted)
        self._admitted -= admitted
        wait = self.services.upload_pacers.of(self.tenant).arrived(size, admitted)
        if wait <= 0:
            return None
        if self._watch is not None:
            self._watch.paused(wait)  # the server's pause, not the client's slowness
        self.services.metrics.upload_paced.labels(self.tenant.id).inc(wait)
        return asyncio.sleep(wait)

    def _refuse(self, error: ApiError) -> None:
        self.log_exception(type(error), error, None)
        self.send_error(error.status, exc_info=(type(error), error, None))

    async def body(self) -> Body:
        """The parsed body (each handler reads it once; the raw bytes are released here).
        A large one is put together and parsed on a file thread: a 10 MiB multipart body
        held the event loop 20-30 ms, and every tenant's requests with it (the
        noisy-neighbour benchmark, BENCHMARKS.md)."""
        self._body_taken = True
        self._stop_watch()
        self.back_from_client()
        content_type = self.request.headers.get("Content-Type")
        buffer = self._buffer
        if buffer is None:
            return parse_body(content_type, b"", file_names=FILE_PARTS)
        return await threaded_if_large(
            buffer.received,
            lambda: parse_body(content_type, buffer.take(), file_names=FILE_PARTS))

    def query(self) -> dict[str, str]:
        return parse_query(self.request.query_arguments)

    @property
    def sep12(self) -> Sep12Service:
        services = self.services
        return service_for(self.tenant, services.store, services.settings, services.http,
                           services.metrics)


class CustomerHandler(Sep12Handler):
    """SEP-12 §GET /customer and §PUT /customer."""

    paced_methods = frozenset({"PUT"})

    cors_methods = "GET, PUT"

    def body_limit(self) -> int:
        if self.request.method == "PUT":
            return self.tenant.config.limits.max_request_bytes
        return SMALL_BODY_BYTES

    def prepare(self) -> Awaitable[None] | None:  # type: ignore[override]
        super().prepare()
        # Limits are checked before the body is read (a refused upload is never buffered).
        # GET, the polling hot path, stays synchronous: not rate limited, no store access.
        return self._limit_put() if self.request.method == "PUT" else None

    async def _limit_put(self) -> None:
        await limits.limit(self, "customer_puts_per_ip")
        await limits.limit(self, "customer_puts_per_account", self.identity.sub)
        if _is_multipart(self.request.headers.get("Content-Type")):
            await _limit_uploads(self)
        await self._admit_upload()

    async def get(self) -> None:
        self.write_json(await self.sep12.get_customer(self.identity, self.query()))

    async def put(self) -> None:
        customer_id = await self.sep12.put_customer(self.identity, await self.body())
        self.write_json({"id": customer_id}, status=202)  # the SDF validator requires 202


class VerificationHandler(Sep12Handler):
    """SEP-12 §PUT /customer/verification (deprecated in v1.12.0, served for old clients)."""

    cors_methods = "PUT"

    async def put(self) -> None:
        self.write_json(await self.sep12.put_verification(self.identity, await self.body()))


class CallbackHandler(Sep12Handler):
    """SEP-12 §PUT /customer/callback: store the URL (delivery is the callbacks worker's)."""

    cors_methods = "PUT"

    async def put(self) -> None:
        await self.sep12.put_callback(self.identity, await self.body())
        self.write_json({})


class DeleteHandler(Sep12Handler):
    """SEP-12 §DELETE /customer/{account}."""

    cors_methods = "DELETE"

    async def delete(self, account: str) -> None:
        await self.sep12.delete_customer(self.identity, account, await self.body(),
                                         request_id=self.request_id)
        self.write_json({})


class FilesHandler(Sep12Handler):
    """SEP-12 §/customer/files: upload one file (POST), list by file or customer (GET)."""

    paced_methods = frozenset({"POST"})

    cors_methods = "GET, POST"

    def body_limit(self) -> int:
        if self.request.method == "POST":
            return self.tenant.config.limits.max_request_bytes
        return SMALL_BODY_BYTES

    def prepare(self) -> Awaitable[None] | None:  # type: ignore[override]
        super().prepare()
        return self._limit_post() if self.request.method == "POST" else None

    async def _limit_post(self) -> None:
        await _limit_uploads(self)
        await self._admit_upload()

    async def get(self) -> None:
        self.write_json(await self.sep12.list_files(self.identity, self.query()))

    async def post(self) -> None:
        self.write_json(await self.sep12.upload_file(self.identity, await self.body()))


def _peer_closed(sock: socket.socket | None) -> bool:
    """Whether the client closed or reset its side of the TCP connection (Linux: the socket
    left ESTABLISHED, e.g. CLOSE_WAIT after its FIN); False where the kernel cannot say."""
    if sock is None:
        return True
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (OSError, AttributeError):
        return False
    return info[0] != _TCP_ESTABLISHED


def _is_multipart(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == "multipart/form-data"


async def _limit_uploads(handler: Sep12Handler) -> None:
    """An upload: a multipart PUT /customer or POST /customer/files."""
    await limits.limit(handler, "uploads_per_ip")
    await limits.limit(handler, "uploads_per_account", handler.identity.sub)


routes = [
    (r"/kyc/customer", CustomerHandler),
    (r"/kyc/customer/verification", VerificationHandler),
    (r"/kyc/customer/callback", CallbackHandler),
    (r"/kyc/customer/files", FilesHandler),
    (r"/kyc/customer/([^/]+)", DeleteHandler),
]
