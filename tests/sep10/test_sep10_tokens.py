"""verify_token and bearer_token against tampered tokens (reliability-plan A1/A2): every
variant is refused with Unauthorized; the untouched token is accepted (so the suite can fail)."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sep10_helpers import (  # noqa: F401
    Wallet,
    horizon_fixture,
    srv_fixture,
    tenant_of,
    wallet_fixture,
)
from stellar_sdk import Keypair

from conftest import RunningServer
from kyc_host.errors import Unauthorized
from kyc_host.sep.sep10_tokens import bearer_token, verify_token
from sep10.forged_tokens import eddsa, forge, forged_variants, own_header


async def test_tampered_tokens_are_refused(srv: RunningServer, wallet: Wallet) -> None:
    t1, t2 = tenant_of(srv, "t1"), tenant_of(srv, "t2")
    client = Keypair.random()
    token = await wallet.token("a.test", client, account=client.public_key)
    assert verify_token(t1, token).account == client.public_key  # the baseline is accepted
    forged = forged_variants(t1, t2, token, client)
    assert len(forged) >= 35
    accepted = []
    for name, bad in forged.items():
        try:
            verify_token(t1, bad)
        except Unauthorized:
            continue
        accepted.append(name)
    assert accepted == []
    with pytest.raises(Unauthorized):
        verify_token(t2, token)


async def test_a_correctly_forged_token_is_accepted(srv: RunningServer) -> None:
    """Guards the test above: a token built the same way with the right key passes."""
    t1 = tenant_of(srv, "t1")
    now = int(time.time())
    payload = {"iss": "https://a.test/auth", "sub": Keypair.random().public_key, "iat": now,
               "exp": now + 60, "jti": "x", "home_domain": "a.test"}
    assert verify_token(t1, forge(own_header(t1), payload, eddsa(t1.secrets.jwt_private_key)))
    with pytest.raises(Unauthorized):
        verify_token(t1, forge(own_header(t1), payload, eddsa(Ed25519PrivateKey.generate())))


def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("bearer abc.def.ghi") == "abc.def.ghi"
    assert bearer_token("BEARER  abc.def.ghi") == "abc.def.ghi"  # RFC 7235: 1*SP
    for header in (None, "", "Bearer", "Bearer ", "Basic abc", "Bearer a b", "Bearer\tabc",
                   "Bearer \tabc", "Bearer abc, Bearer def", "Bearer abc,", "Token abc",
                   "abc.def.ghi"):
        with pytest.raises(Unauthorized):
            bearer_token(header)


async def test_jwks_keys_verify_only_own_tokens(srv: RunningServer, wallet: Wallet) -> None:
    client = Keypair.random()
    token = await wallet.token("a.test", client, account=client.public_key)
    for host, ok in (("a.test", True), ("b.test", False)):
        response = await srv.fetch(host, "/.well-known/jwks.json")
        keys = jwt.PyJWKSet.from_dict(json.loads(response.body))
        for jwk in keys.keys:
            if ok:
                assert jwt.decode(token, jwk.key, algorithms=["EdDSA"])["sub"] == client.public_key
            else:
                with pytest.raises(jwt.InvalidSignatureError):
                    jwt.decode(token, jwk.key, algorithms=["EdDSA"])
