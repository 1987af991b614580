"""SEP-10 limits over real HTTP (reliability-plan A14): requests per client IP and per
account on ``/auth``, failed logins per IP (store-backed, so they hold across servers), and
the client IP taken from proxy headers only when the peer is a trusted proxy."""

from __future__ import annotations

import json

from stellar_sdk import Keypair

from conftest import MakeServer
from limits.limits_helpers import (
    LOOPBACK_PROXY,
    assert_limited,
    get_auth,
    limited_doc,
    limited_server,
    login,
    post_auth,
    refused_count,
)
from sep10.sep10_helpers import HorizonStub, horizon_fixture, sign

__all__ = ["horizon_fixture"]


async def test_get_auth_per_ip_then_429_other_tenant_unaffected(
        make_server: MakeServer) -> None:
    srv = await limited_server(make_server, limited_doc("t1", "a.test", auth_per_ip="3/min"),
                               limited_doc("t2", "b.test", auth_per_ip="3/min"))
    for _ in range(3):  # a new account each time: only the per-IP limit can bite
        assert (await get_auth(srv, "a.test", Keypair.random().public_key)).code == 200
    refused = await get_auth(srv, "a.test", Keypair.random().public_key)
    assert_limited(refused, "auth_per_ip")
    assert refused.headers["Access-Control-Allow-Origin"] == "*"  # SEP-10: CORS on errors too
    assert refused_count(srv, "t1", "auth_per_ip") == 1
    for _ in range(4):  # a flood: refused locally or undone, so only admitted events stay
        assert (await get_auth(srv, "a.test", Keypair.random().public_key)).code == 429
    events = srv.services.store.tenant("t1", "rate_events")
    assert await events.count({}) == 3 + 3  # per IP, plus one per admitted account
    # The other tenant counts the same client separately.
    for _ in range(3):
        assert (await get_auth(srv, "b.test", Keypair.random().public_key)).code == 200
    assert refused_count(srv, "t2", "auth_per_ip") == 0


async def test_get_auth_per_account_other_account_and_memo_unaffected(
        make_server: MakeServer) -> None:
    srv = await limited_server(make_server, limited_doc("t1", "a.test", auth_per_account="2/min"),
                               limited_doc("t2", "b.test", auth_per_account="2/min"))
    alice, bob = Keypair.random().public_key, Keypair.random().public_key
    for _ in range(2):
        assert (await get_auth(srv, "a.test", alice)).code == 200
    assert_limited(await get_auth(srv, "a.test", alice), "auth_per_account")
    assert (await get_auth(srv, "a.test", bob)).code == 200
    # A memo user of a shared account is another subject (custodial wallets).
    assert (await get_auth(srv, "a.test", alice, memo="7")).code == 200
    assert (await get_auth(srv, "b.test", alice)).code == 200
    assert refused_count(srv, "t1", "auth_per_account") == 1


async def test_post_auth_counts_toward_the_ip_limit(make_server: MakeServer,
                                                    horizon: HorizonStub) -> None:
    srv = await limited_server(make_server, limited_doc("t1", "a.test", horizon,
                                                        auth_per_ip="4/min"))
    for _ in range(2):  # GET + POST each: four requests
        assert (await login(srv, "a.test", Keypair.random())).code == 200
    assert_limited(await get_auth(srv, "a.test", Keypair.random().public_key), "auth_per_ip")
    assert_limited(await post_auth(srv, "a.test", "AAAA"), "auth_per_ip")


async def test_post_auth_per_authenticated_account(make_server: MakeServer,
                                                   horizon: HorizonStub) -> None:
    srv = await limited_server(make_server, limited_doc("t1", "a.test", horizon,
                                                        auth_per_account="3/min"))
    alice = Keypair.random()
    assert (await login(srv, "a.test", alice)).code == 200  # GET + POST: 2 of 3
    challenge = await get_auth(srv, "a.test", alice.public_key)  # 3 of 3
    signed = sign(json.loads(challenge.body)["transaction"], alice)
    assert_limited(await post_auth(srv, "a.test", signed), "auth_per_account")
    assert (await login(srv, "a.test", Keypair.random())).code == 200


async def test_failed_logins_per_ip_block_even_a_good_login(make_server: MakeServer,
                                                            horizon: HorizonStub) -> None:
    srv = await limited_server(
        make_server, limited_doc("t1", "a.test", horizon, failed_logins_per_ip="3/min"),
        limited_doc("t2", "b.test", horizon, failed_logins_per_ip="3/min"),
        proxies=LOOPBACK_PROXY)
    attacker, wallet = Keypair.random(), Keypair.random()
    challenge = await get_auth(srv, "a.test", wallet.public_key, ip="198.51.100.1")
    xdr = json.loads(challenge.body)["transaction"]
    for _ in range(3):  # signed by the wrong key: verification fails
        failed = await post_auth(srv, "a.test", sign(xdr, attacker), ip="198.51.100.1")
        assert failed.code == 400, failed.body
    assert_limited(await post_auth(srv, "a.test", sign(xdr, wallet), ip="198.51.100.1"),
                   "failed_logins_per_ip")
    # Challenges are still handed out; only logins from that address wait.
    assert (await get_auth(srv, "a.test", wallet.public_key, ip="198.51.100.1")).code == 200
    # Another client address, and the same address on another tenant, log in normally.
    assert (await post_auth(srv, "a.test", sign(xdr, wallet), ip="198.51.100.2")).code == 200
    assert (await login(srv, "b.test", wallet, ip="198.51.100.1")).code == 200
    assert refused_count(srv, "t1", "failed_logins_per_ip") == 1


async def test_failed_logins_hold_across_two_servers_sharing_the_store(
        make_server: MakeServer, horizon: HorizonStub) -> None:
    doc = limited_doc("t1", "a.test", horizon, failed_logins_per_ip="4/min")
    first = await limited_server(make_server, doc)
    second = await limited_server(make_server)  # its own process state; same store
    await second.services.registry.refresh()
    for srv in (first, first, second, second):  # 2 each: neither alone reaches 4
        assert (await post_auth(srv, "a.test", "not a challenge")).code == 400
    for srv in (first, second):
        assert_limited(await post_auth(srv, "a.test", "not a challenge"),
                       "failed_logins_per_ip")
    assert_limited(await login(first, "a.test", Keypair.random()), "failed_logins_per_ip")


async def test_auth_limit_holds_across_two_servers(make_server: MakeServer) -> None:
    doc = limited_doc("t1", "a.test", auth_per_account="3/min")
    first = await limited_server(make_server, doc)
    second = await limited_server(make_server)
    await second.services.registry.refresh()
    alice = Keypair.random().public_key
    assert (await get_auth(first, "a.test", alice)).code == 200
    assert (await get_auth(second, "a.test", alice)).code == 200
    assert (await get_auth(first, "a.test", alice)).code == 200
    assert_limited(await get_auth(second, "a.test", alice), "auth_per_account")
    assert_limited(await get_auth(first, "a.test", alice), "auth_per_account")


async def test_spoofed_forwarding_headers_from_an_untrusted_peer_are_ignored(
        make_server: MakeServer) -> None:
    srv = await limited_server(make_server, limited_doc("t1", "a.test", auth_per_ip="2/min"))
    spoofs = [{"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2, 10.0.0.1"},
              {"Forwarded": "for=203.0.113.3"}]
    for headers in spoofs[:2]:
        assert (await get_auth(srv, "a.test", Keypair.random().public_key,
                               headers=headers)).code == 200
    # A third "new" address does not reset the peer's counter.
    assert_limited(await get_auth(srv, "a.test", Keypair.random().public_key,
                                  headers=spoofs[2]), "auth_per_ip")


async def test_trusted_proxy_right_most_untrusted_address_is_the_client(
        make_server: MakeServer) -> None:
    srv = await limited_server(make_server, limited_doc("t1", "a.test", auth_per_ip="2/min"),
                               proxies=("127.0.0.1/32", "10.0.0.0/8"))
    # The client forged the left part; our proxies (10.x, then 127.0.0.1) appended the rest.
    chains = ["198.51.100.7", "1.1.1.1, 198.51.100.7, 10.0.0.9", "2.2.2.2, 198.51.100.7"]
    for chain in chains[:2]:
        assert (await get_auth(srv, "a.test", Keypair.random().public_key,
                               headers={"X-Forwarded-For": chain})).code == 200
    assert_limited(await get_auth(srv, "a.test", Keypair.random().public_key,
                                  headers={"X-Forwarded-For": chains[2]}), "auth_per_ip")
    # Other clients behind the same proxy keep their own counters (XFF and Forwarded).
    assert (await get_auth(srv, "a.test", Keypair.random().public_key,
                           headers={"X-Forwarded-For": "198.51.100.8"})).code == 200
    assert (await get_auth(srv, "a.test", Keypair.random().public_key,
                           headers={"Forwarded": 'for="[2001:db8::1]:443"'})).code == 200


async def test_rate_limits_setting_off_disables_them(make_server: MakeServer) -> None:
    srv = await make_server(limited_doc("t1", "a.test", auth_per_ip="1/min"))  # setting off
    for _ in range(3):
        assert (await get_auth(srv, "a.test", Keypair.random().public_key)).code == 200


async def test_a_limit_set_off_in_the_tenant_file_is_not_enforced(
        make_server: MakeServer) -> None:
    srv = await limited_server(make_server, limited_doc("t1", "a.test", auth_per_ip="off",
                                                        auth_per_account="off"))
    alice = Keypair.random().public_key
    for _ in range(5):
        assert (await get_auth(srv, "a.test", alice)).code == 200
