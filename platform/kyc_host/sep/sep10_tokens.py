"""SEP-10 JWTs: issued per tenant, verified per tenant, turned into one typed Identity.

Tokens are signed with the tenant's own Ed25519 key (EdDSA, header ``kid``), published at
``<origin>/.well-known/jwks.json`` so the anchor's other servers can verify them without a
shared secret; a tenant may choose HS256 with its own 32-byte secret instead.

Verification pins the algorithm to the tenant's choice, requires every claim we issue, checks
``iss`` against the tenant resolved from the Host header and selects the key by ``kid`` among
the tenant's current verification keys. A token minted by tenant A therefore fails at tenant B
twice over: wrong key and wrong issuer (reliability-plan A2).
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from stellar_sdk import MuxedAccount, StrKey

from kyc_host.errors import Unauthorized
from kyc_host.tenancy.registry import Tenant

MAX_MEMO = 2**64 - 1
_REQUIRED_CLAIMS = ["iss", "sub", "iat", "exp", "jti", "home_domain"]
_CACHE_SIZE = 10_000
#: RFC 6750 §2.1 b64token: no whitespace, comma or quote can pass for part of a token.
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token speaks for, in the forms SEP-12 needs.

    ``account`` is always the base ``G...`` account; ``memo`` is the ID memo (from ``G:memo``
    or the mux id of an ``M...`` sub) as a decimal string, or None for an unshared account.
    """

    sub: str
    account: str
    memo: str | None
    muxed: str | None
    client_domain: str | None
    jti: str
    expires_at: int

    @property
    def shared(self) -> bool:
        return self.memo is not None


def parse_sub(sub: str) -> tuple[str, str | None, str | None]:
    """``G``, ``G:memo`` or ``M`` -> (base account, memo, muxed); raises ValueError."""
    if sub.startswith("M"):
        muxed = MuxedAccount.from_account(sub)
        if muxed.account_muxed_id is None:
            raise ValueError("muxed account without id")
        return muxed.account_id, str(muxed.account_muxed_id), sub
    account, sep, memo = sub.partition(":")
    if not StrKey.is_valid_ed25519_public_key(account):
        raise ValueError("sub is not a G account")
    if sep:
        if not memo.isdigit() or int(memo) > MAX_MEMO or (len(memo) > 1 and memo[0] == "0"):
            raise ValueError("sub memo is not a uint64")
        return account, memo, None
    return account, None, None


def kid_for(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def hs256_kid(generation: int) -> str:
    """The ``kid`` of an HS256 secret; generation 1 keeps the historical "hs256"."""
    return "hs256" if generation == 1 else f"hs256-{generation}"


def _verification_keys(tenant: Tenant) -> dict[str, Any]:
    """kid -> key for every key this tenant currently accepts (cached per tenant version).

    After ``kyc-host keys rotate-jwt`` the previous keys stay here (and so in jwks.json)
    until every token they signed has expired; new tokens carry the new kid.
    """
    keys: dict[str, tuple[Any, float]] | None = tenant.cache.get("jwt_verification_keys")
    if keys is None:
        secrets = tenant.secrets
        hs256 = tenant.config.sep10.jwt_algorithm == "HS256"
        keys = {}
        for seed, secret, generation, until in (
                *((p.ed25519_seed, p.hs256_secret, p.generation, p.until)
                  for p in secrets.jwt_previous),
                (secrets.jwt_ed25519_seed, secrets.jwt_hs256_secret, secrets.jwt_generation,
                 float("inf"))):
            if hs256:
                keys[hs256_kid(generation)] = (secret, until)
            else:
                public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
                keys[kid_for(public)] = (public, until)
        tenant.cache["jwt_verification_keys"] = keys
    now = time.time()
    return {kid: key for kid, (key, until) in keys.items() if until > now}


def jwks(tenant: Tenant) -> dict[str, list[dict[str, str]]]:
    """The tenant's public JWT keys as a JWK Set (empty for HS256 tenants)."""
    entries = []
    for kid, key in _verification_keys(tenant).items():
        if isinstance(key, Ed25519PublicKey):
            raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
            entries.append({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "use": "sig",
                            "kid": kid, "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()})
    return {"keys": entries}


def issue_token(
    tenant: Tenant,
    *,
    sub: str,
    jti: str,
    home_domain: str,
    client_domain: str | None = None,
    now: int | None = None,
) -> str:
    issued = int(time.time()) if now is None else now
    claims: dict[str, Any] = {
        "iss": tenant.web_auth_endpoint,
        "sub": sub,
        "iat": issued,
        "exp": issued + tenant.config.sep10.jwt_lifetime_seconds,
        "jti": jti,
        "home_domain": home_domain,
    }
    if client_domain:
        claims["client_domain"] = client_domain
    secrets = tenant.secrets
    if tenant.config.sep10.jwt_algorithm == "HS256":
        return jwt.encode(claims, secrets.jwt_hs256_secret, algorithm="HS256",
                          headers={"kid": hs256_kid(secrets.jwt_generation)})
    key = secrets.jwt_private_key
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid_for(key.public_key())})


class VerifiedTokens:
    """The tokens one process verified lately, for all its tenants: at most ``size`` in all,
    the least recently used dropped first, whatever the number of tenants. An entry is keyed
    by the tenant's version (``rev``: a changed tenant, e.g. a rotated JWT key or a re-onboarded
    id, starts afresh) and the token's SHA-256, and is used only until the token expires.

    Before, each tenant version cached 10,000 tokens keyed by the token itself (~600 bytes):
    ~900 bytes an entry, the server's RSS rising ~23 MiB an hour in the soak until every
    tenant's cache was full (9 MB a tenant, BENCHMARKS.md)."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[str, str, bytes], Identity] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, tenant: Tenant, token: str) -> Identity:
        key = (tenant.id, tenant.rev, hashlib.sha256(token.encode()).digest())
        identity = self._entries.get(key)
        if identity is not None and identity.expires_at > int(time.time()):
            self._entries.move_to_end(key)
            return identity
        identity = _verify(tenant, token)
        self._entries[key] = identity
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return identity


def verify_token(tenant: Tenant, token: str, cache: VerifiedTokens | None = None) -> Identity:
    """Verify a token for ``tenant``; raises Unauthorized with a generic reason otherwise.
    With ``cache`` (the process's :class:`VerifiedTokens`), a token verified lately for the
    same tenant version is not verified again."""
    return _verify(tenant, token) if cache is None else cache.verify(tenant, token)


def _verify(tenant: Tenant, token: str) -> Identity:
    algorithm = tenant.config.sep10.jwt_algorithm
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != algorithm or set(header) - {"alg", "typ", "kid"}:
            raise jwt.InvalidTokenError("unexpected header")
        key = _verification_keys(tenant).get(str(header.get("kid")))
        if key is None:
            raise jwt.InvalidTokenError("unknown kid")
        claims = jwt.decode(
            token, key, algorithms=[algorithm], issuer=tenant.web_auth_endpoint,
            options={"require": _REQUIRED_CLAIMS, "verify_aud": False}, leeway=5)
        if not all(_is_numeric_date(claims[name]) for name in ("iat", "exp", "nbf")
                   if name in claims):
            # RFC 7519 §2: a NumericDate is a JSON number; PyJWT also takes "1700000000".
            raise jwt.InvalidTokenError("iat/exp/nbf is not a NumericDate")
        account, memo, muxed = parse_sub(str(claims["sub"]))
        if claims["home_domain"] not in tenant.home_domains:
            raise jwt.InvalidTokenError("home_domain not served by this tenant")
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        raise Unauthorized("invalid or expired token",
                           log_detail=f"token rejected: {type(exc).__name__}: {exc}") from None
    client_domain = claims.get("client_domain")
    return Identity(
        sub=str(claims["sub"]), account=account, memo=memo, muxed=muxed,
        client_domain=client_domain if isinstance(client_domain, str) else None,
        jti=str(claims["jti"]), expires_at=int(claims["exp"]))


def _is_numeric_date(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; Unauthorized otherwise.

    RFC 7235 §2.1: the scheme is case-insensitive and one or more spaces (never a tab)
    separate it from the token, an RFC 6750 b64token: no whitespace or comma, so a second
    credential (two headers, which Tornado joins with ",") is refused, not guessed at.
    """
    if not authorization:
        raise Unauthorized("authentication required: send Authorization: Bearer <SEP-10 JWT>")
    scheme, _, token = authorization.partition(" ")
    token = token.lstrip(" ")
    if scheme.lower() != "bearer" or not _B64TOKEN.fullmatch(token):
        raise Unauthorized("malformed Authorization header: expected Bearer <SEP-10 JWT>")
    return token
