"""Reading and verifying audit logs: a tenant's (``audit:read``) and the platform's (operators).

Pages are in ``seq`` order; ``next_cursor`` is the last ``seq`` of a full page, to pass back
as ``cursor``. Filters: ``action``, ``customer_id``, ``since`` (ISO-8601 or Unix seconds).
"""

from __future__ import annotations

from kyc_host import audit
from kyc_host.errors import BadRequest, NotFound
from kyc_host.management.base import TENANT_NOT_FOUND, ManagementHandler, clamp_limit, require

_ID = r"(?P<tenant_id>[^/]+)"


class _AuditBase(ManagementHandler):
    async def _check_tenant(self, tenant_id: str | None) -> None:
        if tenant_id is not None and await self.services.tenants.get(tenant_id) is None:
            raise NotFound(TENANT_NOT_FOUND)

    async def _page(self, tenant_id: str | None) -> None:
        await self._check_tenant(tenant_id)
        cursor = self.query("cursor")
        if cursor is not None and not (cursor.isdigit() and len(cursor) <= 18):
            raise BadRequest("cursor must be a seq number from next_cursor")
        since = self.query("since")
        if since is not None:
            try:
                since = audit.parse_time(since)
            except ValueError:
                raise BadRequest("since must be an ISO-8601 time or Unix seconds") from None
        entries, nxt = await audit.entries(
            self.services.store, tenant_id, action=self.query("action") or None,
            customer_id=self.query("customer_id") or None, since=since,
            after=int(cursor or 0), limit=clamp_limit(self.query("limit"),
                                                      maximum=audit.MAX_PAGE))
        self.write_json({"entries": entries,
                         "next_cursor": None if nxt is None else str(nxt)})

    async def _verify(self, tenant_id: str | None) -> None:
        await self._check_tenant(tenant_id)
        result = await audit.verify(self.services.store, tenant_id)
        self.write_json(result.to_json())


class TenantAuditHandler(_AuditBase):
    @require("audit:read")
    async def get(self, tenant_id: str) -> None:
        await self._page(tenant_id)


class TenantAuditVerifyHandler(_AuditBase):
    @require("audit:read")
    async def get(self, tenant_id: str) -> None:
        await self._verify(tenant_id)


class PlatformAuditHandler(_AuditBase):
    @require("audit:read", operator_only=True)
    async def get(self) -> None:
        await self._page(None)


class PlatformAuditVerifyHandler(_AuditBase):
    @require("audit:read", operator_only=True)
    async def get(self) -> None:
        await self._verify(None)


routes = [
    (rf"/api/v1/tenants/{_ID}/audit", TenantAuditHandler),
    (rf"/api/v1/tenants/{_ID}/audit/verify", TenantAuditVerifyHandler),
    (r"/api/v1/audit", PlatformAuditHandler),
    (r"/api/v1/audit/verify", PlatformAuditVerifyHandler),
]
