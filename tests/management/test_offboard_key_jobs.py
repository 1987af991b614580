"""Offboarding removes the tenant's key-job documents, so the id applied again starts afresh.

A KEK rotation keeps its checkpoint in the platform ``key_jobs`` collection under
``rotate:<tenant>`` (crypto/jobs.py), outside the tenant's own collections. Left behind by an
offboarding that cut the rotation short, it was resumed by the next tenant applied under the
same id, whose fresh secrets never held the rotation's target KEK: stopped at ``activate`` the
rotation failed with "KEK v2 is missing" on every run, stopped in ``rewrap`` it went round
until MAX_PASSES (or failed to retire), and the purge job's automatic rotation with it. Here
the rotation is cut in either stage, the tenant offboarded through the management API and
applied again: a new rotation runs to the end, and the other tenant's key-job documents are
as they were.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from conftest import MakeServer, RunningServer
from keys.keys_helpers import job_context
from keys.test_keys_resume import Killed, kill_after, plant_dead_lease
from keys.test_keys_rotation import all_readable
from kyc_host.crypto.rotation import reindex_job_id, rotate_job_id, rotate_kek
from kyc_host.crypto.tenant_keys import read_secrets
from kyc_host.management.auth import create_token
from sep12.sep12_helpers import Wallet, kyc_doc, two_kyc_tenants


async def wait_for_stage(srv: RunningServer, job_id: str, stage: str) -> None:
    jobs = srv.services.store.platform("key_jobs")
    deadline = time.monotonic() + 30
    while (await jobs.find_one({"_id": job_id}) or {}).get("stage") != stage:
        assert time.monotonic() < deadline, f"{job_id} never reached {stage!r}"
        await asyncio.sleep(0.02)


async def cut_rotation(srv: RunningServer, tenant_id: str, stage: str) -> None:
    """Leave the tenant's KEK rotation unfinished at ``stage``, as a crash would."""
    if stage == "rewrap":  # killed after its first batch of customers
        with pytest.raises(Killed):
            await rotate_kek(job_context(srv, batch=1, on_batch=kill_after(1, "customers")),
                             tenant_id)
        return
    # Cancelled while it waits (asyncio.sleep, 2 x 0.2 + 1 s) for every process to load KEK
    # v2 as the wrapping key: after the stage's write, never inside a store operation.
    task = asyncio.create_task(rotate_kek(job_context(srv), tenant_id))
    await wait_for_stage(srv, rotate_job_id(tenant_id), stage)
    deadline = time.monotonic() + 30
    while (await read_secrets(srv.services.store, srv.services.keys, tenant_id)
           ).kek_version != 2:
        assert time.monotonic() < deadline, "KEK v2 never became the wrapping key"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def key_documents(srv: RunningServer, tenant_id: str) -> dict[str, dict[str, Any]]:
    """The tenant's documents in the platform's ``key_jobs`` and ``outbox_wake``."""
    store = srv.services.store
    found = {f"key_jobs/{d['_id']}": d for d in await store.platform("key_jobs").find({})
             if str(d["_id"]).split(":")[1] == tenant_id}
    wake = await store.platform("outbox_wake").find_one({"_id": tenant_id})
    if wake is not None:
        found[f"outbox_wake/{tenant_id}"] = wake
    return found


async def delete_tenant(srv: RunningServer, tenant_id: str) -> None:
    """``DELETE /api/v1/tenants/{id}`` with an operator token (the management API's path)."""
    issued = await create_token(srv.services.store, tenant_id=None, scopes=["operator"],
                                created_by="test")
    reply = await srv.fetch("127.0.0.1", f"/api/v1/tenants/{tenant_id}", method="DELETE",
                            headers={"Authorization": f"Bearer {issued.token}"}, admin=True)
    assert reply.code == 204, reply.body


@pytest.mark.parametrize("stage", ["activate", "rewrap"])
async def test_a_rotation_cut_short_by_offboarding_does_not_follow_the_id(
        make_server: MakeServer, stage: str) -> None:
    srv = await two_kyc_tenants(make_server)
    store = srv.services.store
    for i in range(3):
        await Wallet(srv, "a.test", "t1").create(email_address=f"t1-{i}@example.org")
        await Wallet(srv, "b.test", "t2").create(email_address=f"t2-{i}@example.org")
    wake = store.platform("outbox_wake")
    for tenant_id in ("t1", "t2"):
        await wake.update_one({"_id": tenant_id}, set={"at": time.time()}, upsert=True)

    # The other tenant has key-job documents of its own: an unfinished rotation, the
    # checkpoint and dead lease of a reindex. Offboarding t1 must leave them as they are.
    await cut_rotation(srv, "t2", "rewrap")
    await store.platform("key_jobs").insert_one(
        {"_id": reindex_job_id("t2"), "kind": "reindex", "tenant": "t2", "stage": "customers",
         "target": 2, "cursor": "", "counters": {}})
    await plant_dead_lease(srv, reindex_job_id("t2"))
    neighbour = await key_documents(srv, "t2")
    assert set(neighbour) == {"key_jobs/rotate:t2", "key_jobs/reindex:t2",
                              "key_jobs/reindex:t2:lease", "outbox_wake/t2"}

    # t1: a rotation stopped at ``stage``, and what a killed reindex would leave.
    await cut_rotation(srv, "t1", stage)
    state = await store.platform("key_jobs").find_one({"_id": rotate_job_id("t1")})
    assert state is not None
    assert (state["stage"], state["target"]) == (stage, 2)
    await plant_dead_lease(srv, rotate_job_id("t1"))
    await store.platform("key_jobs").insert_one(
        {"_id": reindex_job_id("t1"), "kind": "reindex", "tenant": "t1", "stage": "write",
         "target": 2, "cursor": "", "counters": {}})
    await plant_dead_lease(srv, reindex_job_id("t1"))
    assert set(await key_documents(srv, "t1")) == {
        "key_jobs/rotate:t1", "key_jobs/rotate:t1:lease", "key_jobs/reindex:t1",
        "key_jobs/reindex:t1:lease", "outbox_wake/t1"}

    offboarded_at = time.time()
    await delete_tenant(srv, "t1")
    left_behind = await key_documents(srv, "t1")
    assert await key_documents(srv, "t2") == neighbour

    # The same id again: new secrets (KEK v1 only), new customers.
    await srv.apply(kyc_doc("t1", ["a.test"], plugin="demo_anchor"))
    fresh = [await Wallet(srv, "a.test", "t1").create(email_address=f"new-{i}@example.org")
             for i in range(3)]
    assert sorted((await read_secrets(store, srv.services.keys, "t1")).data_keks) == [1]
    done = await rotate_kek(job_context(srv), "t1")
    assert done["stage"] == "done"
    assert done["previous"] == [1]  # started afresh, not resumed
    assert done["started_at"] >= offboarded_at
    assert sorted((await read_secrets(store, srv.services.keys, "t1")).data_keks) == [2]
    await all_readable(srv, "t1", fresh)
    assert left_behind == {}  # nothing of the old tenant's jobs was there to resume

    # The other tenant's rotation resumes from its own checkpoint and finishes.
    assert await key_documents(srv, "t2") == neighbour
    finished = await rotate_kek(job_context(srv), "t2")
    assert finished["stage"] == "done"
    assert sorted((await read_secrets(store, srv.services.keys, "t2")).data_keks) == [2]
