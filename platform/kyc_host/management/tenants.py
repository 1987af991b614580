"""Operator routes for tenants: list, onboard, read, replace, suspend/resume, offboard.

The body of POST/PUT is a tenant document as JSON, validated by the same schema as tenant files
(``tenancy/schema.parse_tenant``, source "API") and written through ``TenantService.apply``
with manager "api" (design §4). A file-managed tenant is shown but never changed here (409
naming its file). After a write this process refreshes its registry at once; every other
process picks the change up within ``tenant_refresh_seconds`` (registry.py polls
``updated_at``). Answers never contain secrets: the SIGNING_KEY and JWT keys are public halves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

from kyc_host import audit
from kyc_host.audit import iso
from kyc_host.crypto import jobs
from kyc_host.crypto.jobs import JobBusy, Lease
from kyc_host.crypto.tenant_keys import settle_seconds
from kyc_host.errors import ApiError, BadRequest, ConfigError, Conflict, NotFound
from kyc_host.management.auth import forget_tenant
from kyc_host.management.base import (
    TENANT_NOT_FOUND,
    ManagementHandler,
    clamp_limit,
    require,
)
from kyc_host.sep.sep10_tokens import jwks
from kyc_host.services import Services
from kyc_host.tenancy.registry import Tenant
from kyc_host.tenancy.schema import parse_tenant
from kyc_host.tenancy.service import TenantDocument

SOURCE = "API"
#: Any path segment: ids that cannot exist still get auth first, then 404.
_ID = r"(?P<tenant_id>[^/]+)"


def config_error(exc: ConfigError) -> ApiError:
    """A rejected document: 409 when it collides with another tenant's host, else 400. The
    message is the ConfigError line (source, key, problem, value)."""
    if exc.key == "hosts" and "already" in exc.problem:
        return Conflict(str(exc))
    return BadRequest(str(exc))


def parse_document(body: Mapping[str, Any]) -> TenantDocument:
    try:
        return TenantDocument(parse_tenant(body, SOURCE), dict(body), "api")
    except ConfigError as exc:
        raise config_error(exc) from None


def tenant_view(services: Services, record: Mapping[str, Any]) -> dict[str, Any]:
    """What the API shows of a tenant record: document, status, keys' public halves."""
    tenant_id = str(record["_id"])
    tenant = services.registry.get(tenant_id)
    if tenant is None or tenant.rev != record["rev"]:
        config = parse_tenant(record["config"], f"store tenant {tenant_id!r}")
        tenant = Tenant(record, config, services.keys, services.settings)
    return {
        "id": tenant_id,
        "status": record["status"],
        "manager": record["manager"],
        "hosts": list(tenant.config.hosts),
        "home_domain": tenant.config.home_domain,
        "signing_key": tenant.secrets.signing_keypair.public_key,
        "jwks": jwks(tenant),
        "document": record["config"],
        "rev": record["rev"],
        "created_at": iso(record["created_at"]),
        "updated_at": iso(record["updated_at"]),
    }


def _file_managed(record: Mapping[str, Any]) -> str | None:
    manager = str(record["manager"])
    return manager.removeprefix("file:") if manager.startswith("file:") else None


async def offboard_tenant(services: Services, tenant_id: str, actor: str,
                          request_id: str | None = None) -> dict[str, Any] | None:
    """Offboard (the API's DELETE and ``kyc-host tenant delete``): keys destroyed, data
    dropped, hosts freed, tokens forgotten, one ``tenant.delete`` entry in the platform log;
    the record as it was. None if there is no such tenant, including one already offboarded
    (a run cut short before its audit entry is finished, and audited, instead).

    Returns after a settle interval (``2 x tenant_refresh_seconds + 1 s``): by then every
    process has stopped serving the tenant, and the data is dropped once more, with what
    their requests and background jobs wrote after the first drop. Only then is the run
    marked finished; one cut short during the wait is finished by the next call."""
    # One run at a time (JobBusy for another): a second call during the wait would drop,
    # audit and answer again.
    lease = Lease(services.store.platform("key_jobs"), f"offboard:{tenant_id}")
    await lease.acquire()
    try:
        return await _offboard(services, tenant_id, actor, request_id, lease)
    finally:
        await lease.release()


async def _offboard(services: Services, tenant_id: str, actor: str,
                    request_id: str | None, lease: Lease) -> dict[str, Any] | None:
    record = await services.tenants.offboard(tenant_id)
    if record is None:
        return None
    await forget_tenant(services.store, tenant_id)
    services.token_cache.forget(tenant=tenant_id)
    await services.registry.refresh()
    # The settle interval, with the lease renewed through it (it may be longer than one
    # lease: 2 x tenant_refresh_seconds + 1 s).
    end = time.monotonic() + settle_seconds(services.settings.tenant_refresh_seconds)
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(left, jobs.LEASE_SECONDS / 3))
        await lease.renew()
    if await services.tenants.drop_late_writes(tenant_id):
        await forget_tenant(services.store, tenant_id)  # a token created meanwhile
    # The tenant's own log went with its data; the proof of deletion is in the platform log.
    await audit.record(services.store, None, actor=actor, action="tenant.delete",
                       request_id=request_id, details={
                           "tenant": tenant_id,
                           "hosts": list(record.get("config", {}).get("hosts", [])),
                           "secrets_destroyed": True, "data_dropped": True})
    await services.tenants.offboard_finished(tenant_id)
    return record


class _TenantBase(ManagementHandler):
    async def _apply(self, doc: TenantDocument) -> str:
        try:
            [result] = await self.services.tenants.apply([doc])
        except ConfigError as exc:
            raise config_error(exc) from None
        await self.services.registry.refresh()
        return result.action

    async def _record(self, tenant_id: str) -> dict[str, Any]:
        record = await self.services.tenants.get(tenant_id)
        if record is None:
            raise NotFound(TENANT_NOT_FOUND)
        return record

    async def _changeable(self, tenant_id: str) -> dict[str, Any]:
        record = await self._record(tenant_id)
        where = _file_managed(record)
        if where is not None:
            raise Conflict(f"tenant {tenant_id!r} is managed by file {where}; change the file "
                           "and run `kyc-host tenant apply`")
        return record


class TenantsHandler(_TenantBase):
    @require("tenants:read")
    async def get(self) -> None:
        """Live tenants in id order; cursor = the last id of the previous page."""
        limit = clamp_limit(self.query("limit"))
        records = await self.services.tenants.page(self.query("cursor"), limit)
        nxt = str(records[-1]["_id"]) if len(records) == limit else None
        self.write_json({"tenants": [tenant_view(self.services, r) for r in records],
                         "next_cursor": nxt})

    @require("tenants:write", operator_only=True)
    async def post(self) -> None:
        doc = parse_document(self.json_body())
        tenant_id = doc.config.id
        existing = await self.services.tenants.get(tenant_id)
        if existing is not None:
            where = _file_managed(existing)
            raise Conflict(f"tenant {tenant_id!r} already exists"
                           + (f" (managed by file {where})" if where else ""))
        await self._apply(doc)
        record = await self.services.tenants.get(tenant_id)
        if record is None:  # pragma: no cover - deleted by a concurrent request
            raise NotFound(TENANT_NOT_FOUND)
        details = {"tenant": tenant_id, "hosts": list(doc.config.hosts), "rev": record["rev"]}
        await self.audit(tenant_id, "tenant.create", details=details)
        await self.audit(None, "tenant.create", details=details)
        self.write_json(tenant_view(self.services, record), status=201)


class TenantHandler(_TenantBase):
    @require("tenants:read")
    async def get(self, tenant_id: str) -> None:
        self.write_json(tenant_view(self.services, await self._record(tenant_id)))

    @require("tenants:write", operator_only=True)
    async def put(self, tenant_id: str) -> None:
        current = await self._changeable(tenant_id)
        doc = parse_document(self.json_body())
        if doc.config.id != tenant_id:
            raise BadRequest(f"{SOURCE}: id: must equal the tenant id in the path "
                             f"(got {doc.config.id!r})")
        action = await self._apply(doc)
        record = await self._record(tenant_id)
        if action != "unchanged":
            changed = sorted(k for k in {*current["config"], *doc.raw}
                             if current["config"].get(k) != doc.raw.get(k))
            details = {"tenant": tenant_id, "changed_keys": changed, "rev": record["rev"]}
            await self.audit(tenant_id, "tenant.update", details=details)
            await self.audit(None, "tenant.update", details=details)
        self.write_json(tenant_view(self.services, record))

    @require("tenants:write", operator_only=True)
    async def delete(self, tenant_id: str) -> None:
        """Offboard: the tenant stops being served, its keys are destroyed, its data dropped."""
        await self._changeable(tenant_id)
        try:
            await offboard_tenant(self.services, tenant_id, self.principal.actor,
                                  self.request_id)
        except JobBusy:
            raise Conflict(f"tenant {tenant_id!r} is being offboarded by another request"
                           ) from None
        self.set_status(204)
        self.finish()


class TenantStatusHandler(_TenantBase):
    """``/suspend`` and ``/resume``: 503 on the tenant's hosts while suspended.

    An operational switch, not a configuration change, and the same one as ``kyc-host tenant
    suspend``: the record's status changes and the hold survives later edits of the tenant's
    document until an explicit resume (TenantService.set_status).
    """

    def initialize(self, status: str) -> None:
        self.target = status

    @require("tenants:write", operator_only=True)
    async def post(self, tenant_id: str) -> None:
        record = await self._record(tenant_id)
        changed = record["status"] != self.target
        if changed:
            await self.services.tenants.set_status(tenant_id, self.target)
            await self.services.registry.refresh()
        record = await self._record(tenant_id)
        if changed:
            action = "tenant.suspend" if self.target == "suspended" else "tenant.resume"
            details = {"tenant": tenant_id, "rev": record["rev"]}
            await self.audit(tenant_id, action, details=details)
            await self.audit(None, action, details=details)
        self.write_json(tenant_view(self.services, record))


routes = [
    (r"/api/v1/tenants", TenantsHandler),
    (rf"/api/v1/tenants/{_ID}", TenantHandler),
    (rf"/api/v1/tenants/{_ID}/suspend", TenantStatusHandler, {"status": "suspended"}),
    (rf"/api/v1/tenants/{_ID}/resume", TenantStatusHandler, {"status": "active"}),
]
