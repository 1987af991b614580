"""verify_token and bearer_token against tampered tokens (reliability-plan A1/A2): every
variant is refused with Unauthorized; the untouched token is accepted (so the suite can fail)."""

from __future__ import annotations

import copy
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
from kyc_host.sep.sep10_tokens import VerifiedTokens, bearer_token, verify_token
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



async def test_one_bounded_cache_of_verified_tokens_for_all_tenants(
        srv: RunningServer, wallet: Wallet) -> None:
    """A process keeps at most ``size`` verified tokens in all (least recently used out
    first); an entry serves only the tenant version it was verified for, and only until the
    token's ``exp``."""
    t1, t2 = tenant_of(srv, "t1"), tenant_of(srv, "t2")
    cache = VerifiedTokens(size=3)
    clients = [Keypair.random() for _ in range(4)]
    tokens = [await wallet.token("a.test", c, account=c.public_key) for c in clients]
    first = [cache.verify(t1, token) for token in tokens[:3]]
    assert cache.verify(t1, tokens[0]) is first[0]  # a hit, and now the most recent
    fourth = cache.verify(t1, tokens[3])  # drops tokens[1], the least recently used
    assert len(cache) == 3
    assert cache.verify(t1, tokens[3]) is fourth
    assert cache.verify(t1, tokens[0]) is first[0]
    again = cache.verify(t1, tokens[1])  # dropped: verified again, same answer
    assert again is not first[1]
    assert again == first[1]
    # Another tenant: the cached entry is never used for it, and the token fails there.
    with pytest.raises(Unauthorized):
        cache.verify(t2, tokens[3])
    # A new version of the same tenant (its record changed: rev) verifies afresh.
    changed = copy.copy(t1)
    changed.rev = "another-version"
    assert cache.verify(changed, tokens[3]) is not fourth
    # A token past its exp (still inside PyJWT's 5 s leeway) is verified every time.
    now = int(time.time())
    payload = {"iss": "https://a.test/auth", "sub": clients[0].public_key, "iat": now - 60,
               "exp": now - 2, "jti": "y", "home_domain": "a.test"}
    expired = forge(own_header(t1), payload, eddsa(t1.secrets.jwt_private_key))
    assert cache.verify(t1, expired) is not cache.verify(t1, expired)


async def test_the_server_verifies_each_token_once_per_process(
        srv: RunningServer, wallet: Wallet) -> None:
    cache = srv.services.verified_tokens
    client = Keypair.random()
    token = await wallet.token("a.test", client, account=client.public_key)
    before = len(cache)
    for _ in range(3):
        answer = await srv.fetch("a.test", "/kyc/customer",
                                 headers={"Authorization": f"Bearer {token}"})
        assert answer.code == 200, answer.body
    assert len(cache) == before + 1
    assert cache.verify(tenant_of(srv, "t1"), token).account == client.public_key


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
