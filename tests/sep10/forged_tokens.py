"""Forged SEP-10 tokens (reliability-plan A1), shared by the unit suite
(sep10/test_sep10_tokens.py, through ``verify_token``) and the HTTP suite
(sep12/test_sep12_forged_tokens_http.py, against every SEP-12 route).

- :func:`forge`: a compact JWS from any header, payload and signing function (no checks, so
  it can build what PyJWT refuses to: ``alg: none``, a public key as an HMAC secret, ...).
- :func:`eddsa`, :func:`hs256`: signing functions; :func:`own_header`: the header the
  tenant's own tokens carry (its ``kid``), to which a variant adds or changes entries.
- :func:`forged_variants`: name -> forged token, each derived from one valid ``token`` of
  ``tenant`` for ``keypair``'s account; every one must be refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from stellar_sdk import Keypair

from kyc_host.sep.sep10_tokens import kid_for
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


def forged_variants(tenant: Tenant, other: Tenant, token: str,
                    keypair: Keypair) -> dict[str, str]:
    """Forgeries of ``token`` (a valid EdDSA token of ``tenant`` whose sub is ``keypair``'s
    account, possibly with a memo); ``other`` is another tenant, whose key must not count.

    Covers the plan's A1 list: alg none, HS256 with an empty/guessed key, alg confusion
    (HS256 and RS256/ES256/EdDSA headers over an HMAC keyed with the tenant's public key),
    kid/jku/x5u/jwk/crit headers, exp past, iat/nbf future, missing claims, bad-checksum and
    non-account subs, memo >= 2^64, stripped/truncated signatures, and more.
    """
    good: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    key = tenant.secrets.jwt_private_key
    public_raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    public_jwk = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": b64(public_raw)})
    kid = own_header(tenant)["kid"]
    account = keypair.public_key
    now = int(time.time())
    head, body, sig = token.split(".")

    def variant(**changes: Any) -> dict[str, Any]:
        out = {**good, **changes}
        return {k: v for k, v in out.items() if v is not None}

    def own(payload: dict[str, Any], **extra: Any) -> str:
        return forge(own_header(tenant, **extra), payload, eddsa(key))

    return {
        "alg none": forge({"alg": "none", "typ": "JWT"}, good, lambda _: b""),
        "alg None": forge({"alg": "None", "typ": "JWT", "kid": kid}, good, lambda _: b""),
        "alg none, no signature": f"{b64(json.dumps({'alg': 'none'}).encode())}.{body}.",
        "alg eddsa (lower case)": forge({"alg": "eddsa", "kid": kid}, good, eddsa(key)),
        "HS256 with empty key": forge({"alg": "HS256", "kid": "hs256"}, good, hs256(b"")),
        "HS256 with guessed key": forge({"alg": "HS256"}, good, hs256(b"secret")),
        "HS256 with the public key": forge({"alg": "HS256", "kid": kid}, good,
                                           hs256(public_raw)),
        "HS256 with the public JWK": forge({"alg": "HS256", "kid": kid}, good,
                                           hs256(public_jwk.encode())),
        "RS256 header, HMAC with the public key": forge({"alg": "RS256", "kid": kid}, good,
                                                        hs256(public_raw)),
        "ES256 header, HMAC with the public key": forge({"alg": "ES256", "kid": kid}, good,
                                                        hs256(public_raw)),
        "EdDSA header, HMAC with the public key": forge(own_header(tenant), good,
                                                        hs256(public_raw)),
        "other tenant's key": forge(own_header(tenant), good, eddsa(other.secrets
                                                                    .jwt_private_key)),
        "random key": forge(own_header(tenant), good, eddsa(Ed25519PrivateKey.generate())),
        "unknown kid": forge(own_header(tenant, kid="0000000000000000"), good, eddsa(key)),
        "no kid": forge({"alg": "EdDSA", "typ": "JWT"}, good, eddsa(key)),
        "jku header": own(good, jku="https://evil.test/jwks.json"),
        "x5u header": own(good, x5u="https://evil.test/cert"),
        "jwk header": own(good, jwk={"kty": "OKP", "crv": "Ed25519", "x": b64(public_raw)}),
        "crit header": own(good, crit=["exp"]),
        "expired": own(variant(iat=now - 7200, exp=now - 3600)),
        "iat in the future": own(variant(iat=now + 3600, exp=now + 7200)),
        "nbf in the future": own(variant(nbf=now + 3600)),
        "exp as a string": own(variant(exp=str(now + 3600))),
        "iat as a string": own(variant(iat=str(now))),
        "no exp": own(variant(exp=None)),
        "no sub": own(variant(sub=None)),
        "no iat": own(variant(iat=None)),
        "no jti": own(variant(jti=None)),
        "no iss": own(variant(iss=None)),
        "no home_domain": own(variant(home_domain=None)),
        "other tenant's iss": own(variant(iss=other.web_auth_endpoint)),
        "iss with a trailing slash": own(variant(iss=tenant.web_auth_endpoint + "/")),
        "other home_domain": own(variant(home_domain=other.home_domains[0])),
        "bad checksum sub": own(variant(
            sub=account[:-1] + ("A" if account[-1] != "A" else "B"))),
        "memo over uint64": own(variant(sub=f"{account}:{2**64}")),
        "memo with leading zero": own(variant(sub=f"{account}:01")),
        "secret seed as sub": own(variant(sub=keypair.secret)),
        "numeric sub": own(variant(sub=123)),
        "stripped signature": f"{head}.{body}.",
        "truncated signature": f"{head}.{body}.{sig[:-4]}",
        "truncated token": token[:-20],
        "extra segment": f"{token}.{sig}",
        "payload swapped": f"{head}.{b64(json.dumps(variant(sub=Keypair.random().public_key)).encode())}.{sig}",  # noqa: E501
        "garbage": "not.a.token",
        "empty": "",
    }
