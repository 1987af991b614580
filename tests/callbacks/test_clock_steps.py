"""The callback side's throttles run on the monotonic clock, so a wall clock stepped back (NTP
correcting a clock that ran ahead, an operator's ``date -s``) does not stop them.

They used ``time.time()`` for intervals: after a step back of X seconds, every
"has WAKE_EVERY / CLEANUP_SECONDS passed since" was false for X seconds. A process then wrote
no wake-up marker (other processes' workers saw its new events only at their next due-time
poll) and removed no expired lease or old delivered event, for as long as the step.

Real stores on both backends; the step is ``time.time`` made to answer an hour earlier, the
one stand-in here (stepping the machine's clock in a test is not an option).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from callbacks.cb_helpers import FAST, cb_doc
from conftest import MakeServer
from kyc_host.callbacks import worker as worker_module
from kyc_host.callbacks.events import EventState
from kyc_host.callbacks.outbox import DELIVERED_RETENTION, WAKE_EVERY, Outbox, woken_tenants
from kyc_host.callbacks.worker import CallbackWorker
from kyc_host.store.base import Store

STEP = 3600.0


def step_back(monkeypatch: pytest.MonkeyPatch) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - STEP)


async def test_wake_markers_go_on_after_the_clock_steps_back(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    t1, t2 = Outbox(store, "t1"), Outbox(store, "t2")
    await t1.wake()
    first = (await woken_tenants(store, 0.0))["t1"]
    step_back(monkeypatch)
    await asyncio.sleep(WAKE_EVERY * 1.1)
    await t1.wake()
    await t2.wake()
    markers = await woken_tenants(store, 0.0)
    assert markers["t1"] < first - STEP / 2  # written again, at the stepped clock's time
    assert markers["t2"] == pytest.approx(markers["t1"], abs=5)
    # Still at most one marker write per WAKE_EVERY.
    await t1.wake()
    assert (await woken_tenants(store, 0.0))["t1"] == markers["t1"]


async def _delivered(store: Store, tenant_id: str, age: float) -> str:
    event_id = uuid.uuid4().hex
    await store.tenant(tenant_id, "outbox").insert_one(
        {"_id": event_id, "state": str(EventState.DELIVERED), "customer_id": "c",
         "updated_at": time.time() - age})
    return event_id


async def _ids(store: Store, tenant_id: str) -> set[str]:
    return {str(d["_id"]) for d in await store.tenant(tenant_id, "outbox").find({})}


async def test_old_delivered_events_are_removed_after_the_clock_steps_back(
        make_server: MakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), cb_doc("t2", ["b.test"]), **FAST)
    store = srv.services.store
    assert srv.server.callbacks is not None
    await srv.server.callbacks.stop()  # only the worker below cleans up
    worker = CallbackWorker(srv.services)
    monkeypatch.setattr(worker_module, "CLEANUP_SECONDS", 0.2)
    try:
        old = await _delivered(store, "t1", DELIVERED_RETENTION + 60)
        kept = await _delivered(store, "t1", 60)
        others = {await _delivered(store, "t2", 60)}
        await worker._sweep_records({"t1", "t2"}, time.time())
        assert await _ids(store, "t1") == {kept}
        step_back(monkeypatch)
        # Old by the stepped clock too; the next cleanup is due by the monotonic clock.
        later = await _delivered(store, "t1", DELIVERED_RETENTION + 60)
        await asyncio.sleep(0.3)
        await worker._sweep_records({"t1", "t2"}, time.time())
        assert later not in await _ids(store, "t1")
        assert kept in await _ids(store, "t1")
        assert old not in await _ids(store, "t1")
        assert await _ids(store, "t2") == others  # the other tenant's young event stays
    finally:
        worker.http.close()
