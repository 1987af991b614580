"""verify_token and bearer_token against tampered tokens (reliability-plan A1/A2): every
variant is refused with Unauthorized; the untouched token is accepted (so the suite can fail)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sep10_helpers import (  # noqa: F401
    Wallet,
    claims,
    horizon_fixture,
    srv_fixture,
    tenant_of,
    wallet_fixture,
)
from stellar_sdk import Keypair

from conftest import RunningServer
from kyc_host.errors import Unauthorized
from kyc_host.sep.sep10_tokens import bearer_token, kid_for, verify_token
from kyc_host.tenancy.registry import Tenant


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any],
          sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def eddsa(key: Ed25519PrivateKey) -> Callable[[bytes], bytes]:
    return key.sign


def hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def own_header(tenant: Tenant, **extra: Any) -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "JWT", "kid": kid_for(tenant.secrets.jwt_private_key
                                                         .public_key()), **extra}


async def test_tampered_tokens_are_refused(srv: RunningServer, wallet: Wallet) -> None:
    t1, t2 = tenant_of(srv, "t1"), tenant_of(srv, "t2")
    client = Keypair.random()
    token = await wallet.token("a.test", client, account=client.public_key)
    good = claims(token)
    assert verify_token(t1, token).account == client.public_key  # the baseline is accepted
    key = t1.secrets.jwt_private_key
    public_raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    now = int(time.time())
    head, body, sig = token.split(".")

    def variant(**changes: Any) -> dict[str, Any]:
        out = {**good, **changes}
        return {k: v for k, v in out.items() if v is not None}

    forged: dict[str, str] = {
        "alg none": forge({"alg": "none", "typ": "JWT"}, good, lambda _: b""),
        "alg none, no signature": f"{b64(json.dumps({'alg': 'none'}).encode())}.{body}.",
        "HS256 with empty key": forge({"alg": "HS256", "kid": "hs256"}, good, hs256(b"")),
        "HS256 with guessed key": forge({"alg": "HS256"}, good, hs256(b"secret")),
        "HS256 with the public key": forge({"alg": "HS256", "kid": own_header(t1)["kid"]},
                                           good, hs256(public_raw)),
        "other tenant's key": forge(own_header(t1), good, eddsa(t2.secrets.jwt_private_key)),
        "random key": forge(own_header(t1), good, eddsa(Ed25519PrivateKey.generate())),
        "unknown kid": forge(own_header(t1, kid="0000000000000000"), good, eddsa(key)),
        "no kid": forge({"alg": "EdDSA", "typ": "JWT"}, good, eddsa(key)),
        "jku header": forge(own_header(t1, jku="https://evil.test/jwks.json"), good,
                            eddsa(key)),
        "x5u header": forge(own_header(t1, x5u="https://evil.test/cert"), good, eddsa(key)),
        "jwk header": forge(own_header(t1, jwk={"kty": "OKP", "crv": "Ed25519",
                                                "x": b64(public_raw)}), good, eddsa(key)),
        "crit header": forge(own_header(t1, crit=["exp"]), good, eddsa(key)),
        "expired": forge(own_header(t1), variant(iat=now - 7200, exp=now - 3600), eddsa(key)),
        "iat in the future": forge(own_header(t1), variant(iat=now + 3600, exp=now + 7200),
                                   eddsa(key)),
        "nbf in the future": forge(own_header(t1), variant(nbf=now + 3600), eddsa(key)),
        "no exp": forge(own_header(t1), variant(exp=None), eddsa(key)),
        "no sub": forge(own_header(t1), variant(sub=None), eddsa(key)),
        "no iat": forge(own_header(t1), variant(iat=None), eddsa(key)),
        "no jti": forge(own_header(t1), variant(jti=None), eddsa(key)),
        "no iss": forge(own_header(t1), variant(iss=None), eddsa(key)),
        "no home_domain": forge(own_header(t1), variant(home_domain=None), eddsa(key)),
        "other tenant's iss": forge(own_header(t1), variant(iss="https://b.test/auth"),
                                    eddsa(key)),
        "other home_domain": forge(own_header(t1), variant(home_domain="b.test"), eddsa(key)),
        "bad checksum sub": forge(own_header(t1), variant(
            sub=client.public_key[:-1] + ("A" if client.public_key[-1] != "A" else "B")),
            eddsa(key)),
        "memo over uint64": forge(own_header(t1), variant(sub=f"{client.public_key}:{2**64}"),
                                  eddsa(key)),
        "memo with leading zero": forge(own_header(t1), variant(sub=f"{client.public_key}:01"),
                                        eddsa(key)),
        "secret seed as sub": forge(own_header(t1), variant(sub=client.secret), eddsa(key)),
        "numeric sub": forge(own_header(t1), variant(sub=123), eddsa(key)),
        "stripped signature": f"{head}.{body}.",
        "truncated signature": f"{head}.{body}.{sig[:-4]}",
        "truncated token": token[:-20],
        "payload swapped": f"{head}.{b64(json.dumps(variant(sub=Keypair.random().public_key)).encode())}.{sig}",  # noqa: E501
        "garbage": "not.a.token",
        "empty": "",
    }
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
    for header in (None, "", "Bearer", "Bearer ", "Basic abc", "Bearer a b", "Bearer\tabc",
                   "Bearer abc, Bearer def", "Token abc", "abc.def.ghi"):
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
