"""Management tokens: lifecycle, storage, expiry, revocation, and the 401/403/404 rules."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from mgmt_helpers import (  # noqa: F401 - fixtures
    Mgmt,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)

from conftest import MakeServer
from kyc_host.management.auth import TOKEN_RE
from kyc_host.sep.sep10_tokens import issue_token
from kyc_host.settings import PlatformSettings


async def _raw_store_text(m: Mgmt, settings: PlatformSettings) -> str:
    """Everything the store holds about tokens, plus (SQLite) the raw database files."""
    store = m.srv.services.store
    docs = [*await store.platform("operator_tokens").find({}),
            *await store.platform("token_index").find({})]
    for tenant in ("t1", "t2"):
        docs += await store.tenant(tenant, "admin_tokens").find({})
    text = json.dumps(docs, default=str)
    if settings.storage_url.startswith("sqlite:///"):
        base = Path(settings.storage_url.removeprefix("sqlite:///"))
        for path in (base, base.with_name(base.name + "-wal")):
            if path.exists():
                text += path.read_bytes().decode("latin-1")
    return text


async def test_token_shown_once_and_only_its_hash_is_stored(
        mgmt: Mgmt, settings: PlatformSettings) -> None:
    created = await mgmt.api.call("POST", "/api/v1/tenants/t1/tokens", token=mgmt.t1,
                                  body={"scopes": ["audit:read"], "note": "auditor"})
    assert created.status == 201
    token = created.body["token"]
    match = TOKEN_RE.fullmatch(token)
    assert match is not None
    assert match.group(1) == created.body["prefix"]
    secret = match.group(2)

    listed = await mgmt.api.call("GET", "/api/v1/tenants/t1/tokens", token=mgmt.t1)
    mine = [t for t in listed.body["tokens"] if t["prefix"] == created.body["prefix"]]
    assert mine
    assert "token" not in mine[0]
    assert mine[0]["note"] == "auditor"
    assert token not in json.dumps(listed.body)

    raw = await _raw_store_text(mgmt, settings)
    assert created.body["prefix"] in raw  # the lookup key is stored ...
    for value in (token, secret, mgmt.t1, mgmt.operator):
        assert value not in raw  # ... the token and its secret never are
    stored = await mgmt.srv.services.store.tenant("t1", "admin_tokens").find_one(
        {"prefix": created.body["prefix"]})
    assert stored is not None
    assert len(stored["hash"]) == 64
    assert len(stored["salt"]) == 32

    who = await mgmt.api.call("GET", "/api/v1/whoami", token=token)
    assert who.body == {"prefix": created.body["prefix"], "kind": "tenant", "tenant": "t1",
                        "scopes": ["audit:read"], "expires_at": None}


async def test_expired_token_is_refused_even_when_cached(mgmt: Mgmt) -> None:
    token = await mgmt.make_token("t1", ["audit:read"], expires_at=time.time() + 1.5)
    assert (await mgmt.api.call("GET", "/api/v1/tenants/t1/audit", token=token)).status == 200
    await asyncio.sleep(1.6)
    reply = await mgmt.api.call("GET", "/api/v1/tenants/t1/audit", token=token)
    assert reply.status == 401
    assert "expired" in reply.error
    past = await mgmt.make_token("t1", ["audit:read"], expires_at=time.time() - 1)
    assert (await mgmt.api.call("GET", "/api/v1/whoami", token=past)).status == 401


async def test_revoked_token_is_refused_at_once_here_and_soon_elsewhere(
        mgmt: Mgmt, make_server: MakeServer) -> None:
    other = await make_server()  # a second process on the same store
    other.services.token_cache.ttl = 1.0  # the mechanism, without waiting CACHE_SECONDS
    victim = (await mgmt.api.call("POST", "/api/v1/tenants/t1/tokens", token=mgmt.t1,
                                  body={"scopes": ["audit:read"]})).body
    path = "/api/v1/tenants/t1/audit"
    auth = {"Authorization": f"Bearer {victim['token']}"}
    assert (await other.fetch("x", path, headers=auth, admin=True)).code == 200  # now cached
    assert (await mgmt.api.call("GET", path, token=victim["token"])).status == 200

    revoked = await mgmt.api.call("DELETE", f"/api/v1/tenants/t1/tokens/{victim['prefix']}",
                                  token=mgmt.t1)
    assert revoked.status == 200
    assert revoked.body["revoked_at"] is not None
    assert (await mgmt.api.call("GET", path, token=victim["token"])).status == 401

    deadline = time.monotonic() + 1.0 + 5
    while (await other.fetch("x", path, headers=auth, admin=True)).code != 401:
        assert time.monotonic() < deadline, "revoked token still accepted by another process"
        await asyncio.sleep(0.5)
    again = await mgmt.api.call("DELETE", f"/api/v1/tenants/t1/tokens/{victim['prefix']}",
                                token=mgmt.t1)
    assert again.status == 200  # idempotent
    entries = (await mgmt.api.call("GET", "/api/v1/tenants/t1/audit?action=token.revoke",
                                   token=mgmt.t1)).body["entries"]
    assert [e["details"]["token"] for e in entries] == [victim["prefix"]] * 2


@pytest.mark.parametrize("header", [
    None, "Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "bearer\tkyc_0123456789_x",
    "Bearer kyc_0123456789_" + "A" * 43, "Bearer kyc_short_secret", "Bearer not-a-token",
])
async def test_missing_or_malformed_tokens_get_401(mgmt: Mgmt, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    for method, path in (("GET", "/api/v1/tenants"), ("GET", "/api/v1/tenants/t1/audit"),
                         ("DELETE", "/api/v1/tenants/t2"), ("GET", "/api/v1/whoami")):
        reply = await mgmt.api.call(method, path, headers=headers)
        assert reply.status == 401, (header, path)
        assert reply.error


async def test_wrong_secret_and_duplicate_headers_get_401(mgmt: Mgmt) -> None:
    prefix = TOKEN_RE.fullmatch(mgmt.operator).group(1)  # type: ignore[union-attr]
    forged = f"kyc_{prefix}_" + "B" * 43
    assert (await mgmt.api.call("GET", "/api/v1/tenants", token=forged)).status == 401
    # Tornado joins repeated headers; two Authorization headers must not pick one silently.
    reply = await mgmt.srv.fetch(
        "x", "/api/v1/tenants", admin=True,
        headers={"Authorization": f"Bearer {mgmt.operator}, Bearer {mgmt.t1}"})
    assert reply.code == 401


async def test_sep10_jwt_is_not_an_admin_token(mgmt: Mgmt) -> None:
    """Reliability-plan A3: a wallet's SEP-10 JWT of the same platform never opens the admin
    API (and the admin API never answers with anything but 401 to it)."""
    tenant = mgmt.srv.services.registry.get("t1")
    assert tenant is not None
    jwt = issue_token(tenant, sub="GBZ3VAAP2T2WMKF6226FLC6OCA3X6Q5BGXAO4NWEHXBRKVP7Q7ZXJMNJ",
                      jti="x" * 32, home_domain="a.test")
    for path in ("/api/v1/tenants", "/api/v1/tenants/t1/audit", "/api/v1/whoami"):
        reply = await mgmt.api.call("GET", path, token=jwt)
        assert reply.status == 401


async def test_missing_scope_is_403_and_other_tenant_is_404(mgmt: Mgmt) -> None:
    reader = await mgmt.make_token("t1", ["audit:read"])
    assert (await mgmt.api.call("GET", "/api/v1/tenants/t1/tokens", token=reader)).status == 403
    assert (await mgmt.api.call("GET", "/api/v1/tenants/t1/audit", token=reader)).status == 200
    # Another tenant, an unknown tenant and an impossible id answer exactly alike.
    bodies = set()
    for tenant in ("t2", "nope", "NOT_AN_ID"):
        reply = await mgmt.api.call("GET", f"/api/v1/tenants/{tenant}/audit", token=reader)
        assert reply.status == 404
        bodies.add(reply.error)
    assert len(bodies) == 1
    # A missing scope on another tenant's route is still 404: the tenant is checked first.
    reply = await mgmt.api.call("GET", "/api/v1/tenants/t2/tokens", token=reader)
    assert reply.status == 404
    # Operator routes: a tenant token lacks the scope (403), even holding every tenant scope.
    assert (await mgmt.api.call("GET", "/api/v1/tenants", token=mgmt.t1)).status == 403
    assert (await mgmt.api.call("GET", "/api/v1/audit", token=mgmt.t1)).status == 403
    viewer = await mgmt.make_token(None, ["tenants:read"])
    assert (await mgmt.api.call("GET", "/api/v1/tenants", token=viewer)).status == 200
    assert (await mgmt.api.call("DELETE", "/api/v1/tenants/t2", token=viewer)).status == 403
    assert (await mgmt.api.call("GET", "/api/v1/tenants/t1/audit", token=viewer)).status == 403


async def test_operator_per_tenant_scopes_reach_every_tenant(mgmt: Mgmt) -> None:
    auditor = await mgmt.make_token(None, ["audit:read"])
    for tenant in ("t1", "t2"):
        reply = await mgmt.api.call("GET", f"/api/v1/tenants/{tenant}/audit", token=auditor)
        assert reply.status == 200
    reply = await mgmt.api.call("GET", "/api/v1/tenants/zz/audit", token=auditor)
    assert reply.status == 404
    assert (await mgmt.api.call("GET", "/api/v1/audit", token=auditor)).status == 200
    assert (await mgmt.api.call("GET", "/api/v1/tenants", token=auditor)).status == 403


async def test_tenant_admin_grants_only_its_own_scopes(mgmt: Mgmt) -> None:
    limited = await mgmt.make_token("t1", ["tokens:write", "audit:read"])
    path = "/api/v1/tenants/t1/tokens"
    denied = await mgmt.api.call("POST", path, token=limited,
                                 body={"scopes": ["audit:read", "customers:read"]})
    assert denied.status == 403
    assert "customers:read" in denied.error
    ok = await mgmt.api.call("POST", path, token=limited, body={"scopes": ["audit:read"]})
    assert ok.status == 201
    operator_scope = await mgmt.api.call("POST", path, token=mgmt.operator,
                                         body={"scopes": ["operator"]})
    assert operator_scope.status == 400
    assert "operator" in operator_scope.error
    # The operator may grant any tenant scope.
    full = await mgmt.api.call("POST", path, token=mgmt.operator,
                               body={"scopes": ["customers:read"], "expires_in_days": 2})
    assert full.status == 201
    assert full.body["expires_at"] is not None


@pytest.mark.parametrize(("body", "named"), [
    ({"scopes": ["nope:read"]}, "nope:read"),
    ({"scopes": []}, "scope"),
    ({"scopes": "audit:read"}, "scopes"),
    ({"scope": ["audit:read"]}, "scope"),
    ({"scopes": ["audit:read"], "expires_in_days": 0}, "expires_in_days"),
    ({"scopes": ["audit:read"], "expires_in_days": "7"}, "expires_in_days"),
    ({"scopes": ["audit:read"], "note": 5}, "note"),
    ({"scopes": ["audit:read"], "extra": 1}, "extra"),
])
async def test_bad_token_requests_name_the_key(mgmt: Mgmt, body: object, named: str) -> None:
    reply = await mgmt.api.call("POST", "/api/v1/tenants/t1/tokens", token=mgmt.t1, body=body)
    assert reply.status == 400
    assert named in reply.error


async def test_new_token_never_outlives_its_creator(mgmt: Mgmt) -> None:
    short = await mgmt.make_token("t1", ["tokens:write", "audit:read"],
                                  expires_at=time.time() + 3600)
    reply = await mgmt.api.call("POST", "/api/v1/tenants/t1/tokens", token=short,
                                body={"scopes": ["audit:read"]})
    assert reply.status == 201
    assert reply.body["expires_at"] is not None


async def test_revoking_another_tenants_token_is_404(mgmt: Mgmt) -> None:
    t2_tokens = (await mgmt.api.call("GET", "/api/v1/tenants/t2/tokens",
                                     token=mgmt.t2)).body["tokens"]
    prefix = t2_tokens[0]["prefix"]
    for path in (f"/api/v1/tenants/t1/tokens/{prefix}", f"/api/v1/tenants/t2/tokens/{prefix}"):
        reply = await mgmt.api.call("DELETE", path, token=mgmt.t1)
        assert reply.status == 404
    assert (await mgmt.api.call("GET", "/api/v1/whoami", token=mgmt.t2)).status == 200


async def test_admin_tokens_are_not_sep10_tokens(mgmt: Mgmt) -> None:
    """Reliability-plan A3, the other direction: no management token opens a SEP-12 route."""
    account = "GBZ3VAAP2T2WMKF6226FLC6OCA3X6Q5BGXAO4NWEHXBRKVP7Q7ZXJMNJ"
    routes = (("GET", "/kyc/customer"), ("PUT", "/kyc/customer"),
              ("PUT", "/kyc/customer/verification"), ("PUT", "/kyc/customer/callback"),
              ("GET", "/kyc/customer/files"), ("POST", "/kyc/customer/files"),
              ("DELETE", f"/kyc/customer/{account}"))
    for token in (mgmt.t1, mgmt.operator):
        for method, path in routes:
            reply = await mgmt.srv.fetch("a.test", path, method=method,
                                         headers={"Authorization": f"Bearer {token}"},
                                         body=b"{}" if method in ("PUT", "POST") else None)
            assert reply.code == 401, (method, path, reply.code)
            assert json.loads(reply.body)["error"]
