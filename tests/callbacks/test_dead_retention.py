"""Dead-lettered and disabled callback events are removed ``callbacks_dead_retention_days``
after they became so (default 30; 0 keeps them until replayed).

They used to stay for good: each keeps its body (the customer's SEP-12 status answer) for an
admin's replay, so a tenant whose wallets' callback URLs broke grew its outbox -- and every
read of the due list, a full scan on FerretDB -- for the life of the service. Real stores on
both backends, a real server's services and a real callback worker.
"""

from __future__ import annotations

import time
import uuid

from callbacks.cb_helpers import FAST, cb_doc
from conftest import MakeServer, RunningServer
from kyc_host.callbacks.events import EventState
from kyc_host.callbacks.worker import CallbackWorker

DAY = 86400.0


async def _event(srv: RunningServer, tenant_id: str, state: EventState, age_days: float) -> str:
    event_id = uuid.uuid4().hex
    now = time.time()
    await srv.services.store.tenant(tenant_id, "outbox").insert_one(
        {"_id": event_id, "state": str(state), "customer_id": "c", "created_at": now,
         "due_at": now, "updated_at": now - age_days * DAY})
    return event_id


async def _ids(srv: RunningServer, tenant_id: str) -> set[str]:
    docs = await srv.services.store.tenant(tenant_id, "outbox").find({})
    return {str(d["_id"]) for d in docs}


async def _quiet(srv: RunningServer) -> RunningServer:
    """The server with its own callback worker stopped: only the test's worker cleans up."""
    assert srv.server.callbacks is not None
    await srv.server.callbacks.stop()
    return srv


async def _sweep(srv: RunningServer, tenants: set[str]) -> None:
    worker = CallbackWorker(srv.services)  # its first sweep cleans up
    try:
        await worker._sweep_records(tenants, time.time())
    finally:
        worker.http.close()


async def test_dead_and_disabled_events_go_after_the_retention(make_server: MakeServer) -> None:
    srv = await _quiet(await make_server(cb_doc("t1", ["a.test"]), cb_doc("t2", ["b.test"]),
                                         **FAST))
    assert srv.services.settings.callbacks_dead_retention_days == 30  # the default
    gone = {await _event(srv, "t1", EventState.DEAD, 31),
            await _event(srv, "t1", EventState.DISABLED, 31),
            await _event(srv, "t1", EventState.DELIVERED, 8)}
    assert gone <= await _ids(srv, "t1")
    kept = {await _event(srv, "t1", EventState.DEAD, 29),
            await _event(srv, "t1", EventState.DISABLED, 29),
            await _event(srv, "t1", EventState.PENDING, 400),  # still being delivered
            await _event(srv, "t1", EventState.DELIVERED, 6)}
    other = {await _event(srv, "t2", EventState.DEAD, 31)}
    await _sweep(srv, {"t1"})  # t2 is another process group's (serve_tenants)
    assert await _ids(srv, "t1") == kept
    assert await _ids(srv, "t2") == other


async def test_a_retention_of_0_keeps_them_until_replayed(make_server: MakeServer) -> None:
    srv = await _quiet(await make_server(cb_doc("t1", ["a.test"]), **FAST,
                                         callbacks_dead_retention_days=0))
    kept = {await _event(srv, "t1", EventState.DEAD, 3000),
            await _event(srv, "t1", EventState.DISABLED, 3000)}
    await _event(srv, "t1", EventState.DELIVERED, 8)
    await _sweep(srv, {"t1"})
    assert await _ids(srv, "t1") == kept
