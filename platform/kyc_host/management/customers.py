"""Tenant admins' customer review on the admin listener (issue 7 §3).

Routes, each behind the tenant + scope check of ``@require`` (another tenant -> 404):

- ``GET  /api/v1/tenants/{t}/customers`` -- the review queue (``customers:read``)
- ``GET  /api/v1/tenants/{t}/customers/{c}`` -- decrypted detail, audited (``customers:read``)
- ``POST /api/v1/tenants/{t}/customers/{c}/decision`` -- decide (``customers:review``)
- ``GET  /api/v1/tenants/{t}/customers/{c}/files/{f}`` -- download, audited (``customers:read``)
- ``POST|DELETE /api/v1/tenants/{t}/customers/{c}/identities`` -- link / unlink
  (``customers:review``)
- ``DELETE /api/v1/tenants/{t}/customers/{c}`` -- erase, as the wallet's DELETE
  (``customers:delete``)

Audit rule: an action is logged *before* it takes effect or data leaves (a failed audit
write means a 503 and nothing happened), so no read of PII and no decision ever goes
unlogged. Erasure is the exception: ``Sep12Service.erase_customer`` logs it once done (its
proof-of-deletion entry, actor = this token), because the tenant's plugin may still refuse it,
and a refused erasure is not an erasure.

Decisions go through ``Sep12Service.decide`` -- the same recompute-and-save path as a wallet's
PUT -- so status-change callbacks see them; erasure goes through
``Sep12Service.erase_customer``, the wallet DELETE's own function.
"""

from __future__ import annotations

from kyc_host.errors import BadRequest, Conflict, NotFound
from kyc_host.hooks.contract import Caller
from kyc_host.management import review
from kyc_host.management.base import TENANT_NOT_FOUND, ManagementHandler, clamp_limit, require
from kyc_host.sep.sep12_params import (
    CUSTOMER_NOT_FOUND,
    FILE_NOT_FOUND,
    Principal,
    check_customer_id,
    check_file_id,
    named_principal,
)
from kyc_host.sep.sep12_service import Sep12Service
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.customers import CustomerRecord

_ID = r"(?P<tenant_id>[^/]+)"
_CID = r"(?P<customer_id>[^/]+)"
#: Stored content types (sniffed from the bytes at upload) -> download file extension. Any
#: other value is served as an opaque download, never as something a browser would render.
SAFE_DOWNLOADS = {"image/jpeg": "jpg", "image/png": "png", "application/pdf": "pdf",
                  "image/webp": "webp", "image/heic": "heic", "video/mp4": "mp4"}
IDENTITY_NOT_LINKED = "identity not linked to this customer"


class _CustomerBase(ManagementHandler):
    def sep12(self, tenant_id: str) -> Sep12Service:
        tenant = self.services.registry.get(tenant_id)
        if tenant is None:
            raise NotFound(TENANT_NOT_FOUND)
        services = self.services
        return service_for(tenant, services.store, services.settings, services.http,
                           services.metrics)

    async def record(self, service: Sep12Service, customer_id: str) -> CustomerRecord:
        """The tenant's customer; an id of another tenant is simply not found here."""
        record = await service.customers.load(check_customer_id(customer_id))
        if record is None:
            raise NotFound(CUSTOMER_NOT_FOUND)
        return record


class CustomersHandler(_CustomerBase):
    @require("customers:read")
    async def get(self, tenant_id: str) -> None:
        service = self.sep12(tenant_id)
        query = review.ListQuery(
            status=self.query("status") or None, type=self.query("type") or None,
            updated_since=self.query("updated_since") or None,
            account=self.query("account") or None, memo=self.query("memo") or None,
            memo_type=self.query("memo_type") or None, cursor=self.query("cursor") or None,
            order=self.query("order"), limit=clamp_limit(self.query("limit")))
        self.write_json(await review.list_customers(service.customers, service.config, query))


class CustomerHandler(_CustomerBase):
    @require("customers:read")
    async def get(self, tenant_id: str, customer_id: str) -> None:
        service = self.sep12(tenant_id)
        record = await self.record(service, customer_id)
        view = await review.customer_view(service, record)
        await self.audit(tenant_id, "customer.read", customer_id=record.id,
                         fields=review.provided_names(record))
        self.write_json(view)

    @require("customers:delete")
    async def delete(self, tenant_id: str, customer_id: str) -> None:
        service = self.sep12(tenant_id)
        record = await self.record(service, customer_id)
        # The plugin's delete hook learns who asked: the anchor's staff (empty account), not a
        # wallet. The erasure writes its own proof-of-deletion entry (customer.erase, or
        # customer.hold under a retention period) naming this token as the actor.
        await service.erase_customer(record, Caller(account="", memo=None, client_domain=None),
                                     actor=self.principal.actor, request_id=self.request_id)
        self.set_status(204)
        self.finish()


class DecisionHandler(_CustomerBase):
    @require("customers:review")
    async def post(self, tenant_id: str, customer_id: str) -> None:
        service = self.sep12(tenant_id)
        record = await self.record(service, customer_id)
        parsed = review.parse_decision(self.json_body(), service.config)
        ctype = service.config.customer_types[parsed.type]
        review.check_decision(record, ctype, parsed.decision)
        previous = record.type_state(parsed.type).status
        expected = review.preview_status(record, ctype, parsed.decision)
        await self.audit(tenant_id, "customer.decision", customer_id=record.id,
                         fields=tuple(parsed.decision.fields),
                         details=review.decision_audit(parsed, previous, expected))
        status = await service.decide(record, parsed.type, parsed.decision)
        self.write_json({"id": record.id, "type": parsed.type, "status": str(status),
                         "previous_status": previous,
                         "decision": review.decision_json(parsed.decision)})


class FileHandler(_CustomerBase):
    @require("customers:read")
    async def get(self, tenant_id: str, customer_id: str, file_id: str) -> None:
        service = self.sep12(tenant_id)
        record = await self.record(service, customer_id)
        info = await service.files.get(check_file_id(file_id))
        if info is None or info.customer_id != record.id:
            raise NotFound(FILE_NOT_FOUND)  # another customer's file is not found here
        field = next((n for n, f in record.files.items() if f == info.id), None)
        await self.audit(tenant_id, "customer.file_read", customer_id=record.id,
                         fields=() if field is None else (field,),
                         details={"file_id": info.id, "content_type": info.content_type})
        data = await service.files.read(info.id)
        if data is None:  # erased between the two reads
            raise NotFound(FILE_NOT_FOUND)
        self._send(info.id, info.content_type, data)

    def _send(self, file_id: str, content_type: str, data: bytes) -> None:
        """Bytes as a download: a fixed type, our own file name (never the client's, which
        is not even stored), no sniffing, no caching, and no rendering as a page."""
        ext = SAFE_DOWNLOADS.get(content_type)
        self.set_header("Content-Type", content_type if ext else "application/octet-stream")
        self.set_header("Content-Disposition",
                        f'attachment; filename="{file_id}.{ext or "bin"}"')
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.finish(data)


class IdentitiesHandler(_CustomerBase):
    def _identity_body(self) -> Principal:
        body = self.json_body()
        unknown = sorted(set(body) - {"account", "memo", "memo_type"})
        if unknown:
            raise BadRequest(f"{unknown[0]}: unknown key; give account, memo and memo_type")
        values = {k: body.get(k) for k in ("account", "memo", "memo_type")}
        for key, value in values.items():
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"{key}: must be a string")
        if not values["account"]:
            raise BadRequest("account: required, a G... or M... Stellar account")
        return named_principal(str(values["account"]), values["memo"], values["memo_type"])

    @require("customers:review")
    async def post(self, tenant_id: str, customer_id: str) -> None:
        """Link an identity; 409 if it already belongs to another customer."""
        service = self.sep12(tenant_id)
        record = await self.record(service, customer_id)
        principal = self._identity_body()
        ix = service.customers.identity_index(principal.key)
        owner = await service.customers.customer_id_for(principal.key)
        if owner is not None and owner != record.id:
            raise Conflict("this identity already belongs to another customer")
        if owner == record.id and service.customers.has_identity(record, principal.key):
            self.write_json({"id": record.id, "identities": review.identities_json(record)})
            return
        # Not linked, or half linked (an unlink cut between its two steps leaves the record
        # naming an identity that reaches nobody): link it.
        await self.audit(tenant_id, "customer.identity_link", customer_id=record.id,
                         details={"identity_ix": ix})
        if not await service.customers.link_identity(record.id, principal.key,
                                                     principal.account):
            raise Conflict("this identity already belongs to another customer")
        await self._answer(service, record.id, 201)

    @require("customers:review")
    async def delete(self, tenant_id: str, customer_id: str) -> None:
        """Unlink an identity; never the customer's last one (409)."""
        service = self.sep12(tenant_id)
        record = await self.record(service, customer_id)
        principal = self._identity_body()
        ix = service.customers.identity_index(principal.key)
        if not service.customers.has_identity(record, principal.key):
            raise NotFound(IDENTITY_NOT_LINKED)
        if len(set(record.identities.values())) == 1:
            raise Conflict("cannot unlink the customer's last identity; delete the customer "
                           "instead")
        await self.audit(tenant_id, "customer.identity_unlink", customer_id=record.id,
                         details={"identity_ix": ix})
        if not await service.customers.unlink_identity(record.id, principal.key):
            raise NotFound(IDENTITY_NOT_LINKED)
        await self._answer(service, record.id, 200)

    async def _answer(self, service: Sep12Service, customer_id: str, status: int) -> None:
        record = await self.record(service, customer_id)
        self.write_json({"id": record.id, "identities": review.identities_json(record)},
                        status=status)


routes = [
    (rf"/api/v1/tenants/{_ID}/customers", CustomersHandler),
    (rf"/api/v1/tenants/{_ID}/customers/{_CID}", CustomerHandler),
    (rf"/api/v1/tenants/{_ID}/customers/{_CID}/decision", DecisionHandler),
    (rf"/api/v1/tenants/{_ID}/customers/{_CID}/identities", IdentitiesHandler),
    (rf"/api/v1/tenants/{_ID}/customers/{_CID}/files/(?P<file_id>[^/]+)", FileHandler),
]
