"""Linking and unlinking identities through the management API while and after a tenant's
blind indexes move to a new index key (``kyc-host keys reindex``), over real HTTP on both
backends. A customer record labels each identity with the index value it had when linked;
a reindex leaves those labels alone, so the API must recognise an identity by its key, not
by its index under the current version."""

from __future__ import annotations

from typing import Any

from mgmt_helpers import (  # noqa: F401 - fixtures
    Api,
    Mgmt,
    OpenApiChecker,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)
from review_helpers import ALICE, BOB, KycWallet

from keys.keys_helpers import job_context
from kyc_host.crypto.rotation import reindex
from kyc_host.crypto.tenant_keys import read_secrets
from kyc_host.management.customers import IDENTITY_NOT_LINKED
from kyc_host.store.base import ne

BASE = "/api/v1/tenants/t1/customers"


async def _actions(api: Api, token: str) -> list[str]:
    reply = await api.call("GET", "/api/v1/tenants/t1/audit?limit=200", token=token)
    assert reply.status == 200
    return [e["action"] for e in reply.body["entries"]]


async def _identity_docs(mgmt: Mgmt, tenant: str, customer_id: str) -> list[dict[str, Any]]:
    return await mgmt.srv.services.store.tenant(tenant, "identities").find(
        {"customer_id": customer_id})


async def _reaches(wallet: KycWallet) -> str | None:
    body = await wallet.get()
    return None if "id" not in body else str(body["id"])


async def test_unlink_after_reindex(mgmt: Mgmt) -> None:
    api = mgmt.api
    alice = KycWallet(mgmt.srv, "a.test", "t1")
    bob = KycWallet(mgmt.srv, "a.test", "t1")
    alice_id, bob_id = await alice.put(ALICE), await bob.put(BOB)
    shared = KycWallet(mgmt.srv, "a.test", "t1", memo=7)  # a memo user of a shared account
    bob_extra = KycWallet(mgmt.srv, "a.test", "t1")
    t2_shared = KycWallet(mgmt.srv, "b.test", "t2", keypair=shared.keypair, memo=7)
    t2_id = await t2_shared.put(ALICE)  # the same identity, in the other tenant
    t2_extra = KycWallet(mgmt.srv, "b.test", "t2")
    alice_path, bob_path = f"{BASE}/{alice_id}/identities", f"{BASE}/{bob_id}/identities"
    shared_body = {"account": shared.account, "memo": "7"}
    for path, body in ((alice_path, shared_body), (bob_path, {"account": bob_extra.account})):
        assert (await api.call("POST", path, token=mgmt.t1, body=body)).status == 201
    t2_link = await api.call("POST", f"/api/v1/tenants/t2/customers/{t2_id}/identities",
                             token=mgmt.t2, body={"account": t2_extra.account})
    assert t2_link.status == 201

    await reindex(job_context(mgmt.srv), "t1")
    secrets = await read_secrets(mgmt.srv.services.store, mgmt.srv.services.keys, "t1")
    assert sorted(secrets.index_keys) == [2]  # the link-time index key is gone

    detail = await api.call("GET", f"{BASE}/{alice_id}", token=mgmt.t1)
    assert {"account": shared.account, "memo": "7", "memo_type": "id"} in detail.body[
        "identities"]
    assert await _reaches(shared) == alice_id

    # Another customer's identity, and identities known only to the other tenant.
    for body in ({"account": bob_extra.account}, {"account": bob.account},
                 {"account": t2_extra.account}):
        reply = await api.call("DELETE", alice_path, token=mgmt.t1, body=body)
        assert (reply.status, reply.error) == (404, IDENTITY_NOT_LINKED), body
    for path, token in ((f"{BASE}/{t2_id}/identities", mgmt.t1),
                        (f"{BASE}/{t2_id}/identities", mgmt.operator),
                        (f"/api/v1/tenants/t2/customers/{t2_id}/identities", mgmt.t1)):
        reply = await api.call("DELETE", path, token=token, body={"account": t2_extra.account})
        assert reply.status == 404, (path, reply.body)
    assert await _reaches(bob_extra) == bob_id
    assert await _reaches(bob) == bob_id
    assert await _reaches(t2_extra) == t2_id
    assert len(await _identity_docs(mgmt, "t1", bob_id)) == 2
    assert len(await _identity_docs(mgmt, "t2", t2_id)) == 2

    # The identity linked before the reindex.
    unlinked = await api.call("DELETE", alice_path, token=mgmt.t1, body=shared_body)
    assert unlinked.status == 200, unlinked.body
    assert unlinked.body["identities"] == [{"account": alice.account, "memo": None,
                                            "memo_type": None}]
    assert await _reaches(shared) is None  # the wallet no longer reaches Alice
    assert len(await _identity_docs(mgmt, "t1", alice_id)) == 1
    gone = await api.call("DELETE", alice_path, token=mgmt.t1, body=shared_body)
    assert (gone.status, gone.error) == (404, IDENTITY_NOT_LINKED)
    assert await _reaches(t2_shared) == t2_id  # the other tenant's customer is untouched
    again = await api.call("POST", bob_path, token=mgmt.t1, body={"account": bob_extra.account})
    assert again.status == 200, again.body  # linked before the reindex: nothing to do

    # An identity linked after the reindex.
    later = KycWallet(mgmt.srv, "a.test", "t1", memo=9)
    later_body = {"account": later.account, "memo": "9"}
    assert (await api.call("POST", alice_path, token=mgmt.t1, body=later_body)).status == 201
    assert await _reaches(later) == alice_id
    assert (await api.call("DELETE", alice_path, token=mgmt.t1,
                           body=later_body)).status == 200
    assert await _reaches(later) is None
    last = await api.call("DELETE", alice_path, token=mgmt.t1, body={"account": alice.account})
    assert last.status == 409
    assert await _reaches(alice) == alice_id

    actions = await _actions(api, mgmt.t1)
    assert actions.count("customer.identity_link") == 3
    assert actions.count("customer.identity_unlink") == 2


async def test_link_and_unlink_during_reindex(mgmt: Mgmt) -> None:
    """In the reindex's write stage (new index values use the next key, lookups read both)
    an identity linked before it, and one linked during it, can be unlinked."""
    api = mgmt.api
    alice = KycWallet(mgmt.srv, "a.test", "t1")
    alice_id = await alice.put(ALICE)
    for _ in range(6):  # more customers than one backfill batch
        await KycWallet(mgmt.srv, "a.test", "t1").put(BOB)
    before = KycWallet(mgmt.srv, "a.test", "t1", memo=7)
    during = KycWallet(mgmt.srv, "a.test", "t1", memo=8)
    path = f"{BASE}/{alice_id}/identities"
    before_body = {"account": before.account, "memo": "7"}
    during_body = {"account": during.account, "memo": "8"}
    assert (await api.call("POST", path, token=mgmt.t1, body=before_body)).status == 201
    seen: list[tuple[str | None, int | None]] = []

    async def mid_reindex(pass_name: str, done: int) -> None:
        if pass_name != "customers" or seen:
            return
        secrets = await read_secrets(mgmt.srv.services.store, mgmt.srv.services.keys, "t1")
        seen.append((secrets.index_stage, secrets.index_next))
        unlinked = await api.call("DELETE", path, token=mgmt.t1, body=before_body)
        assert unlinked.status == 200, unlinked.body
        assert await _reaches(before) is None
        linked = await api.call("POST", path, token=mgmt.t1, body=during_body)
        assert linked.status == 201, linked.body
        assert await _reaches(during) == alice_id

    await reindex(job_context(mgmt.srv, on_batch=mid_reindex), "t1")
    assert seen == [("write", 2)]
    assert await _reaches(before) is None
    assert await _reaches(during) == alice_id
    again = await api.call("POST", path, token=mgmt.t1, body=during_body)
    assert again.status == 200, again.body
    unlinked = await api.call("DELETE", path, token=mgmt.t1, body=during_body)
    assert unlinked.status == 200, unlinked.body
    assert await _reaches(during) is None
    assert await _reaches(alice) == alice_id
    assert len(await _identity_docs(mgmt, "t1", alice_id)) == 1


async def test_an_identity_unlinked_while_the_backfill_runs_stays_unlinked(mgmt: Mgmt) -> None:
    """The reindex's backfill loads a record, then inserts its identities under the next
    version. An unlink deletes the identity's rows (every version) before it saves the record
    without it; landing in between (or cut there), it used to be undone: the backfill's new
    row made the identity reach the customer again. Other identities keep theirs."""
    api = mgmt.api
    customers: list[tuple[str, KycWallet, KycWallet, str]] = []
    for n in range(7):  # more customers than one backfill batch
        main = KycWallet(mgmt.srv, "a.test", "t1")
        customer_id = await main.put(ALICE if n % 2 else BOB)
        before = {d["_id"] for d in await _identity_docs(mgmt, "t1", customer_id)}
        extra = KycWallet(mgmt.srv, "a.test", "t1", memo=n + 1)
        reply = await api.call("POST", f"{BASE}/{customer_id}/identities", token=mgmt.t1,
                               body={"account": extra.account, "memo": str(n + 1)})
        assert reply.status == 201, reply.body
        [extra_row] = {d["_id"] for d in await _identity_docs(mgmt, "t1", customer_id)} - before
        customers.append((customer_id, main, extra, str(extra_row)))
    t2_wallet = KycWallet(mgmt.srv, "b.test", "t2", keypair=customers[0][1].keypair)
    t2_id = await t2_wallet.put(ALICE)
    identities = mgmt.srv.services.store.tenant("t1", "identities")
    cut: list[str] = []

    async def unlink_cut_before_its_save(pass_name: str, done: int) -> None:
        if pass_name != "customers" or cut:
            return
        pending = await mgmt.srv.services.store.tenant("t1", "customers").find(
            {"ix_v": ne(2)}, limit=100)
        assert len(pending) >= 2, "the first batch backfilled nearly every customer"
        for doc in pending[:2]:
            customer_id = str(doc["_id"])
            [(_, _, _, row)] = [c for c in customers if c[0] == customer_id]
            assert await identities.delete_one({"_id": row, "customer_id": customer_id}) == 1
            cut.append(customer_id)

    await reindex(job_context(mgmt.srv, on_batch=unlink_cut_before_its_save), "t1")
    assert len(cut) == 2
    for customer_id, main, extra, _ in customers:
        assert await _reaches(main) == customer_id
        assert await _reaches(extra) == (None if customer_id in cut else customer_id)
    assert await _reaches(t2_wallet) == t2_id
    # The records still name the identities. For one, the admin's link makes it reach the
    # customer again (it did not: not "already linked"); for the other, the admin's unlink
    # finishes what was cut (not 404).
    [relink, finish] = [next(c for c in customers if c[0] == cid) for cid in cut]
    for half_linked in (relink, finish):
        detail = await api.call("GET", f"{BASE}/{half_linked[0]}", token=mgmt.t1)
        assert len(detail.body["identities"]) == 2
    customer_id, main, extra, _ = relink
    relinked = await api.call("POST", f"{BASE}/{customer_id}/identities", token=mgmt.t1,
                              body={"account": extra.account, "memo": str(extra.memo)})
    assert relinked.status == 201, relinked.body
    assert len(relinked.body["identities"]) == 2
    assert await _reaches(extra) == customer_id
    customer_id, main, extra, _ = finish
    finished = await api.call("DELETE", f"{BASE}/{customer_id}/identities", token=mgmt.t1,
                              body={"account": extra.account, "memo": str(extra.memo)})
    assert finished.status == 200, finished.body
    assert finished.body["identities"] == [{"account": main.account, "memo": None,
                                            "memo_type": None}]
    assert await _reaches(extra) is None
    assert await _reaches(main) == customer_id
