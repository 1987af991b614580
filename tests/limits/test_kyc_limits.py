"""SEP-12 limits over real HTTP: PUT /kyc/customer and uploads per account and per client IP
(store-backed: they hold across servers), the customer and file quotas, and GET
/kyc/customer left alone (the polling hot path is never limited)."""

from __future__ import annotations

from conftest import MakeServer, RunningServer
from limits.limits_helpers import (
    LOOPBACK_PROXY,
    assert_limited,
    limited_doc,
    limited_server,
    refused_count,
)
from sep12.sep12_helpers import ALICE, PNG, Wallet, png_of_size


async def two_tenants(make_server: MakeServer, proxies: tuple[str, ...] = (),
                      **limits: object) -> RunningServer:
    return await limited_server(make_server, limited_doc("t1", "a.test", **limits),
                                limited_doc("t2", "b.test", **limits), proxies=proxies)


async def test_customer_puts_per_account(make_server: MakeServer) -> None:
    srv = await two_tenants(make_server, customer_puts_per_account="2/min")
    alice = Wallet(srv, "a.test", "t1")
    assert (await alice.put(ALICE)).status == 202
    assert (await alice.put({**ALICE, "first_name": "Alicia"})).status == 202
    refused = await alice.put({**ALICE, "first_name": "Al"})
    assert_limited(refused, "customer_puts_per_account")
    # Nothing of the refused PUT was written; reading is never limited.
    for _ in range(5):
        status = await alice.get()
        assert status.status == 200, status.body
    assert (await alice.get()).json["status"] in ("ACCEPTED", "PROCESSING", "NEEDS_INFO")
    # Another account, another memo user of the same account, the same account elsewhere.
    assert (await Wallet(srv, "a.test", "t1").put(ALICE)).status == 202
    assert (await alice.other(memo=5).put(ALICE)).status == 202
    assert (await Wallet(srv, "b.test", "t2", keypair=alice.keypair).put(ALICE)).status == 202
    assert refused_count(srv, "t1", "customer_puts_per_account") == 1
    assert refused_count(srv, "t2", "customer_puts_per_account") == 0


async def test_refused_put_writes_nothing(make_server: MakeServer) -> None:
    srv = await two_tenants(make_server, customer_puts_per_account="1/min")
    alice = Wallet(srv, "a.test", "t1")
    assert (await alice.put(ALICE)).status == 202
    before = (await alice.get()).json
    assert_limited(await alice.put({**ALICE, "first_name": "Mallory"}),
                   "customer_puts_per_account")
    assert (await alice.get()).json == before


async def test_customer_puts_per_ip_behind_a_trusted_proxy(make_server: MakeServer) -> None:
    srv = await two_tenants(make_server, proxies=LOOPBACK_PROXY, customer_puts_per_ip="2/min")
    office = {"X-Forwarded-For": "198.51.100.20"}
    for _ in range(2):  # many accounts (memo rotation costs nothing) from one address
        reply = await Wallet(srv, "a.test", "t1").call("PUT", "/kyc/customer",
                                                       json_body=ALICE, headers=office)
        assert reply.status == 202, reply.body
    refused = await Wallet(srv, "a.test", "t1").call("PUT", "/kyc/customer", json_body=ALICE,
                                                     headers=office)
    assert_limited(refused, "customer_puts_per_ip")
    elsewhere = await Wallet(srv, "a.test", "t1").call(
        "PUT", "/kyc/customer", json_body=ALICE, headers={"X-Forwarded-For": "198.51.100.21"})
    assert elsewhere.status == 202


async def test_uploads_per_account_count_multipart_puts_and_file_posts(
        make_server: MakeServer) -> None:
    srv = await two_tenants(make_server, uploads_per_account="2/min")
    alice = Wallet(srv, "a.test", "t1")
    assert (await alice.upload(PNG)).status == 200
    multipart = await alice.put_multipart([("first_name", "Alice", None),
                                           ("photo_id_front", png_of_size(300, 1), "f.png")])
    assert multipart.status == 202, multipart.body
    assert_limited(await alice.upload(png_of_size(400, 2)), "uploads_per_account")
    assert_limited(await alice.put_multipart([("photo_id_front", png_of_size(500, 3), "f.png")]),
                   "uploads_per_account")
    # A JSON PUT is not an upload; other wallets and tenants upload normally.
    assert (await alice.put(ALICE)).status == 202
    assert (await Wallet(srv, "a.test", "t1").upload(PNG)).status == 200
    assert (await Wallet(srv, "b.test", "t2", keypair=alice.keypair).upload(PNG)).status == 200


async def test_put_limit_holds_across_two_servers_sharing_the_store(
        make_server: MakeServer) -> None:
    first = await limited_server(make_server,
                                 limited_doc("t1", "a.test", customer_puts_per_account="3/min"))
    second = await limited_server(make_server)
    await second.services.registry.refresh()
    on_first = Wallet(first, "a.test", "t1")
    on_second = Wallet(second, "a.test", "t1", keypair=on_first.keypair)
    assert (await on_first.put(ALICE)).status == 202
    assert (await on_second.put({**ALICE, "first_name": "B"})).status == 202
    assert (await on_first.put({**ALICE, "first_name": "C"})).status == 202
    assert_limited(await on_second.put({**ALICE, "first_name": "D"}),
                   "customer_puts_per_account")
    assert_limited(await on_first.put({**ALICE, "first_name": "E"}),
                   "customer_puts_per_account")


async def test_files_per_identity_quota(make_server: MakeServer) -> None:
    srv = await two_tenants(make_server, max_files_per_identity=2)
    alice = Wallet(srv, "a.test", "t1", memo=1)
    assert (await alice.upload(png_of_size(300, 1))).status == 200
    assert (await alice.upload(png_of_size(300, 2))).status == 200
    over = await alice.upload(png_of_size(300, 3))
    assert over.status == 429
    assert "limits.max_files_per_identity" in over.json["error"]
    # No Retry-After: a quota is freed by the client (deleting, replacing), not by waiting.
    assert "Retry-After" not in over.headers
    assert refused_count(srv, "t1", "max_files_per_identity") == 1
    over_put = await alice.put_multipart([("first_name", "Alice", None),
                                          ("photo_id_front", png_of_size(300, 4), "f.png")])
    assert over_put.status == 429, over_put.body
    assert (await alice.get()).status == 200
    # The quota is per identity (account + memo) and per tenant.
    assert (await alice.other(memo=2).upload(PNG)).status == 200
    assert (await Wallet(srv, "b.test", "t2", keypair=alice.keypair, memo=1).upload(PNG)
            ).status == 200


async def test_replacing_a_file_fits_a_full_quota(make_server: MakeServer) -> None:
    srv = await two_tenants(make_server, max_files_per_identity=1)
    alice = Wallet(srv, "a.test", "t1")
    first = await alice.put_multipart([("first_name", "Alice", None),
                                       ("photo_id_front", png_of_size(300, 1), "f.png")])
    assert first.status == 202, first.body
    again = await alice.put_multipart([("photo_id_front", png_of_size(300, 2), "f.png")])
    assert again.status == 202, again.body  # replaces the one file it holds
    assert (await alice.upload(PNG)).status == 429


async def test_customers_per_account_quota(make_server: MakeServer) -> None:
    srv = await two_tenants(make_server, max_customers_per_account=2)
    shared = Wallet(srv, "a.test", "t1", memo=1)
    assert (await shared.put(ALICE)).status == 202
    assert (await shared.other(memo=2).put(ALICE)).status == 202
    over = await shared.other(memo=3).put(ALICE)
    assert over.status == 429
    assert "limits.max_customers_per_account" in over.json["error"]
    assert "Retry-After" not in over.headers
    assert refused_count(srv, "t1", "max_customers_per_account") == 1
    assert (await shared.other(memo=3).get()).json["status"] == "NEEDS_INFO"  # not created
    # Existing customers keep working; other accounts and tenants are unaffected.
    assert (await shared.put({**ALICE, "first_name": "Alicia"})).status == 202
    assert (await Wallet(srv, "a.test", "t1").put(ALICE)).status == 202
    assert (await Wallet(srv, "b.test", "t2", keypair=shared.keypair, memo=3).put(ALICE)
            ).status == 202
