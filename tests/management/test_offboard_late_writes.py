"""What other processes write for a tenant after its data was dropped does not outlive the
offboarding.

Offboarding drops the tenant's data right after marking it deleted; every other process
notices within ``tenant_refresh_seconds``, and until then -- and for what it already had under
way -- it writes on: a wallet's PUT, the purge job's review-queue checkpoint, a key job's
checkpoint, a callback wake-up marker. On MongoDB such a write recreates the tenant's database
(without indexes), and since the record was already marked "offboard finished" nothing dropped
it again: a tenant applied later under the same id inherited the rows. Now the offboarding
drops the data once more a settle interval later, and the purge loop looks every tenant up
again just before it purges it, so it never purges one offboarded while it ran.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conftest import MakeServer, RunningServer
from kyc_host.callbacks.outbox import Outbox
from kyc_host.crypto import jobs
from kyc_host.crypto.jobs import Checkpoint, JobBusy
from kyc_host.crypto.rotation import rotate_job_id
from kyc_host.errors import ConfigError
from kyc_host.management.tenants import offboard_tenant
from kyc_host.retention.purge import PurgeLoop
from kyc_host.store.mongo import MongoStore
from kyc_host.store.schema import COLLECTIONS
from sep12.sep12_helpers import Wallet, kyc_doc, two_kyc_tenants

TENANT_COLLECTIONS = sorted(s.name for s in COLLECTIONS.values() if s.scope == "tenant")


async def counts(srv: RunningServer, tenant_id: str) -> dict[str, int]:
    """Documents per collection of the tenant (only the non-empty ones)."""
    store = srv.services.store
    found = {name: await store.tenant(tenant_id, name).count({}) for name in TENANT_COLLECTIONS}
    return {name: n for name, n in found.items() if n}


async def platform_leftovers(srv: RunningServer, tenant_id: str) -> list[str]:
    """The tenant's documents in platform collections that offboarding must clear."""
    store = srv.services.store
    # (The lease of an offboarding under way is its own, released when it returns.)
    left = [f"key_jobs/{d['_id']}" for d in await store.platform("key_jobs").find({})
            if str(d["_id"]).split(":")[1] == tenant_id
            and str(d["_id"]) != f"offboard:{tenant_id}:lease"]
    if await store.platform("outbox_wake").find_one({"_id": tenant_id}) is not None:
        left.append(f"outbox_wake/{tenant_id}")
    left += [f"tenant_hosts/{d['_id']}"
             for d in await store.platform("tenant_hosts").find({"tenant": tenant_id})]
    left += [f"token_index/{d['_id']}"
             for d in await store.platform("token_index").find({"tenant": tenant_id})]
    return left


async def tenant_database_exists(srv: RunningServer, tenant_id: str) -> bool:
    """MongoDB: whether the tenant's database exists (SQLite: whether it holds any row)."""
    store = srv.services.store
    if isinstance(store, MongoStore):
        return f"{store.db_name}_t_{tenant_id}" in await store.client.list_database_names()
    return bool(await counts(srv, tenant_id))


async def wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_late_writes_are_dropped_and_the_same_id_starts_empty(
        make_server: MakeServer) -> None:
    # Settle interval 2 x 1 + 1 = 3 s: room for the late writes below.
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="demo_anchor"),
                            kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
                            tenant_refresh_seconds=1.0)
    # Another server process on the same store that has not noticed the offboarding yet
    # (its registry stops polling): it keeps serving t1 and purging it.
    other = await make_server(tenant_refresh_seconds=1.0)
    await other.services.registry.stop()
    store = srv.services.store
    await Wallet(srv, "a.test", "t1").create()
    neighbour = Wallet(srv, "b.test", "t2")
    neighbour_id = await neighbour.create()

    running = asyncio.create_task(offboard_tenant(srv.services, "t1", "cli"))

    async def first_drop_done() -> bool:
        record = await store.platform("tenants").find_one({"_id": "t1"})
        return record["status"] == "deleted" and not await counts(srv, "t1")

    await wait_until(first_drop_done, "t1 was never dropped")

    # Late writes of the other process: a wallet's PUT, a purge run (which repairs the
    # review queue and saves its checkpoint; t2's purge is ordinary work), a key job's
    # checkpoint, a wake-up marker.
    late = Wallet(other, "a.test", "t1")
    late_id = await late.create({"first_name": "Late", "last_name": "Writer",
                                 "email_address": "late@example.org"})
    await PurgeLoop(other.services, 3600).run_once()
    await Checkpoint(other.services.store, rotate_job_id("t1")).save(
        kind="rotate", tenant="t1", stage="activate", target=2)
    await Outbox(other.services.store, "t1").wake()
    written = await counts(srv, "t1")
    assert written["customers"] == 1  # the late writes landed after the first drop
    assert written["checkpoints"] == 1
    assert await tenant_database_exists(srv, "t1")
    assert set(await platform_leftovers(srv, "t1")) == {"key_jobs/rotate:t1", "outbox_wake/t1"}
    t2_before = await counts(srv, "t2")
    assert t2_before["customers"] == 1
    during = not running.done()

    record = await running
    assert record is not None
    assert await counts(srv, "t1") == {}
    assert not await tenant_database_exists(srv, "t1")
    assert await platform_leftovers(srv, "t1") == []
    assert during, "the late writes came after the offboarding returned: the test proves nothing"
    finished = await store.platform("tenants").find_one({"_id": "t1"})
    assert finished["offboard_finished"] is True

    # The same id again starts empty: the late customer is not found under its new keys.
    await srv.apply(kyc_doc("t1", ["a.test"], plugin="demo_anchor"))
    assert await counts(srv, "t1") == {}
    returning = Wallet(srv, "a.test", "t1", keypair=late.keypair)
    status = (await returning.get()).json
    assert status["status"] == "NEEDS_INFO"
    assert "id" not in status
    assert await store.tenant("t1", "customers").find_one({"_id": late_id}) is None
    assert await platform_leftovers(srv, "t1") == ["tenant_hosts/a.test"]

    # The other tenant is untouched.
    assert await counts(srv, "t2") == t2_before
    assert (await neighbour.get()).json["id"] == neighbour_id


async def test_purge_loop_skips_a_tenant_offboarded_while_it_ran(
        make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    store, registry = srv.services.store, srv.services.registry
    assert [t.id for t in registry.served()] == ["t1", "t2"]  # t2 is purged after t1
    # An erased t1 customer: the purge of t1 rotates t1's KEK, which waits for every process
    # twice (2 x (2 x tenant_refresh_seconds + 1 s)); t2 is offboarded meanwhile.
    erased = Wallet(srv, "a.test", "t1")
    await erased.create()
    assert (await erased.delete()).status == 200
    await Wallet(srv, "b.test", "t2").create()

    run = asyncio.create_task(PurgeLoop(srv.services, 3600).run_once())

    async def rotating() -> bool:
        return await store.platform("key_jobs").find_one({"_id": rotate_job_id("t1")}) \
            is not None

    await wait_until(rotating, "the purge of t1 never started its KEK rotation")
    assert await srv.services.tenants.offboard("t2") is not None  # marked deleted, dropped
    await registry.refresh()
    assert registry.get("t2") is None
    reports = await run

    assert [(r.tenant, r.kek_rotated) for r in reports] == [("t1", True)]
    assert await counts(srv, "t2") == {}  # no review-queue checkpoint written for it
    assert not await tenant_database_exists(srv, "t2")


async def test_while_it_is_offboarded_the_id_cannot_be_applied_nor_offboarded_again(
        make_server: MakeServer) -> None:
    """During the wait, applying the id again made a new tenant that inherited the other
    processes' late writes (the second drop then saw an active tenant and left them), and a
    second offboarding call dropped, audited and answered again. Both are refused now; once
    the run has finished, the id can be applied again, and t2 is untouched throughout."""
    srv = await make_server(kyc_doc("t1", ["a.test"], plugin="demo_anchor"),
                            kyc_doc("t2", ["b.test"], plugin="demo_anchor"),
                            tenant_refresh_seconds=1.0)
    store = srv.services.store
    neighbour = Wallet(srv, "b.test", "t2")
    neighbour_id = await neighbour.create()
    running = asyncio.create_task(offboard_tenant(srv.services, "t1", "op-a"))

    async def deleted() -> bool:
        record = await store.platform("tenants").find_one({"_id": "t1"})
        return record["status"] == "deleted"

    await wait_until(deleted, "t1 was never marked deleted")
    with pytest.raises(ConfigError, match="still being offboarded"):
        await srv.apply(kyc_doc("t1", ["a.test"], plugin="demo_anchor"))
    with pytest.raises(JobBusy):
        await offboard_tenant(srv.services, "t1", "op-b")
    assert not running.done()
    assert await running is not None
    assert await store.platform("key_jobs").find_one({"_id": "offboard:t1:lease"}) is None
    entries = [(e["actor"], e["action"]) for e in await store.platform("platform_audit").find(
        {"action": "tenant.delete"})]
    assert entries == [("op-a", "tenant.delete")]
    await srv.apply(kyc_doc("t1", ["a.test"], plugin="demo_anchor"))
    assert srv.services.registry.get("t1") is not None
    assert await counts(srv, "t1") == {}
    assert (await neighbour.get()).json["id"] == neighbour_id


async def test_the_run_keeps_its_lease_through_a_long_wait(
        make_server: MakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait (2 x tenant_refresh_seconds + 1 s) may be longer than one lease: the run
    renews it, so a second call is still refused at the end of the wait. (Leases of 0.6 s
    against a 3 s wait here.)"""
    monkeypatch.setattr(jobs, "LEASE_SECONDS", 0.6)
    srv = await make_server(kyc_doc("t1", ["a.test"]), tenant_refresh_seconds=1.0)
    running = asyncio.create_task(offboard_tenant(srv.services, "t1", "op-a"))
    await asyncio.sleep(2.0)
    assert not running.done()
    with pytest.raises(JobBusy):
        await offboard_tenant(srv.services, "t1", "op-b")
    assert await running is not None
    assert await offboard_tenant(srv.services, "t1", "op-b") is None  # finished: gone
