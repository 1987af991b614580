"""Tenant-admin tokens through the API: create (shown once), list, revoke; and ``whoami``.

A tenant admin holding ``tokens:write`` manages the tokens of its own tenant and may grant only
scopes it holds itself; a new token never outlives the token that created it (so a short-lived
credential cannot mint a permanent one). Operator tokens are created with the CLI only
(``kyc-host token create --operator``), never through the API.
"""

from __future__ import annotations

import time

from kyc_host.audit import iso
from kyc_host.errors import BadRequest, ConfigError, Forbidden, NotFound
from kyc_host.management.auth import (
    ScopeError,
    check_scopes,
    create_token,
    list_tokens,
    revoke_token,
)
from kyc_host.management.base import TENANT_NOT_FOUND, ManagementHandler, require
from kyc_host.tenancy.reader import Table

_ID = r"(?P<tenant_id>[^/]+)"
MAX_DAYS = 3650


class _TokenBase(ManagementHandler):
    async def _require_tenant(self, tenant_id: str) -> None:
        if await self.services.tenants.get(tenant_id) is None:
            raise NotFound(TENANT_NOT_FOUND)


class TokensHandler(_TokenBase):
    @require("tokens:write")
    async def get(self, tenant_id: str) -> None:
        await self._require_tenant(tenant_id)
        self.write_json({"tokens": await list_tokens(self.services.store, tenant_id)})

    @require("tokens:write")
    async def post(self, tenant_id: str) -> None:
        await self._require_tenant(tenant_id)
        scopes, expires_at, note = self._parse()
        issued = await create_token(self.services.store, tenant_id=tenant_id, scopes=scopes,
                                    created_by=self.principal.actor, expires_at=expires_at,
                                    note=note)
        await self.audit(tenant_id, "token.create", details={
            "token": issued.info["prefix"], "scopes": issued.info["scopes"],
            "expires_at": issued.info["expires_at"]})
        self.write_json({"token": issued.token, **issued.info}, status=201)

    def _parse(self) -> tuple[list[str], float | None, str]:
        table = Table(self.json_body(), "API")
        try:
            scopes = list(table.strings("scopes", max_items=20))
            days = table.integer("expires_in_days", None, min=1, max=MAX_DAYS)
            note = table.string("note", "", max_len=200)
            table.finish()
            scopes = check_scopes(scopes, operator=False)
        except ConfigError as exc:
            raise BadRequest(str(exc)) from None
        except ScopeError as exc:
            raise BadRequest(f"API: scopes: {exc}") from None
        denied = self.principal.ungrantable(scopes)
        if denied is not None:
            raise Forbidden(f"cannot grant scope {denied!r}: this token does not hold it")
        expires_at = None if days is None else time.time() + days * 86400
        own = self.principal.expires_at
        if own is not None and (expires_at is None or expires_at > own):
            expires_at = own
        return scopes, expires_at, note


class TokenHandler(_TokenBase):
    @require("tokens:write")
    async def delete(self, tenant_id: str, prefix: str) -> None:
        await self._require_tenant(tenant_id)
        info = await revoke_token(self.services.store, tenant_id, prefix)
        if info is None:
            raise NotFound("token not found")
        self.services.token_cache.forget(prefix=prefix)
        await self.audit(tenant_id, "token.revoke", details={"token": prefix})
        self.write_json(info)


class WhoamiHandler(ManagementHandler):
    """The calling token: kind, tenant, scopes, expiry (no scope needed)."""

    async def get(self) -> None:
        principal = self.principal
        self.write_json({
            "prefix": principal.prefix,
            "kind": principal.kind,
            "tenant": principal.tenant,
            "scopes": sorted(principal.scopes),
            "expires_at": iso(principal.expires_at) if principal.expires_at else None,
        })


routes = [
    (rf"/api/v1/tenants/{_ID}/tokens", TokensHandler),
    (rf"/api/v1/tenants/{_ID}/tokens/(?P<prefix>[^/]+)", TokenHandler),
    (r"/api/v1/whoami", WhoamiHandler),
]
