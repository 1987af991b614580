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

import logging
from collections.abc import Awaitable

from tornado.web import stream_request_body

from kyc_host.errors import ApiError
from kyc_host.ratelimit import web as limits
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
from kyc_host.web.base import BaseHandler

log = logging.getLogger(__name__)

#: Multipart part names that carry file contents (with or without ``filename=``).
FILE_PARTS = sep9.binary_fields() | {"file"}


@stream_request_body
class Sep12Handler(BaseHandler):
    """Base of the SEP-12 handlers: token check and bounded body before the body arrives."""

    identity: Identity
    _buffer: BodyBuffer | None = None

    def body_limit(self) -> int:
        """The most body bytes this request may carry (endpoints without files: 64 KiB)."""
        return SMALL_BODY_BYTES

    def prepare(self) -> None:
        super().prepare()  # resolves the tenant from Host (unknown -> 404, suspended -> 503)
        if self.request.method == "OPTIONS":
            return  # CORS preflights carry no token (BaseHandler.options answers them)
        token = bearer_token(self.request.headers.get("Authorization"))
        self.identity = verify_token(self.tenant, token)
        self._buffer = BodyBuffer(self.body_limit(), self.request.headers.get("Content-Length"))

    def data_received(self, chunk: bytes) -> None:
        if self._buffer is None or self._finished:
            return
        keep_reading = self._buffer.add(chunk)
        if self._buffer.overflowed and (not keep_reading or self.request.method == "GET"):
            # Answer now; Tornado stops handing us the rest and closes the connection.
            # (Below the drain cap, PUT/POST/DELETE answer 413 from body() instead.)
            self._refuse(too_large(self._buffer.limit))

    def _refuse(self, error: ApiError) -> None:
        self.log_exception(type(error), error, None)
        self.send_error(error.status, exc_info=(type(error), error, None))

    def body(self) -> Body:
        raw = b"" if self._buffer is None else self._buffer.getvalue()
        return parse_body(self.request.headers.get("Content-Type"), raw, file_names=FILE_PARTS)

    def query(self) -> dict[str, str]:
        return parse_query(self.request.query_arguments)

    @property
    def sep12(self) -> Sep12Service:
        services = self.services
        return service_for(self.tenant, services.store, services.settings, services.http)


class CustomerHandler(Sep12Handler):
    """SEP-12 §GET /customer and §PUT /customer."""

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

    async def get(self) -> None:
        self.write_json(await self.sep12.get_customer(self.identity, self.query()))

    async def put(self) -> None:
        customer_id = await self.sep12.put_customer(self.identity, self.body())
        self.write_json({"id": customer_id}, status=202)  # the SDF validator requires 202


class VerificationHandler(Sep12Handler):
    """SEP-12 §PUT /customer/verification (deprecated in v1.12.0, served for old clients)."""

    cors_methods = "PUT"

    async def put(self) -> None:
        self.write_json(await self.sep12.put_verification(self.identity, self.body()))


class CallbackHandler(Sep12Handler):
    """SEP-12 §PUT /customer/callback: store the URL (delivery is the callbacks worker's)."""

    cors_methods = "PUT"

    async def put(self) -> None:
        await self.sep12.put_callback(self.identity, self.body())
        self.write_json({})


class DeleteHandler(Sep12Handler):
    """SEP-12 §DELETE /customer/{account}."""

    cors_methods = "DELETE"

    async def delete(self, account: str) -> None:
        await self.sep12.delete_customer(self.identity, account, self.body(),
                                         request_id=self.request_id)
        self.write_json({})


class FilesHandler(Sep12Handler):
    """SEP-12 §/customer/files: upload one file (POST), list by file or customer (GET)."""

    cors_methods = "GET, POST"

    def body_limit(self) -> int:
        if self.request.method == "POST":
            return self.tenant.config.limits.max_request_bytes
        return SMALL_BODY_BYTES

    def prepare(self) -> Awaitable[None] | None:  # type: ignore[override]
        super().prepare()
        return _limit_uploads(self) if self.request.method == "POST" else None

    async def get(self) -> None:
        self.write_json(await self.sep12.list_files(self.identity, self.query()))

    async def post(self) -> None:
        self.write_json(await self.sep12.upload_file(self.identity, self.body()))


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
