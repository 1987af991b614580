"""SEP-10 web authentication (v3.4.1) at each tenant's ``WEB_AUTH_ENDPOINT`` (``/auth``), and
the tenant's JWT keys at ``/.well-known/jwks.json``.

``GET /auth?account=G...|M...[&memo=][&home_domain=][&client_domain=]`` answers
``{"transaction", "network_passphrase"}``; ``POST /auth`` with ``{"transaction": ...}`` (JSON
or form) answers ``{"token"}``. Both carry ``Access-Control-Allow-Origin: *`` on every answer,
errors and preflight included (SEP-10 §"CORS"). Every rejection is a JSON 4xx naming what was
wrong; the checks themselves live in :mod:`kyc_host.sep.sep10_challenge`.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from stellar_sdk import StrKey
from tornado.http1connection import HTTP1Connection
from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments
from tornado.web import stream_request_body

from kyc_host.errors import ApiError, BadRequest, PayloadTooLarge, UnsupportedMediaType
from kyc_host.ratelimit import web as limits
from kyc_host.ratelimit.limiter import RateLimited
from kyc_host.sep import client_domain as wallet_domain
from kyc_host.sep.sep10_challenge import (
    MAX_TRANSACTION_CHARS,
    ChallengeRequest,
    build_challenge,
    consume,
    verify_challenge,
)
from kyc_host.sep.sep10_tokens import MAX_MEMO, issue_token, jwks
from kyc_host.web.base import BaseHandler

#: A POST body holds one transaction of <= 50,000 characters; form encoding can triple it.
MAX_BODY_BYTES = 256 * 1024
_MEMO = re.compile(r"0|[1-9][0-9]{0,19}")
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@stream_request_body
class AuthHandler(BaseHandler):
    """GET: a challenge. POST: a token for a signed challenge."""

    cors_methods = "GET, POST"

    def initialize(self) -> None:
        self._body = bytearray()

    def prepare(self) -> None:
        super().prepare()
        # Streaming lets us refuse a huge body from its headers, before reading it (B2).
        declared = self.request.headers.get("Content-Length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY_BYTES):
            raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
        connection = self.request.connection
        if isinstance(connection, HTTP1Connection):
            connection.set_max_body_size(MAX_BODY_BYTES)  # chunked bodies are cut here

    def data_received(self, chunk: bytes) -> None:
        self._body.extend(chunk)

    async def get(self) -> None:
        tenant = self.tenant
        await limits.limit(self, "auth_per_ip")
        request = self._challenge_request()
        await limits.limit(self, "auth_per_account", _subject(request))
        if request.client_domain is not None:
            key = await wallet_domain.signing_key(tenant, self.services.http,
                                                  request.client_domain)
            request = replace(request, client_signing_key=key)
        self.write_json({"transaction": build_challenge(tenant, request),
                         "network_passphrase": tenant.config.network_passphrase})

    async def post(self) -> None:
        await limits.limit(self, "auth_per_ip")
        await limits.check_failed_logins(self)
        try:
            await self._login()
        except ApiError as exc:
            # Any 4xx but a limit's own is a failed login (bad signature, replay, junk):
            # counted per client IP so signatures cannot be guessed or Horizon flooded.
            if 400 <= exc.status < 500 and not isinstance(exc, RateLimited):
                await limits.record_failed_login(self)
            raise

    async def _login(self) -> None:
        tenant = self.tenant
        xdr = self._posted_transaction()
        challenge = await verify_challenge(tenant, self.services.horizon, xdr)
        # Per authenticated account: only now is the account proven to be the caller's.
        await limits.limit(self, "auth_per_account", challenge.sub)
        await consume(self.services.store, tenant, challenge)
        token = issue_token(tenant, sub=challenge.sub, jti=challenge.tx_hash,
                            home_domain=challenge.home_domain,
                            client_domain=challenge.client_domain)
        self.write_json({"token": token})

    # --- GET parameters ---

    def _query(self, name: str) -> str | None:
        values = self.request.query_arguments.get(name, [])
        if len(values) > 1:
            raise BadRequest(f"{name} given more than once")
        if not values:
            return None
        try:
            return values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{name} is not valid UTF-8") from None

    def _challenge_request(self) -> ChallengeRequest:
        account = _account(self._query("account"))
        memo = _memo(self._query("memo"), account)
        home_domain = self._home_domain(self._query("home_domain"))
        raw_domain = self._query("client_domain")
        client_domain = None if raw_domain is None else wallet_domain.check_syntax(raw_domain)
        wallet_domain.check_policy(self.tenant, client_domain)
        return ChallengeRequest(account, memo, home_domain, client_domain)

    def _home_domain(self, value: str | None) -> str:
        domains = self.tenant.home_domains
        if value is None:
            return domains[0]
        if value.lower() not in domains:
            # Never take the domain from the request: it must be one this tenant serves (A2).
            raise BadRequest("home_domain is not served by this anchor")
        return value.lower()

    # --- POST body ---

    def _posted_transaction(self) -> str:
        content_type = self.request.headers.get("Content-Type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        if media == "application/json":
            value = _json_transaction(bytes(self._body))
        elif media in _FORM_TYPES:
            value = self._form_transaction(content_type)
        else:
            raise UnsupportedMediaType(
                "send the transaction as application/json or form data")
        if value is None:
            raise BadRequest("missing 'transaction'")
        if len(value) > MAX_TRANSACTION_CHARS:
            raise BadRequest(f"transaction is longer than {MAX_TRANSACTION_CHARS} characters")
        return value

    def _form_transaction(self, content_type: str) -> str | None:
        arguments: dict[str, list[bytes]] = {}
        files: dict[str, list[HTTPFile]] = {}
        try:
            parse_body_arguments(content_type, bytes(self._body), arguments, files,
                                 self.request.headers)
        except HTTPInputError:
            raise BadRequest("malformed form body") from None
        values = arguments.get("transaction", [])
        if len(values) > 1:
            raise BadRequest("transaction given more than once")
        if not values:
            return None
        try:
            return values[0].decode("ascii")
        except UnicodeDecodeError:
            raise BadRequest("transaction must be base64 XDR") from None


def _subject(request: ChallengeRequest) -> str:
    """The token subject a challenge request is for (``G``, ``G:memo`` or ``M``)."""
    return request.account if request.memo is None else f"{request.account}:{request.memo}"


def _account(value: str | None) -> str:
    if value is None or value == "":
        raise BadRequest("account is required: a G... or M... Stellar address")
    if StrKey.is_valid_ed25519_public_key(value) or StrKey.is_valid_med25519_public_key(value):
        return value
    if StrKey.is_valid_contract(value):
        raise BadRequest("contract accounts (C...) authenticate with SEP-45, not SEP-10")
    raise BadRequest("account must be a valid G... or M... Stellar address")


def _memo(value: str | None, account: str) -> int | None:
    if value is None:
        return None
    if account.startswith("M"):
        raise BadRequest("memo is not allowed with a muxed (M...) account")
    if _MEMO.fullmatch(value) is None or int(value) > MAX_MEMO:
        raise BadRequest("memo must be an ID memo: a decimal unsigned 64-bit integer")
    return int(value)


def _json_transaction(body: bytes) -> str | None:
    try:
        doc: Any = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    value = doc.get("transaction")
    if value is not None and not isinstance(value, str):
        raise BadRequest("transaction must be a string")
    return value


class JwksHandler(BaseHandler):
    """The tenant's current public JWT keys (RFC 7517), so the anchor's other servers can
    verify our tokens without a shared secret. Empty for HS256 tenants."""

    cors_methods = "GET"

    def get(self) -> None:
        self.set_header("Cache-Control", "public, max-age=300")
        self.write_json(jwks(self.tenant))


routes = [
    (r"/auth", AuthHandler),
    (r"/\.well-known/jwks\.json", JwksHandler),
]
