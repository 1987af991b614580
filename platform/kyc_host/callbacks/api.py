"""Management API: a tenant's callback and webhook deliveries, and replaying given-up ones.

- ``GET /api/v1/tenants/{id}/callbacks`` (``callbacks:read``): newest first; filters
  ``state`` (pending | delivered | dead | disabled) and ``customer_id``; pages with
  ``limit`` and ``cursor`` (the ``next_cursor`` of the previous page).
- ``POST /api/v1/tenants/{id}/callbacks/{event_id}/replay`` (``callbacks:replay``): a dead
  (or disabled) event back to pending with a fresh retry horizon; audited.

Listings show ids, statuses, attempts and the last error: never an event body or a wallet's
callback URL (the URL lives sealed in the customer record).
"""

from __future__ import annotations

import math
import re

from kyc_host.callbacks.events import EventState, public_view
from kyc_host.callbacks.outbox import EVENT_NOT_FOUND, Outbox
from kyc_host.errors import BadRequest, NotFound
from kyc_host.management.base import TENANT_NOT_FOUND, ManagementHandler, clamp_limit, require

_TENANT = r"(?P<tenant_id>[^/]+)"
_EVENT = r"(?P<event_id>[^/]+)"
EVENT_ID = re.compile(r"[0-9a-f]{32}")
STATES = tuple(str(s) for s in EventState)
MAX_CURSOR_CHARS = 32


class _CallbacksBase(ManagementHandler):
    async def outbox(self, tenant_id: str) -> Outbox:
        if await self.services.tenants.get(tenant_id) is None:
            raise NotFound(TENANT_NOT_FOUND)
        return Outbox(self.services.store, tenant_id)


class CallbackListHandler(_CallbacksBase):
    @require("callbacks:read")
    async def get(self, tenant_id: str) -> None:
        outbox = await self.outbox(tenant_id)
        state = self.query("state")
        if state is not None and state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}")
        cursor = self.query("cursor")
        before = None
        if cursor is not None:
            try:
                before = float(cursor) if len(cursor) <= MAX_CURSOR_CHARS else None
            except ValueError:
                before = None
            if before is not None and not math.isfinite(before):
                before = None  # NaN/inf: a store query the MongoDB backend fails on (503)
            if before is None:
                raise BadRequest("cursor must be the next_cursor of the previous page")
        limit = clamp_limit(self.query("limit"))
        docs = await outbox.list(state=state, customer_id=self.query("customer_id") or None,
                                 before=before, limit=limit)
        nxt = repr(float(docs[-1]["created_at"])) if len(docs) == limit else None
        self.write_json({"events": [public_view(d) for d in docs], "next_cursor": nxt})


class CallbackReplayHandler(_CallbacksBase):
    @require("callbacks:replay")
    async def post(self, tenant_id: str, event_id: str) -> None:
        outbox = await self.outbox(tenant_id)
        if not EVENT_ID.fullmatch(event_id):
            raise NotFound(EVENT_NOT_FOUND)
        event = await outbox.replay(event_id)
        await self.audit(tenant_id, "callback.replay",
                         customer_id=str(event.get("customer_id") or "") or None,
                         details={"event_id": event_id, "type": str(event["type"])})
        self.write_json(public_view(event))


routes = [
    (rf"/api/v1/tenants/{_TENANT}/callbacks", CallbackListHandler),
    (rf"/api/v1/tenants/{_TENANT}/callbacks/{_EVENT}/replay", CallbackReplayHandler),
]
