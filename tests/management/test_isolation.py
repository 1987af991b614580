"""Every management route, enumerated from the OpenAPI document: tenant isolation (A12),
scope checks on 100% of routes, no route on the public listener, and no 5xx on junk input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from mgmt_helpers import (  # noqa: F401 - fixtures
    Mgmt,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)
from review_helpers import ALICE, KycWallet, png
from schema_fuzz import Fuzzer

from conftest import make_tenant_doc
from kyc_host.management.auth import ALL_SCOPES, TENANT_SCOPES, Principal
from kyc_host.management.openapi import management_document

METHODS = ("get", "post", "put", "delete")


def operations(*, public: bool = False) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for template, item in management_document()["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is not None and (op["security"] == []) == public:
                yield template, method.upper(), op


PLACEHOLDER_ID = "00000000-0000-4000-8000-000000000000"
SOME_ACCOUNT = "GAAZI4TCR3TY5OJHCTJC2A4QSY6CJWJH5IAJTGKIN2ER7LBNVKOCCWN7"


def fill(template: str, tenant: str, prefix: str = "0123456789",
         customer_id: str = PLACEHOLDER_ID, file_id: str = PLACEHOLDER_ID,
         operation: str = "rotate-jwt") -> str:
    return (template.replace("{tenant_id}", tenant).replace("{prefix}", prefix)
            .replace("{customer_id}", customer_id).replace("{file_id}", file_id)
            .replace("{operation}", operation))


def sample_body(op: dict[str, Any], tenant: str) -> Any:
    ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get(
        "schema", {}).get("$ref", "")
    if ref.endswith("/TenantDocument"):
        return make_tenant_doc(tenant, ["evil.test"])
    if ref.endswith("/TokenCreate"):
        return {"scopes": ["audit:read"]}
    if ref.endswith("/DecisionRequest"):
        return {"status": "REJECTED", "message": "no"}
    if ref.endswith("/IdentityRequest"):
        return {"account": SOME_ACCOUNT}
    return None


async def _snapshot(m: Mgmt, tenant: str) -> str:
    store = m.srv.services.store
    record = await store.platform("tenants").find_one({"_id": tenant})
    parts = [record, await store.platform("tenant_hosts").find({"tenant": tenant})]
    for name in ("admin_tokens", "audit", "customers", "identities", "files", "blobs",
                 "review_queue", "transactions"):
        parts.append(await store.tenant(tenant, name).find({}, sort=[("_id", 1)]))
    return json.dumps(parts, sort_keys=True, default=str)


async def test_tenant_admin_gets_404_or_403_on_every_route_of_another_tenant(
        mgmt: Mgmt) -> None:
    t2_prefix = (await mgmt.srv.services.store.tenant("t2", "admin_tokens").find({}))[0]["prefix"]
    # A real customer of t2 with a real file, so every customer route names existing data.
    victim = KycWallet(mgmt.srv, "b.test", "t2")
    victim_id = await victim.put_with_photo(ALICE, png(9))
    [file_doc] = await mgmt.srv.services.store.tenant("t2", "files").find({})
    before = await _snapshot(mgmt, "t2")
    checked = 0
    for template, method, op in operations():
        if op["x-scope"] is None:
            continue  # whoami: the caller's own token, no tenant involved
        path = fill(template, "t2", t2_prefix, victim_id, str(file_doc["_id"]))
        reply = await mgmt.api.call(method, path, token=mgmt.t1, body=sample_body(op, "t2"))
        expected = 404 if "{tenant_id}" in template else 403
        assert reply.status == expected, (method, path, reply.body)
        checked += 1
    assert checked == sum(1 for _, _, op in operations() if op["x-scope"] is not None)
    assert checked >= 21
    assert sum("{customer_id}" in t for t, _, op in operations() if op["x-scope"]) >= 6
    assert await _snapshot(mgmt, "t2") == before
    assert (await victim.get())["status"] == "PROCESSING"
    assert (await mgmt.srv.fetch("b.test", "/.well-known/stellar.toml")).code == 200


def _all_but(scope: str, *, operator: bool) -> list[str]:
    """Every scope of a token kind except ``scope`` and the scopes that imply it."""
    def grants(held: str) -> bool:
        return Principal("0" * 10, "operator", None, frozenset([held]), None).has(scope)

    pool = ALL_SCOPES if operator else TENANT_SCOPES
    return [s for s in pool if s != "operator" and not grants(s)]


async def test_every_route_needs_a_token_and_checks_its_scope(mgmt: Mgmt) -> None:
    """No token -> 401; a token holding every other scope but this route's -> 403."""
    for template, method, op in operations():
        path = fill(template, "t1")
        body = sample_body(op, "t1")
        assert (await mgmt.api.call(method, path, body=body)).status == 401, path
        if op["x-scope"] is None:
            continue
        lacking = [await mgmt.make_token(None, _all_but(op["x-scope"], operator=True))]
        if op["x-scope"] in TENANT_SCOPES:
            lacking.append(await mgmt.make_token("t1", _all_but(op["x-scope"],
                                                                operator=False)))
        else:
            lacking.append(mgmt.t1)  # every tenant scope: still not an operator's
        for token in lacking:
            reply = await mgmt.api.call(method, path, token=token, body=body)
            assert reply.status == 403, (method, path, reply.body)


async def test_management_routes_are_not_served_on_tenant_hosts(mgmt: Mgmt) -> None:
    for template, method, op in operations():
        for host in ("a.test", "b.test"):
            reply = await mgmt.srv.fetch(
                host, fill(template, "t1"), method=method,
                headers={"Authorization": f"Bearer {mgmt.operator}"},
                body=json.dumps(sample_body(op, "t1")) if method in ("POST", "PUT") else None)
            assert reply.code in (404, 405), (host, method, template)
            assert json.loads(reply.body)["error"]
    assert (await mgmt.srv.fetch("a.test", "/api/v1/openapi.json")).code == 404
    # On the admin listener the Host header carries no authority.
    reply = await mgmt.srv.fetch("b.test", "/api/v1/tenants/t2/audit", admin=True,
                                 headers={"Authorization": f"Bearer {mgmt.t1}"})
    assert reply.code == 404


#: Collections a management request may write; unchanged after every 4xx answer.
PLATFORM_COLLECTIONS = ("tenants", "tenant_hosts", "operator_tokens", "token_index",
                        "platform_audit", "key_jobs")
TENANT_COLLECTIONS = ("customers", "identities", "files", "blobs", "review_queue",
                      "transactions", "admin_tokens", "audit", "erasures")


async def _store_state(m: Mgmt, tenants: tuple[str, ...]) -> str:
    store = m.srv.services.store
    parts: dict[str, Any] = {}
    for name in PLATFORM_COLLECTIONS:
        parts[name] = await store.platform(name).find({}, sort=[("_id", 1)])
    for tenant in tenants:
        for name in TENANT_COLLECTIONS:
            parts[f"{tenant}/{name}"] = await store.tenant(tenant, name).find(
                {}, sort=[("_id", 1)])
    return json.dumps(parts, sort_keys=True, default=repr)


def fuzz_body(op: dict[str, Any], template: str, method: str) -> Any:
    """A valid baseline body; the fuzzer breaks one part of it per case."""
    ref = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get(
        "schema", {}).get("$ref", "")
    if ref.endswith("/TenantDocument"):
        return (make_tenant_doc("fz", ["fz.test"], name="Fuzz") if method == "POST"
                else make_tenant_doc("t1", ["a.test"]))
    if ref.endswith("/TokenCreate"):
        return {"scopes": ["audit:read"], "expires_in_days": 5, "note": "fuzz"}
    if ref.endswith("/DecisionRequest"):
        return {"type": "individual", "status": "NEEDS_INFO", "message": "more please",
                "fields": {"first_name": {"status": "REJECTED", "error": "blurry"}}}
    if ref.endswith("/IdentityRequest"):
        return {"account": SOME_ACCOUNT, "memo": "5", "memo_type": "id"}
    assert "requestBody" not in op, f"no baseline body for {method} {template}"
    return None


async def test_junk_input_never_gets_a_5xx(mgmt: Mgmt) -> None:
    """Schema-driven fuzz (tests/management/schema_fuzz.py): every documented operation, each
    case breaking one path parameter, query parameter, or body part per the document; an
    operator token. Every answer is documented (Api.call checks it) and below 500, and a 4xx
    answer leaves the store exactly as it was (nothing half-written)."""
    wallet = KycWallet(mgmt.srv, "a.test", "t1")
    customer_id = await wallet.put_with_photo(ALICE, png(3))
    [file_doc] = await mgmt.srv.services.store.tenant("t1", "files").find({})
    spare = await mgmt.make_token("t1", ["audit:read"])
    values = {"tenant_id": "t1", "customer_id": customer_id, "file_id": str(file_doc["_id"]),
              "prefix": spare.split("_")[1], "event_id": "0" * 32, "operation": "rotate-jwt"}
    fuzzer = Fuzzer(management_document())
    tenants = ("t1", "t2")
    state = await _store_state(mgmt, tenants)
    statuses: dict[int, int] = {}
    sent = 0
    for template, method, op in [*operations(), *operations(public=True)]:
        body = fuzz_body(op, template, method)
        for case in fuzzer.cases(template, method, op, values, body):
            # Every case breaks something, so no live tenant is ever offboarded here.
            assert (case.method, case.path) not in (("DELETE", "/api/v1/tenants/t1"),
                                                    ("DELETE", "/api/v1/tenants/t2"))
            reply = await mgmt.api.call(case.method, case.path, token=mgmt.operator,
                                        raw=case.body)
            sent += 1
            statuses[reply.status] = statuses.get(reply.status, 0) + 1
            assert reply.status < 500, (case, reply.body)
            after = await _store_state(mgmt, tenants)
            if 400 <= reply.status < 500:
                assert after == state, ("half-written", case, reply.body)
            state = after
    assert sent > 300
    assert statuses.get(400, 0) > 50  # the cases reach the validation, not only the auth
    assert statuses.get(404, 0) > 50
    # The live tenants were never offboarded or broken by the run.
    assert (await mgmt.api.call("GET", "/api/v1/tenants/t1", token=mgmt.operator)).status == 200
    assert (await mgmt.srv.fetch("b.test", "/.well-known/stellar.toml")).code == 200
