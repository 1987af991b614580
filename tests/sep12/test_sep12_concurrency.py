"""Idempotent and concurrent PUT /customer (reliability-plan F4).

Concurrent first PUTs for one identity race on the identity's unique key; the losers adopt
the winner's customer, so every answer carries one id and the store holds one record. Two
servers on one store stand in for two processes.
"""

from __future__ import annotations

import asyncio

from conftest import MakeServer, RunningServer
from kyc_host.sep.sep12_tenant import service_for
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc, tenant_of, two_kyc_tenants


async def count(srv: RunningServer, collection: str) -> int:
    return await srv.services.store.tenant("t1", collection).count({})


async def test_concurrent_first_puts_make_one_customer(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    # A second server on the same store: another process, as far as the store can tell.
    twin = await make_server(kyc_doc("t1", ["a.test"], plugin="demo_anchor"),
                             kyc_doc("t2", ["b.test"], plugin="demo_anchor"))
    wallet = Wallet(srv, "a.test", "t1")
    twin_wallet = Wallet(twin, "a.test", "t1", keypair=wallet.keypair)
    replies = await asyncio.gather(*[w.put(ALICE) for w in [wallet, twin_wallet] * 10])
    assert {r.status for r in replies} == {202}
    assert len({r.json["id"] for r in replies}) == 1
    assert await count(srv, "customers") == 1
    assert await count(srv, "identities") == 1


async def test_concurrent_different_puts_leave_one_whole_version(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    versions = [{"first_name": f"Name{i}", "last_name": f"Last{i}",
                 "email_address": f"user{i}@example.com"} for i in range(20)]
    replies = await asyncio.gather(*[wallet.put(v) for v in versions])
    assert len({r.json["id"] for r in replies}) == 1
    assert await count(srv, "customers") == 1
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    record = await service.customers.load(replies[0].json["id"])
    assert record is not None
    assert record.fields in versions  # last writer wins, never a mix of versions


async def test_repeated_identical_put_writes_nothing(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create({**ALICE, "mobile_number": "+14155552671"})
    raw = srv.services.store.tenant("t1", "customers")
    before = await raw.find_one({"_id": customer_id})
    for _ in range(100):
        assert (await wallet.put({**ALICE, "mobile_number": "+1 (415) 555-2671"})).json == {
            "id": customer_id}
    assert await raw.find_one({"_id": customer_id}) == before  # no write, no new code
    await wallet.put({**ALICE, "last_name": "Changed"})
    assert (await raw.find_one({"_id": customer_id}) or {})["updated_at"] > before["updated_at"]
