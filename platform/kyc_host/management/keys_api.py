"""Operator routes for a tenant's keys: trigger a rotation, read key and job status.

- ``GET /api/v1/tenants/{id}/keys`` (``tenants:read``, operator token): what ``kyc-host keys
  status --tenant`` prints -- versions in use, JWT ``kid``s, SEP-10 signing public keys, and
  the checkpoints of the tenant's key jobs (stage, counters, running or not). Never a secret.
- ``POST /api/v1/tenants/{id}/keys/{operation}`` (``keys:write``, operator token):
  ``rotate-jwt`` and ``rotate-signing`` are one secrets write each and are done inline
  (200 with the new kid / SIGNING_KEY); ``rotate-kek`` and ``reindex`` wait for every process
  between their stages (minutes), so they start in the background of this process and the
  answer is 202 with the job id and ``Location`` of the status route; 409 if a run (here, in
  another process or from the CLI) is working on that job already.

The work and its audit entries are the CLI's (crypto/operations.py); the API adds one entry
naming who started a background job, since the job's own entry is written only at its end.
"""

from __future__ import annotations

from kyc_host.crypto import operations
from kyc_host.crypto.jobs import JobBusy
from kyc_host.crypto.tenant_keys import KeyOperationError
from kyc_host.errors import Conflict, NotFound
from kyc_host.management.base import TENANT_NOT_FOUND, ManagementHandler, require

_ID = r"(?P<tenant_id>[^/]+)"
_OPERATION = r"(?P<operation>[^/]+)"


def status_path(tenant_id: str) -> str:
    return f"/api/v1/tenants/{tenant_id}/keys"


class _KeysBase(ManagementHandler):
    async def _known(self, tenant_id: str) -> None:
        if await self.services.tenants.get(tenant_id) is None:
            raise NotFound(TENANT_NOT_FOUND)


class KeyStatusHandler(_KeysBase):
    @require("tenants:read", operator_only=True)
    async def get(self, tenant_id: str) -> None:
        await self._known(tenant_id)
        try:
            status = await operations.key_status(self.services, tenant_id)
        except KeyOperationError:  # offboarded between the two reads
            raise NotFound(TENANT_NOT_FOUND) from None
        self.write_json(status)


class KeyOperationHandler(_KeysBase):
    @require("keys:write", operator_only=True)
    async def post(self, tenant_id: str, operation: str) -> None:
        await self._known(tenant_id)
        if operation not in operations.OPERATIONS:
            raise NotFound(f"unknown key operation {operation[:64]!r}; one of "
                           f"{', '.join(operations.OPERATIONS)}")
        try:
            if operation in operations.JOB_OPERATIONS:
                await self._start_job(tenant_id, operation)
            else:
                await self._rotate_now(tenant_id, operation)
        except operations.SigningKeyManaged as exc:
            raise Conflict(str(exc)) from None
        except KeyOperationError as exc:  # the tenant changed or vanished meanwhile
            raise Conflict(str(exc)) from None

    async def _rotate_now(self, tenant_id: str, operation: str) -> None:
        rotate = (operations.rotate_jwt if operation == "rotate-jwt"
                  else operations.rotate_signing)
        result = await rotate(self.services, tenant_id, actor=self.principal.actor,
                              request_id=self.request_id)
        # This process serves the new key at once; the others within tenant_refresh_seconds.
        await self.services.registry.refresh()
        self.write_json(result)

    async def _start_job(self, tenant_id: str, operation: str) -> None:
        try:
            job_id = await operations.start_job(self.services, operation, tenant_id,
                                                actor=self.principal.actor)
        except JobBusy as exc:
            raise Conflict(f"{operation} of tenant {tenant_id!r} is already running: {exc}"
                           ) from None
        await self.audit(tenant_id, "key.job_start",
                         details={"operation": operation, "job": job_id})
        location = status_path(tenant_id)
        self.set_header("Location", location)
        self.write_json({"operation": operation, "tenant": tenant_id, "job": job_id,
                         "status_url": location}, status=202)


routes = [
    (rf"/api/v1/tenants/{_ID}/keys", KeyStatusHandler),
    (rf"/api/v1/tenants/{_ID}/keys/{_OPERATION}", KeyOperationHandler),
]
