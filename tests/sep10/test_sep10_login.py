"""POST /auth happy paths and the tokens they yield: claims, sub formats, per-tenant keys and
jwks.json, cross-tenant refusal (sep-digest §8 items 6, 7, 12; reliability-plan A2)."""

from __future__ import annotations

import json

import jwt
import pytest
from sep10_helpers import (  # noqa: F401
    HorizonStub,
    Wallet,
    claims,
    decode,
    horizon_fixture,
    json_body,
    sign,
    srv_fixture,
    start_auth_server,
    tenant_of,
    wallet_fixture,
)
from stellar_sdk import Keypair, MuxedAccount

from conftest import MakeServer, RunningServer
from kyc_host.errors import Unauthorized
from kyc_host.sep.sep10_tokens import Identity, verify_token


def jwks_keys(jwks: dict[str, list[dict[str, str]]]) -> dict[str, object]:
    return {k["kid"]: jwt.PyJWK(k).key for k in jwks["keys"]}


async def fetch_jwks(srv: RunningServer, host: str) -> dict[str, list[dict[str, str]]]:
    response = await srv.fetch(host, "/.well-known/jwks.json")
    assert response.code == 200
    doc: dict[str, list[dict[str, str]]] = json_body(response)
    return doc


@pytest.mark.parametrize("form", [False, True], ids=["json", "form"])
async def test_login_with_master_key(wallet: Wallet, form: bool) -> None:
    client = Keypair.random()
    xdr = await wallet.challenge("a.test", account=client.public_key)
    response = await wallet.post("a.test", sign(xdr, client), form=form)
    assert response.code == 200, response.body
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Content-Type"].startswith("application/json")
    body = json_body(response)
    assert set(body) == {"token"}
    got = claims(body["token"])
    assert got["iss"] == "https://a.test/auth"
    assert got["sub"] == client.public_key
    assert isinstance(got["iat"], int)
    assert isinstance(got["exp"], int)
    assert got["exp"] - got["iat"] == 3600
    assert got["jti"] == decode(xdr).hash_hex()
    assert got["home_domain"] == "a.test"
    assert "client_domain" not in got
    header = jwt.get_unverified_header(body["token"])
    assert header["alg"] == "EdDSA"
    assert header["kid"]


async def test_sub_formats(wallet: Wallet) -> None:
    client = Keypair.random()
    assert claims(await wallet.token("a.test", client, account=client.public_key,
                                     memo="123"))["sub"] == f"{client.public_key}:123"
    assert claims(await wallet.token("a.test", client, account=client.public_key,
                                     memo="0"))["sub"] == f"{client.public_key}:0"
    muxed = MuxedAccount(client.public_key, 5).account_muxed
    assert claims(await wallet.token("a.test", client, account=muxed))["sub"] == muxed


async def test_tokens_bind_to_their_tenant(srv: RunningServer, wallet: Wallet) -> None:
    """The "done when" of issue 3: G, M and G:memo on two tenants; each token verifies at its
    own tenant (with verify_token and with PyJWT + that tenant's jwks.json) and nowhere else."""
    client = Keypair.random()
    muxed = MuxedAccount(client.public_key, 7).account_muxed
    t1, t2 = tenant_of(srv, "t1"), tenant_of(srv, "t2")
    jwks = {"a.test": jwks_keys(await fetch_jwks(srv, "a.test")),
            "b.test": jwks_keys(await fetch_jwks(srv, "b.test"))}
    for host, own, other in (("a.test", t1, t2), ("b.test", t2, t1)):
        for params, sub in (({"account": client.public_key}, client.public_key),
                            ({"account": muxed}, muxed),
                            ({"account": client.public_key, "memo": "9"},
                             f"{client.public_key}:9")):
            token = await wallet.token(host, client, **params)
            identity = verify_token(own, token)
            assert isinstance(identity, Identity)
            assert identity.sub == sub
            assert identity.account == client.public_key
            assert identity.memo == (None if sub == client.public_key else
                                     "7" if sub == muxed else "9")
            assert identity.muxed == (muxed if sub == muxed else None)
            with pytest.raises(Unauthorized):
                verify_token(other, token)
            kid = jwt.get_unverified_header(token)["kid"]
            other_host = "b.test" if host == "a.test" else "a.test"
            decoded = jwt.decode(token, jwks[host][kid], algorithms=["EdDSA"],
                                 issuer=f"https://{host}/auth")
            assert decoded["sub"] == sub
            assert kid not in jwks[other_host]
            for key in jwks[other_host].values():
                with pytest.raises(jwt.InvalidSignatureError):
                    jwt.decode(token, key, algorithms=["EdDSA"])


async def test_challenge_of_one_tenant_is_refused_by_another(wallet: Wallet) -> None:
    client = Keypair.random()
    signed = sign(await wallet.challenge("a.test", account=client.public_key), client)
    response = await wallet.post("b.test", signed)
    assert response.code == 400
    assert "token" not in json_body(response)
    # A challenge for T2's home domain cannot be had from T1 either.
    response = await wallet.get("a.test", account=client.public_key, home_domain="b.test")
    assert response.code == 400
    # The refused copy did not burn it: T1 still accepts it once.
    assert (await wallet.post("a.test", signed)).code == 200


async def test_hs256_tenant(make_server: MakeServer, horizon: HorizonStub) -> None:
    srv = await start_auth_server(make_server, horizon,
                                  sep10={"jwt_algorithm": "HS256", "jwt_lifetime_seconds": 600})
    wallet = Wallet(srv)
    client = Keypair.random()
    token = await wallet.token("a.test", client, account=client.public_key)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    got = claims(token)
    assert got["exp"] - got["iat"] == 600
    assert verify_token(tenant_of(srv, "t1"), token).account == client.public_key
    with pytest.raises(Unauthorized):
        verify_token(tenant_of(srv, "t2"), token)
    # HS256 keys are secret: nothing is published.
    assert (await fetch_jwks(srv, "a.test"))["keys"] == []
    secret = tenant_of(srv, "t1").secrets.jwt_hs256_secret
    assert len(secret) >= 32
    assert secret != tenant_of(srv, "t2").secrets.jwt_hs256_secret
    assert jwt.decode(token, secret, algorithms=["HS256"])["sub"] == client.public_key


async def test_post_error_responses_carry_cors(wallet: Wallet) -> None:
    response = await wallet.post("a.test", "not a transaction")
    assert response.code == 400
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert set(json.loads(response.body)) == {"error"}


async def test_oversized_bodies_are_refused(srv: RunningServer, wallet: Wallet) -> None:
    response = await srv.fetch("a.test", "/auth", method="POST", body=b"x" * (1024 * 1024),
                               headers={"Content-Type": "application/json"})
    assert response.code == 413
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert set(json.loads(response.body)) == {"error"}
    long = json.dumps({"transaction": "A" * 50_001})
    response = await srv.fetch("a.test", "/auth", method="POST", body=long,
                               headers={"Content-Type": "application/json"})
    assert response.code == 400
    assert "50000" in json.loads(response.body)["error"]
