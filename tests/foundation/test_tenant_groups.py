"""Tenant groups (setting ``serve_tenants``): two groups of processes on one store, each
answering its own tenants' wallets and delivering its own tenants' callbacks and purges.

Each test runs two real servers on the same store, group 1 serving ``t1`` and group 2
serving ``t2`` (by pattern), and checks both directions: what a group serves, what it
answers for the other group's tenant (421 JSON, nothing stored), and that the background
work of a tenant is done by its own group only.
"""

from __future__ import annotations

import asyncio
import json

from callbacks.cb_helpers import (
    FAST,
    Receiver,
    cb_doc,
    complete,
    customer_with_callback,
    eventually,
    signing_key,
)
from conftest import MakeServer
from kyc_host.callbacks.worker import CallbackWorker
from kyc_host.management.openapi_public import wallet_document
from management.mgmt_helpers import OpenApiChecker
from sep12.sep12_helpers import Wallet

DOCS = (cb_doc("t1", ["a.test"]), cb_doc("t2", ["b.test"]))
WALLET_API = OpenApiChecker(wallet_document())


async def test_each_group_answers_its_own_tenants_and_421_for_the_others(
        make_server: MakeServer) -> None:
    group1 = await make_server(*DOCS, serve_tenants=("t1",))
    group2 = await make_server(serve_tenants=("t2", "x-*"))
    await group2.services.registry.refresh()
    for srv, own, other in ((group1, "a.test", "b.test"), (group2, "b.test", "a.test")):
        served = await srv.fetch(own, "/.well-known/stellar.toml")
        assert served.code == 200
        misrouted = await srv.fetch(other, "/.well-known/stellar.toml")
        assert misrouted.code == 421
        assert misrouted.headers["Content-Type"].startswith("application/json")
        assert json.loads(misrouted.body) == {
            "error": "this host is not served here (misrouted request)"}
        WALLET_API.check("GET", "/.well-known/stellar.toml", 421, json.loads(misrouted.body))
        # An unknown host is still "unknown", not "served elsewhere".
        unknown = await srv.fetch("nobody.test", "/.well-known/stellar.toml")
        assert unknown.code == 404
        ready = json.loads((await srv.fetch("localhost", "/readyz", admin=True)).body)
        assert (ready["tenants"], ready["served"]) == (2, 1)


async def test_a_misrouted_write_stores_nothing(make_server: MakeServer) -> None:
    group1 = await make_server(*DOCS, serve_tenants=("t1",))
    group2 = await make_server(serve_tenants=("t2",))
    await group2.services.registry.refresh()
    # A wallet of t2 whose request reaches group 1: refused before any handler runs.
    misrouted = Wallet(group1, "b.test", "t2")
    reply = await misrouted.put({"first_name": "Bob"})
    assert reply.status == 421, reply.body
    assert await group1.services.store.tenant("t2", "customers").find({}) == []
    # The same request to its own group is served, and another customer of t1 on group 1.
    assert (await Wallet(group2, "b.test", "t2").put({"first_name": "Bob"})).status == 202
    assert (await Wallet(group1, "a.test", "t1").put({"first_name": "Al"})).status == 202
    assert len(await group1.services.store.tenant("t2", "customers").find({})) == 1


async def test_callbacks_are_delivered_by_the_tenants_own_group(
        make_server: MakeServer, receiver: Receiver) -> None:
    group1 = await make_server(*DOCS, serve_tenants=("t1",), **FAST)
    group2 = await make_server(serve_tenants=("t2",), **FAST)
    await group2.services.registry.refresh()
    # Group 1's worker is stopped: only group 2's polls (every 0.05 s) could deliver t1's.
    assert group1.server.callbacks is not None
    await group1.server.callbacks.stop()
    sink1 = receiver.sink("/w1", public_key=signing_key(group1, "t1"))
    sink2 = receiver.sink("/w2", public_key=signing_key(group2, "t2"))
    wallet1 = Wallet(group1, "a.test", "t1")
    await customer_with_callback(wallet1, receiver.url("/w1"))
    wallet2 = Wallet(group2, "b.test", "t2")
    await customer_with_callback(wallet2, receiver.url("/w2"))
    await complete(wallet1)
    await complete(wallet2)
    # Group 2 delivers its own tenant's event...
    await eventually(lambda: len(sink2.delivered()) == 1, what="t2's callback by group 2")
    # ...and, after many more of its polls and a sweep, still not t1's.
    await asyncio.sleep(1.0)
    assert sink1.hits == []
    # Group 1's worker back: t1's event goes out.
    worker = CallbackWorker(group1.services)
    worker.start()
    try:
        await eventually(lambda: len(sink1.delivered()) == 1, what="t1's callback by group 1")
    finally:
        await worker.stop()
    assert len(sink2.hits) == 1


async def test_purge_runs_for_the_groups_own_tenants(make_server: MakeServer) -> None:
    group1 = await make_server(*DOCS, serve_tenants=("t1",))
    group2 = await make_server(serve_tenants=("t*",))
    await group2.services.registry.refresh()
    assert group1.server.purge is not None
    assert group2.server.purge is not None
    assert [r.tenant for r in await group1.server.purge.run_once()] == ["t1"]
    assert sorted(r.tenant for r in await group2.server.purge.run_once()) == ["t1", "t2"]
