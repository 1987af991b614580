"""Management-API bearer tokens ``kyc_<prefix>_<secret>`` and their scopes.

Storage. ``prefix`` (10 lower-case hex characters) is unique across the platform: creating a
token first inserts ``token_index[_id=prefix] = {kind, tenant}``, which is also how a presented
token is located without scanning tenants. Operator tokens live in the platform collection
``operator_tokens``, tenant-admin tokens in the tenant's ``admin_tokens`` (dropped with the
tenant). ``secret`` is 32 random bytes (URL-safe base64, 256 bits). The token is returned once,
at creation; the store keeps the prefix, a per-token 16-byte salt and
PBKDF2-HMAC-SHA256(secret, salt, 1000 iterations), compared with ``hmac.compare_digest``.

Why PBKDF2 with a small work factor (JupyterHub does the same for generated tokens): the secret
is 256 random bits, so no stretching is needed against guessing -- nobody enumerates 2^256
values; the salted one-way hash makes a copy of the store useless for logging in. Password-grade
costs (scrypt: ~50 ms here) would only let a flood of wrong secrets for a known prefix stall the
event loop; 1000 rounds cost ~0.3 ms. Each record names its kdf and iteration count, so the cost
can be raised later without invalidating existing tokens.

Cache. A successful verification is kept in-process for :data:`CACHE_SECONDS`, keyed by the
SHA-256 of the whole token (the token itself is never kept); expiry is checked on every hit.
Revoking through this process drops the entry at once; other processes stop accepting the token
within ``CACHE_SECONDS`` (reliability-plan A12 asks for at most 60 s).

Token-type confusion (reliability-plan A3): only strings of exactly this shape are looked up,
so a SEP-10 JWT is a 401 here, and an admin token is not a JWT and fails on ``/kyc``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from kyc_host.audit import iso
from kyc_host.errors import Unauthorized
from kyc_host.store.base import Collection, Doc, DuplicateKeyError, Store, StoreUnavailable, in_

#: Scopes only an operator token may hold. ``operator`` implies every scope on every tenant.
OPERATOR_SCOPES = ("operator", "tenants:read", "tenants:write", "keys:write")
#: Per-tenant scopes. On an operator token they apply to every tenant.
TENANT_SCOPES = ("customers:read", "customers:review", "customers:delete", "audit:read",
                 "tokens:write", "callbacks:read", "callbacks:replay")
ALL_SCOPES = OPERATOR_SCOPES + TENANT_SCOPES
_IMPLIES = {"tenants:write": ("tenants:read",)}

TOKEN_RE = re.compile(r"kyc_([0-9a-f]{10})_([A-Za-z0-9_-]{43})")
KDF = "pbkdf2-sha256"
ITERATIONS = 1000
CACHE_SECONDS = 10.0
CACHE_SIZE = 10_000
_REJECTED = "invalid, expired or revoked token"

Kind = Literal["operator", "tenant"]


class ScopeError(ValueError):
    """A requested scope is unknown or not allowed on this kind of token."""

    def __init__(self, scope: str, problem: str) -> None:
        super().__init__(f"scope {scope!r} {problem}" if scope else problem)
        self.scope = scope


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    prefix: str
    kind: Kind
    tenant: str | None  # None for operator tokens
    scopes: frozenset[str]
    expires_at: float | None

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        return f"token:{self.prefix}"

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"

    def has(self, scope: str) -> bool:
        if self.is_operator and "operator" in self.scopes:
            return True
        return scope in self.scopes or any(scope in _IMPLIES.get(s, ()) for s in self.scopes)

    def can_reach(self, tenant_id: str) -> bool:
        """Operator tokens reach every tenant; a tenant token only its own."""
        return self.is_operator or self.tenant == tenant_id

    def ungrantable(self, scopes: Iterable[str]) -> str | None:
        """The first scope this caller may not put on a new token (None: all grantable).

        Only ``operator`` may grant what it does not hold itself, so a token can never mint a
        more powerful one."""
        if self.is_operator and "operator" in self.scopes:
            return None
        return next((s for s in scopes if not self.has(s)), None)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str  # shown once; never stored
    info: dict[str, Any]


class TokenCache:
    """Recent successful verifications: SHA-256(token) -> Principal, for ``ttl`` seconds."""

    def __init__(self, ttl: float = CACHE_SECONDS, size: int = CACHE_SIZE) -> None:
        self.ttl = ttl
        self.size = size
        self._entries: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    def get(self, key: str) -> Principal | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if time.monotonic() >= entry[1]:
            del self._entries[key]
            return None
        return entry[0]

    def put(self, key: str, principal: Principal) -> None:
        self._entries[key] = (principal, time.monotonic() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def forget(self, *, prefix: str | None = None, tenant: str | None = None) -> None:
        """Drop entries of one token or of every token of one tenant (revocation, offboard)."""
        for key, (principal, _) in list(self._entries.items()):
            if principal.prefix == prefix or (tenant is not None and principal.tenant == tenant):
                del self._entries[key]


# --- scopes --------------------------------------------------------------------------------


def check_scopes(scopes: Sequence[str], *, operator: bool) -> list[str]:
    """Validate and de-duplicate requested scopes (sorted); raises ScopeError."""
    if not scopes:
        raise ScopeError("", "a token needs at least one scope")
    allowed = ALL_SCOPES if operator else TENANT_SCOPES
    for scope in scopes:
        if scope not in ALL_SCOPES:
            raise ScopeError(scope, f"is unknown; known scopes: {', '.join(ALL_SCOPES)}")
        if scope not in allowed:
            raise ScopeError(scope, "is for operator tokens only")
    return sorted(set(scopes))


# --- storage -------------------------------------------------------------------------------


def _tokens(store: Store, tenant_id: str | None) -> Collection:
    if tenant_id is None:
        return store.platform("operator_tokens")
    return store.tenant(tenant_id, "admin_tokens")


def _digest(secret: str, salt: bytes, iterations: int) -> str:
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), salt, iterations).hex()


def token_info(doc: Doc, tenant_id: str | None) -> dict[str, Any]:
    """The public description of a stored token (never the hash or salt)."""
    expires, revoked = doc.get("expires_at"), doc.get("revoked_at")
    return {
        "prefix": doc["prefix"],
        "kind": "operator" if tenant_id is None else "tenant",
        "tenant": tenant_id,
        "scopes": list(doc["scopes"]),
        "note": doc.get("note", ""),
        "created_at": iso(doc["created_at"]),
        "created_by": doc.get("created_by", ""),
        "expires_at": iso(expires) if expires is not None else None,
        "revoked_at": iso(revoked) if revoked is not None else None,
    }


async def _claim_prefix(store: Store, tenant_id: str | None) -> str:
    index = store.platform("token_index")
    for _ in range(8):
        prefix = secrets.token_hex(5)
        try:
            await index.insert_one({"_id": prefix,
                                    "kind": "operator" if tenant_id is None else "tenant",
                                    "tenant": tenant_id or ""})
        except DuplicateKeyError:
            continue  # 40-bit prefixes collide rarely; the unique _id makes the retry safe
        return prefix
    raise StoreUnavailable("could not allocate a token prefix")


async def create_token(
    store: Store,
    *,
    tenant_id: str | None,
    scopes: Sequence[str],
    created_by: str,
    expires_at: float | None = None,
    note: str = "",
) -> IssuedToken:
    """Create an operator token (``tenant_id`` None) or a token of one tenant.

    The caller checks that the tenant exists and that the creator may grant ``scopes``.
    Raises ScopeError for unknown or misplaced scopes."""
    clean = check_scopes(scopes, operator=tenant_id is None)
    secret = secrets.token_urlsafe(32)
    salt = os.urandom(16)
    prefix = await _claim_prefix(store, tenant_id)
    doc: Doc = {
        "_id": prefix,
        "prefix": prefix,
        "kdf": KDF,
        "iterations": ITERATIONS,
        "salt": salt.hex(),
        "hash": _digest(secret, salt, ITERATIONS),
        "scopes": clean,
        "note": note,
        "created_at": time.time(),
        "created_by": created_by,
        "expires_at": expires_at,
        "revoked_at": None,
    }
    await _tokens(store, tenant_id).insert_one(doc)
    return IssuedToken(f"kyc_{prefix}_{secret}", token_info(doc, tenant_id))


async def list_tokens(store: Store, tenant_id: str | None) -> list[dict[str, Any]]:
    docs = await _tokens(store, tenant_id).find({}, sort=[("created_at", 1)])
    return [token_info(doc, tenant_id) for doc in docs]


async def revoke_token(store: Store, tenant_id: str | None,
                       prefix: str) -> dict[str, Any] | None:
    """Mark a token revoked (idempotent); None if ``tenant_id`` has no such token."""
    coll = _tokens(store, tenant_id)
    doc = await coll.find_one({"prefix": prefix})
    if doc is None:
        return None
    if doc.get("revoked_at") is None:
        doc["revoked_at"] = time.time()
        await coll.update_one({"prefix": prefix}, set={"revoked_at": doc["revoked_at"]})
    return token_info(doc, tenant_id)


async def locate(store: Store, prefix: str) -> tuple[Kind, str | None] | None:
    """Where the token with ``prefix`` lives: ("operator", None) or ("tenant", id)."""
    where = await store.platform("token_index").find_one({"_id": prefix})
    if where is None:
        return None
    if where.get("kind") == "operator":
        return "operator", None
    return "tenant", str(where["tenant"])


async def forget_tenant(store: Store, tenant_id: str) -> None:
    """Remove the index entries of an offboarded tenant (its tokens went with its data)."""
    await store.platform("token_index").delete_many({"tenant": tenant_id})


# --- verification --------------------------------------------------------------------------


def cache_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def authenticate(store: Store, token: str, cache: TokenCache) -> Principal:
    """The principal of a presented token; raises Unauthorized (generic message) otherwise."""
    match = TOKEN_RE.fullmatch(token)
    if match is None:
        raise Unauthorized(_REJECTED, log_detail="not a management token")
    key = cache_key(token)
    principal = cache.get(key)
    if principal is None:
        principal = await _verify(store, match.group(1), match.group(2))
        cache.put(key, principal)
    if principal.expired(time.time()):
        raise Unauthorized(_REJECTED, log_detail=f"token {principal.prefix} expired")
    return principal


async def _verify(store: Store, prefix: str, secret: str) -> Principal:
    where = await locate(store, prefix)
    if where is None:
        raise Unauthorized(_REJECTED, log_detail=f"unknown token prefix {prefix}")
    kind, tenant_id = where
    if tenant_id is not None and not await _tenant_alive(store, tenant_id):
        raise Unauthorized(_REJECTED, log_detail=f"token {prefix}: tenant gone")
    doc = await _tokens(store, tenant_id).find_one({"prefix": prefix})
    if doc is None or doc.get("kdf") != KDF:
        raise Unauthorized(_REJECTED, log_detail=f"token {prefix} not found")
    digest = _digest(secret, bytes.fromhex(doc["salt"]), int(doc["iterations"]))
    if not hmac.compare_digest(digest, str(doc["hash"])):
        raise Unauthorized(_REJECTED, log_detail=f"token {prefix}: wrong secret")
    if doc.get("revoked_at") is not None:
        raise Unauthorized(_REJECTED, log_detail=f"token {prefix} revoked")
    expires = doc.get("expires_at")
    return Principal(prefix, kind, tenant_id, frozenset(doc["scopes"]),
                     float(expires) if expires is not None else None)


async def _tenant_alive(store: Store, tenant_id: str) -> bool:
    record = await store.platform("tenants").find_one(
        {"_id": tenant_id, "status": in_(["active", "suspended"])})
    return record is not None
