"""One JWT per challenge (SEP-10; sep-digest §8 item 8; reliability-plan A4): sequentially,
under 20 concurrent submissions, and across two servers sharing one store."""

from __future__ import annotations

import asyncio
import time

from sep10_helpers import (  # noqa: F401
    HorizonStub,
    Wallet,
    decode,
    horizon_fixture,
    json_body,
    sign,
    srv_fixture,
    start_auth_server,
    wallet_fixture,
)
from stellar_sdk import Keypair

from conftest import MakeServer, RunningServer
from kyc_host.store.base import gte


def outcome(codes: list[int]) -> tuple[int, int]:
    assert set(codes) <= {200, 400}, codes
    return codes.count(200), codes.count(400)


async def test_second_post_of_a_challenge_is_refused(srv: RunningServer,
                                                     wallet: Wallet) -> None:
    client = Keypair.random()
    signed = sign(await wallet.challenge("a.test", account=client.public_key), client)
    assert (await wallet.post("a.test", signed)).code == 200
    second = await wallet.post("a.test", signed, form=True)
    assert second.code == 400
    assert "already used" in json_body(second)["error"]
    # Reordering the signatures does not make it a new challenge (the hash covers the tx).
    reordered = decode(signed)
    reordered.signatures.reverse()
    third = await wallet.post("a.test", reordered.to_xdr())
    assert third.code == 400
    assert "already used" in json_body(third)["error"]


async def test_consumed_hash_is_recorded_until_max_time(srv: RunningServer,
                                                        wallet: Wallet) -> None:
    client = Keypair.random()
    signed = sign(await wallet.challenge("a.test", account=client.public_key), client)
    assert (await wallet.post("a.test", signed)).code == 200
    envelope = decode(signed)
    used = srv.services.store.tenant("t1", "challenges")
    doc = await used.find_one({"_id": envelope.hash_hex()})
    assert doc is not None
    assert doc["expires_at"] == envelope.transaction.preconditions.time_bounds.max_time
    # Tenant-bound: T2's collection does not hold it.
    assert await srv.services.store.tenant("t2", "challenges").count({}) == 0


async def test_expired_hashes_are_purged(srv: RunningServer, wallet: Wallet) -> None:
    used = srv.services.store.tenant("t1", "challenges")
    await used.insert_one({"_id": "old", "expires_at": int(time.time()) - 3600})
    client = Keypair.random()
    assert (await wallet.login("a.test", client, account=client.public_key)).code == 200
    assert await used.find_one({"_id": "old"}) is None
    assert await used.count({"expires_at": gte(int(time.time()))}) == 1


async def test_a_wrong_copy_does_not_burn_the_challenge(wallet: Wallet) -> None:
    client = Keypair.random()
    xdr = await wallet.challenge("a.test", account=client.public_key)
    assert (await wallet.post("a.test", sign(xdr, Keypair.random()))).code == 400
    assert (await wallet.post("a.test", sign(xdr, client))).code == 200


async def test_twenty_concurrent_posts_give_one_token(wallet: Wallet) -> None:
    client = Keypair.random()
    signed = sign(await wallet.challenge("a.test", account=client.public_key), client)
    responses = await asyncio.gather(*(wallet.post("a.test", signed, form=i % 2 == 1)
                                       for i in range(20)))
    assert outcome([r.code for r in responses]) == (1, 19)


async def test_two_servers_sharing_a_store_give_one_token(
        make_server: MakeServer, horizon: HorizonStub) -> None:
    one = await start_auth_server(make_server, horizon)
    two = await make_server()  # same storage URL: a second process in all but name
    await two.services.registry.refresh()
    assert two.services.registry.get("t1") is not None
    assert two.services is not one.services
    assert two.services.store is not one.services.store
    client = Keypair.random()
    signed = sign(await Wallet(one).challenge("a.test", account=client.public_key), client)
    responses = await asyncio.gather(*(Wallet(one if i % 2 else two).post("a.test", signed)
                                       for i in range(20)))
    assert outcome([r.code for r in responses]) == (1, 19)
