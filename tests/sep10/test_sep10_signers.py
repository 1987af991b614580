"""POST /auth refusals and signer rules: bad challenges (sep-digest §8 item 9), multisig against
a Horizon stand-in (§8 item 10, reliability-plan A5) and Horizon failures (503, never the
"account does not exist" rules)."""

from __future__ import annotations

import time

from sep10_helpers import (  # noqa: F401
    PASSPHRASE,
    HorizonStub,
    Wallet,
    decode,
    horizon_fixture,
    json_body,
    sign,
    srv_fixture,
    tenant_of,
    wallet_fixture,
)
from stellar_sdk import Account, Keypair, MuxedAccount, TransactionBuilder, TransactionEnvelope
from stellar_sdk.sep.stellar_web_authentication import build_challenge_transaction
from tornado.httpclient import HTTPResponse

from conftest import RunningServer, free_port, make_tenant_doc
from kyc_host.net import HorizonClient


def refused(response: HTTPResponse, status: int = 400) -> str:
    assert response.code == status, (response.code, response.body)
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = json_body(response)
    assert set(body) == {"error"}
    message: str = body["error"]
    return message


def server_signed(srv: RunningServer, client: str, *, timeout: int = 900,
                  min_time: int | None = None, web_auth_domain: bool = True,
                  signer: Keypair | None = None) -> str:
    """A challenge built and signed with T1's own key (or ``signer``), for shapes our server
    never issues."""
    server = signer or tenant_of(srv, "t1").secrets.signing_keypair
    start = int(time.time()) if min_time is None else min_time
    builder = TransactionBuilder(Account(server.public_key, -1), PASSPHRASE, 100)
    builder.add_time_bounds(start, start + timeout)
    builder.append_manage_data_op("a.test auth", b"A" * 64, source=client)
    if web_auth_domain:
        builder.append_manage_data_op("web_auth_domain", b"a.test", source=server.public_key)
    envelope = builder.build()
    envelope.sign(server)
    xdr: str = envelope.to_xdr()
    return xdr


async def test_bad_challenges(srv: RunningServer, wallet: Wallet) -> None:
    client = Keypair.random()
    xdr = await wallet.challenge("a.test", account=client.public_key)
    signed = sign(xdr, client)

    assert "transaction" in refused(await srv.fetch(
        "a.test", "/auth", method="POST", body="{}",
        headers={"Content-Type": "application/json"}))
    refused(await wallet.post("a.test", "AAAAAgAAAAA" + "garbage"))
    assert "client" in refused(await wallet.post("a.test", xdr))  # not signed by the client

    stripped = decode(signed)
    del stripped.signatures[0]  # the server's signature
    assert "server" in refused(await wallet.post("a.test", stripped.to_xdr()))

    altered = decode(signed)
    altered.transaction.operations[0].data_value = b"B" * 64
    refused(await wallet.post("a.test", altered.to_xdr()))

    assert "unrecognized" in refused(await wallet.post("a.test", sign(signed, Keypair.random())))
    twice = decode(signed)
    twice.signatures.append(twice.signatures[-1])
    refused(await wallet.post("a.test", twice.to_xdr()))

    expired = server_signed(srv, client.public_key, min_time=int(time.time()) - 1000, timeout=60)
    assert "timebounds" in refused(await wallet.post("a.test", sign(expired, client)))

    foreign = build_challenge_transaction(Keypair.random().secret, client.public_key, "a.test",
                                          "a.test", PASSPHRASE)
    assert "server" in refused(await wallet.post("a.test", sign(foreign, client)))

    # stellar-sdk accepts a challenge without web_auth_domain; SEP-10 v3 servers must not.
    no_domain_op = server_signed(srv, client.public_key, web_auth_domain=False)
    assert "web_auth_domain" in refused(await wallet.post("a.test", sign(no_domain_op, client)))

    # Valid for longer than this tenant's challenges ever are, even though server-signed.
    too_long = server_signed(srv, client.public_key, timeout=3600)
    assert "too long" in refused(await wallet.post("a.test", sign(too_long, client)))

    # None of the above consumed the real challenge.
    assert (await wallet.post("a.test", signed)).code == 200


async def test_nonexistent_account_needs_exactly_its_master_key(wallet: Wallet) -> None:
    client = Keypair.random()
    xdr = await wallet.challenge("a.test", account=client.public_key)
    assert "unrecognized" in refused(await wallet.post("a.test",
                                                       sign(xdr, client, Keypair.random())))
    other = Keypair.random()  # signing with a key that is not the account's master key
    refused(await wallet.post("a.test", sign(xdr, other)))
    assert (await wallet.post("a.test", sign(xdr, client))).code == 200


async def test_multisig(horizon: HorizonStub, wallet: Wallet) -> None:
    account, a, b, c = (Keypair.random() for _ in range(4))
    horizon.set_account(account.public_key, {account.public_key: 0, a.public_key: 1,
                                             b.public_key: 1, c.public_key: 1}, med=2)
    g = account.public_key

    async def attempt(*signers: Keypair, login_as: str = g) -> HTTPResponse:
        return await wallet.login("a.test", *signers, account=login_as)

    assert "threshold" in refused(await attempt(a))  # weight 1 < med 2
    xdr = sign(await wallet.challenge("a.test", account=g), a)
    twice = decode(xdr)
    twice.signatures.append(twice.signatures[-1])
    refused(await wallet.post("a.test", twice.to_xdr()))  # A twice is still weight 1
    assert "unrecognized" in refused(await attempt(a, b, Keypair.random()))
    refused(await attempt(account))  # master weight 0
    response = await attempt(a, b)
    assert response.code == 200
    response = await attempt(b, c, login_as=MuxedAccount(g, 3).account_muxed)
    assert response.code == 200
    assert horizon.state.requests >= 6


async def test_default_account_and_weight_zero(srv: RunningServer, horizon: HorizonStub,
                                               wallet: Wallet) -> None:
    d0, zero, w1 = Keypair.random(), Keypair.random(), Keypair.random()
    # A fresh account: master weight 1, all thresholds 0 -> weight >= 1 is required.
    horizon.set_account(d0.public_key, {d0.public_key: 1}, med=0)
    assert (await wallet.login("a.test", d0, account=d0.public_key)).code == 200
    xdr = await wallet.challenge("a.test", account=d0.public_key)
    assert "client" in refused(await wallet.post("a.test", xdr))  # server signature only
    # stellar-sdk accepts a weight-0 master at threshold 0 (SDP#1196); we must not.
    horizon.set_account(zero.public_key, {zero.public_key: 0}, med=0)
    refused(await wallet.login("a.test", zero, account=zero.public_key))
    # The server's own key listed as a signer of the client never counts.
    server = tenant_of(srv, "t1").secrets.signing_keypair
    horizon.set_account(w1.public_key, {w1.public_key: 1, server.public_key: 1}, med=2)
    assert "threshold" in refused(await wallet.login("a.test", w1, account=w1.public_key))


async def test_horizon_errors_are_503_and_do_not_burn_the_challenge(
        srv: RunningServer, horizon: HorizonStub, wallet: Wallet) -> None:
    client = Keypair.random()
    signed = sign(await wallet.challenge("a.test", account=client.public_key), client)
    horizon.state.mode = "error"
    message = refused(await wallet.post("a.test", signed), 503)
    assert "Horizon" in message
    horizon.state.mode = "hang"
    srv.services.horizon = HorizonClient(timeout=0.3)
    refused(await wallet.post("a.test", signed), 503)
    horizon.state.mode = "ok"
    assert (await wallet.post("a.test", signed)).code == 200


async def test_unreachable_horizon_is_503(srv: RunningServer, wallet: Wallet) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    await srv.apply(make_tenant_doc("t1", ["a.test"], horizon_url=dead))
    client = Keypair.random()
    response = await wallet.login("a.test", client, account=client.public_key)
    assert refused(response, 503)
    assert response.headers["Retry-After"]


async def test_fee_bump_envelope_is_refused(wallet: Wallet) -> None:
    client = Keypair.random()
    signed = sign(await wallet.challenge("a.test", account=client.public_key), client)
    inner = TransactionEnvelope.from_xdr(signed, PASSPHRASE)
    bump = TransactionBuilder.build_fee_bump_transaction(client.public_key, 200, inner,
                                                         PASSPHRASE)
    bump.sign(client)
    refused(await wallet.post("a.test", bump.to_xdr()))
