"""GET /auth: the challenge and its parameter rules (sep-digest §8 items 1-5, reliability-plan
A2.3). Real server over real HTTP, both backends."""

from __future__ import annotations

import base64
import json
import time
import tomllib

from sep10_helpers import (  # noqa: F401
    HorizonStub,
    Wallet,
    decode,
    horizon_fixture,
    json_body,
    srv_fixture,
    wallet_fixture,
)
from stellar_sdk import IdMemo, Keypair, MuxedAccount, NoneMemo
from stellar_sdk.operation import ManageData
from tornado.httpclient import HTTPResponse

from conftest import RunningServer


def assert_auth_error(response: HTTPResponse, status: int = 400) -> str:
    assert response.code == status, (response.code, response.body)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = json.loads(response.body)
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    assert b"Traceback" not in response.body
    message: str = body["error"]
    return message


async def toml_of(srv: RunningServer, host: str) -> dict[str, object]:
    response = await srv.fetch(host, "/.well-known/stellar.toml")
    assert response.code == 200
    return tomllib.loads(response.body.decode())


async def test_toml_publishes_this_tenants_sep10_keys(srv: RunningServer) -> None:
    a, b = await toml_of(srv, "a.test"), await toml_of(srv, "b.test")
    assert a["WEB_AUTH_ENDPOINT"] == "https://a.test/auth"
    assert b["WEB_AUTH_ENDPOINT"] == "https://b.test/auth"
    for doc in (a, b):
        assert str(doc["SIGNING_KEY"]).startswith("G")
        assert len(str(doc["SIGNING_KEY"])) == 56
        assert not str(doc["WEB_AUTH_ENDPOINT"]).endswith("/")
    assert a["SIGNING_KEY"] != b["SIGNING_KEY"]


async def test_challenge_shape(srv: RunningServer, wallet: Wallet) -> None:
    client = Keypair.random()
    signing_key = str((await toml_of(srv, "a.test"))["SIGNING_KEY"])
    before = int(time.time())
    response = await wallet.get("a.test", account=client.public_key)
    after = time.time()
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    body = json_body(response)
    assert set(body) == {"transaction", "network_passphrase"}
    assert body["network_passphrase"] == "Test SDF Network ; September 2015"
    envelope = decode(body["transaction"])
    tx = envelope.transaction
    assert tx.sequence == 0
    assert tx.source.account_id == signing_key
    bounds = tx.preconditions.time_bounds
    assert before <= bounds.min_time <= after
    assert bounds.max_time == bounds.min_time + 900
    assert all(isinstance(op, ManageData) for op in tx.operations)
    first, *rest = tx.operations
    assert first.source.universal_account_id == client.public_key
    assert first.data_name == "a.test auth"
    assert len(first.data_value) == 64
    assert len(base64.b64decode(first.data_value)) == 48
    assert [(op.data_name, op.data_value, op.source.universal_account_id) for op in rest] == [
        ("web_auth_domain", b"a.test", signing_key)]
    assert isinstance(tx.memo, NoneMemo)
    assert len(envelope.signatures) == 1
    Keypair.from_public_key(signing_key).verify(envelope.hash(), envelope.signatures[0].signature)


async def test_each_challenge_has_a_fresh_nonce(wallet: Wallet) -> None:
    client = Keypair.random().public_key
    one = decode(await wallet.challenge("a.test", account=client))
    two = decode(await wallet.challenge("a.test", account=client))
    assert one.transaction.operations[0].data_value != two.transaction.operations[0].data_value


async def test_challenge_is_signed_by_the_tenant_of_the_host(srv: RunningServer,
                                                             wallet: Wallet) -> None:
    client = Keypair.random().public_key
    envelope = decode(await wallet.challenge("b.test", account=client))
    tx = envelope.transaction
    assert tx.source.account_id == (await toml_of(srv, "b.test"))["SIGNING_KEY"]
    assert tx.operations[0].data_name == "b.test auth"
    assert tx.operations[1].data_value == b"b.test"


async def test_missing_or_bad_account_is_400(wallet: Wallet) -> None:
    good = Keypair.random().public_key
    contract = "CA3D5KRYM6CB7OWQ6TWYRR3Z4T7GNZLKERYNZGGA5SOAOPIFY6YQGAXE"
    bad = ["", "invalid-account", good.lower(), good[:-1], good + "A",
           good[:-1] + ("A" if good[-1] != "A" else "B"), contract, "S" + good[1:],
           Keypair.random().secret]
    assert "required" in assert_auth_error(await wallet.get("a.test"))
    for account in bad:
        assert_auth_error(await wallet.get("a.test", account=account))
    message = assert_auth_error(await wallet.get("a.test", account=contract))
    assert "SEP-45" in message


async def test_memo_rules(wallet: Wallet) -> None:
    client = Keypair.random().public_key
    envelope = decode(await wallet.challenge("a.test", account=client, memo="123"))
    assert envelope.transaction.memo == IdMemo(123)
    # stellar-sdk drops memo 0; it is a legal ID memo and must survive.
    envelope = decode(await wallet.challenge("a.test", account=client, memo="0"))
    assert envelope.transaction.memo == IdMemo(0)
    top = str(2**64 - 1)
    assert decode(await wallet.challenge("a.test", account=client, memo=top)
                  ).transaction.memo == IdMemo(2**64 - 1)
    for memo in ("abc", str(2**64), "-1", "", " 1", "0123", "1.0", "1e3", "0x10"):
        assert "memo" in assert_auth_error(await wallet.get("a.test", account=client,
                                                            memo=memo))


async def test_muxed_account(wallet: Wallet) -> None:
    base = Keypair.random().public_key
    muxed = MuxedAccount(base, 42).account_muxed
    assert "muxed" in assert_auth_error(await wallet.get("a.test", account=muxed, memo="1"))
    envelope = decode(await wallet.challenge("a.test", account=muxed))
    assert envelope.transaction.operations[0].source.universal_account_id == muxed
    assert isinstance(envelope.transaction.memo, NoneMemo)


async def test_home_domain_must_be_the_tenants(wallet: Wallet) -> None:
    client = Keypair.random().public_key
    envelope = decode(await wallet.challenge("a.test", account=client, home_domain="a.test"))
    assert envelope.transaction.operations[0].data_name == "a.test auth"
    for domain in ("b.test", "", "a.test.evil", "x" * 300, "a.test:443", "A.TEST auth"):
        assert "home_domain" in assert_auth_error(
            await wallet.get("a.test", account=client, home_domain=domain))


async def test_repeated_parameters_are_refused(srv: RunningServer) -> None:
    one, two = Keypair.random().public_key, Keypair.random().public_key
    response = await srv.fetch("a.test", f"/auth?account={one}&account={two}")
    assert "more than once" in assert_auth_error(response)


async def test_preflight_allows_browser_wallets(srv: RunningServer) -> None:
    for method in ("GET", "POST"):
        response = await srv.fetch("a.test", "/auth", method="OPTIONS", headers={
            "Origin": "https://wallet.example", "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "Authorization, Content-Type"})
        assert 200 <= response.code < 300
        assert response.headers["Access-Control-Allow-Origin"] == "*"
        allowed = response.headers["Access-Control-Allow-Methods"]
        assert "GET" in allowed
        assert "POST" in allowed
        headers = response.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in headers
        assert "content-type" in headers


async def test_unknown_host_gets_no_challenge(srv: RunningServer, wallet: Wallet) -> None:
    response = await wallet.get("c.test", account=Keypair.random().public_key)
    assert response.code == 404
    assert "transaction" not in json_body(response)


async def test_jwks_is_public_with_cors(srv: RunningServer) -> None:
    response = await srv.fetch("a.test", "/.well-known/jwks.json")
    assert response.code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    keys = json_body(response)["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "OKP"
    assert keys[0]["alg"] == "EdDSA"
    other = json_body(await srv.fetch("b.test", "/.well-known/jwks.json"))["keys"]
    assert other[0]["kid"] != keys[0]["kid"]
    assert other[0]["x"] != keys[0]["x"]


async def test_horizon_is_not_asked_for_a_challenge(horizon: HorizonStub,
                                                    wallet: Wallet) -> None:
    await wallet.challenge("a.test", account=Keypair.random().public_key)
    assert horizon.state.requests == 0
