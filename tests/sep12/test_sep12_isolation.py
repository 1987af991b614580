"""Object-level authorization: another customer's or tenant's record is never reachable.

1,000 attempts (reliability-plan A8, digest §8 item 19) by other wallets of the same tenant
and by wallets of the other tenant, over every endpoint that takes an id, shuffled. Every
customer-endpoint attempt gets 404 with the *same body* as an id that never existed; the
files endpoint answers 200 with an empty list; the victim's stored record is unchanged.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Awaitable, Callable
from functools import partial

from conftest import MakeServer
from sep12.isolation_helpers import Probe, id_probes, raw_customer
from sep12.sep12_helpers import ALICE, PNG, Reply, Wallet, two_kyc_tenants

Attempt = Callable[[], Awaitable[Reply]]


async def send(wallet: Wallet, probe: Probe) -> Reply:
    return await wallet.call(probe.method, probe.target,
                             body=None if probe.method == "GET" else probe.body,
                             headers=dict(probe.headers))


def attempts(victim_id: str, victim_file: str,
             attackers: list[Wallet]) -> list[tuple[str, Attempt]]:
    """(kind, request) pairs: every id-taking request (isolation_helpers.id_probes) by every
    attacker. "404" expects the body of a customer id that never existed, "404file" that of
    a file id that never existed, "empty" an empty file list."""
    return [(probe.expect, partial(send, wallet, probe))
            for wallet in attackers for probe in id_probes(victim_id, victim_file)]


async def test_1000_attempts_on_foreign_ids_all_fail_alike(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    victim = Wallet(srv, "a.test", "t1")
    victim_id = await victim.create({**ALICE, "mobile_number": "+14155552671"})
    victim_file = (await victim.upload(PNG)).json["file_id"]
    await victim.put({"photo_id_front_file_id": victim_file})
    before = await raw_customer(srv, "t1", victim_id)
    # Other customers of the same tenant (a stranger, a shared-account user of the victim's
    # own G under a memo), and the victim's own keys at the other tenant.
    stranger = Wallet(srv, "a.test", "t1")
    await stranger.create()
    memo_user = victim.other(memo=7)
    await memo_user.create()
    muxed_user = victim.other(muxed_id=8)
    other_tenant = Wallet(srv, "b.test", "t2", keypair=victim.keypair)
    await other_tenant.create()
    attackers = [stranger, memo_user, muxed_user, other_tenant, Wallet(srv, "b.test", "t2")]
    never = await stranger.get(id=str(uuid.uuid4()))
    never_file = await stranger.put({"photo_id_front_file_id": str(uuid.uuid4())})
    assert never.status == never_file.status == 404
    pool = attempts(victim_id, victim_file, attackers)
    rng = random.Random(1946)
    plan = [rng.choice(pool) for _ in range(1000)]
    for kind, call in plan:
        reply = await call()
        if kind == "404":
            assert (reply.status, reply.body) == (404, never.body)
        elif kind == "404file":
            assert (reply.status, reply.body) == (404, never_file.body)
        else:
            assert (reply.status, reply.json) == (200, {"files": []})
    assert await raw_customer(srv, "t1", victim_id) == before
    assert (await victim.get(id=victim_id)).json["id"] == victim_id


async def test_unknown_and_foreign_file_ids_in_put_look_alike(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    owner, other = Wallet(srv, "a.test", "t1"), Wallet(srv, "a.test", "t1")
    theirs = (await owner.upload(PNG)).json["file_id"]
    foreign = await other.put({"photo_id_front_file_id": theirs})
    unknown = await other.put({"photo_id_front_file_id": str(uuid.uuid4())})
    garbage = await other.put({"photo_id_front_file_id": "../../x"})
    assert foreign.status == unknown.status == garbage.status == 404
    assert foreign.body == unknown.body == garbage.body


async def test_same_account_on_two_tenants_is_two_customers(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    at_a = Wallet(srv, "a.test", "t1")
    at_b = Wallet(srv, "b.test", "t2", keypair=at_a.keypair)
    id_a = await at_a.create()
    assert "id" not in (await at_b.get()).json
    id_b = await at_b.create({**ALICE, "first_name": "Other"})
    assert id_a != id_b
    assert (await at_b.get(id=id_a)).status == 404
    assert (await at_a.get(id=id_b)).status == 404
    # A token of tenant A at tenant B's host is not a token at all there.
    token_from_a = at_a.token
    assert (await at_b.call("GET", "/kyc/customer", token=token_from_a)).status == 401


async def test_ids_are_random_uuid4(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    ids = [await Wallet(srv, "a.test", "t1").create() for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(uuid.UUID(i).version == 4 for i in ids)
