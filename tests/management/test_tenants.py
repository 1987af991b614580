"""Operators onboard, change, suspend, resume and offboard tenants through the API; every
process serves the change within 5 s; file-managed tenants are read-only here."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mgmt_helpers import (  # noqa: F401 - fixtures
    Mgmt,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.crypto.master import WrappedKey
from kyc_host.tenancy.schema import parse_tenant
from kyc_host.tenancy.secrets import unwrap_secrets
from kyc_host.tenancy.service import TenantDocument

TOML = "/.well-known/stellar.toml"
SERVED_WITHIN = 5.0  # design §4 / issue 7: every process serves a change within 5 s


async def eventually(srv: RunningServer, host: str, ok: Callable[[int, bytes], bool],
                     path: str = TOML) -> None:
    deadline = time.monotonic() + SERVED_WITHIN
    while True:
        reply = await srv.fetch(host, path)
        if ok(reply.code, reply.body or b""):
            return
        assert time.monotonic() < deadline, f"{host}{path}: still {reply.code} after 5 s"
        await asyncio.sleep(0.1)


async def test_onboard_update_suspend_resume_offboard(mgmt: Mgmt,
                                                      make_server: MakeServer) -> None:
    other = await make_server()  # a second process on the same store
    api, op = mgmt.api, mgmt.operator
    doc = make_tenant_doc("t3", ["c.test", "www.c.test"], name="Acme",
                          stellar_toml={"documentation": {"ORG_NAME": "Acme One"}})
    created = await api.call("POST", "/api/v1/tenants", token=op, body=doc)
    assert created.status == 201
    view = created.body
    assert view["manager"] == "api"
    assert view["status"] == "active"
    assert view["hosts"] == ["c.test", "www.c.test"]
    assert view["document"] == doc
    assert view["jwks"]["keys"][0]["crv"] == "Ed25519"
    assert "secrets" not in str(view)
    assert "seed" not in str(view)
    key = view["signing_key"]
    await eventually(other, "c.test", lambda code, body: code == 200 and key.encode() in body)
    again = await api.call("POST", "/api/v1/tenants", token=op, body=doc)
    assert again.status == 409
    assert "already exists" in again.error

    doc["stellar_toml"]["documentation"]["ORG_NAME"] = "Acme Two"
    updated = await api.call("PUT", "/api/v1/tenants/t3", token=op, body=doc)
    assert updated.status == 200
    assert updated.body["signing_key"] == key
    assert updated.body["rev"] != view["rev"]
    await eventually(other, "c.test", lambda code, body: b"Acme Two" in body)
    same = await api.call("PUT", "/api/v1/tenants/t3", token=op, body=doc)
    assert same.body["rev"] == updated.body["rev"]  # unchanged: no new revision

    suspended = await api.call("POST", "/api/v1/tenants/t3/suspend", token=op)
    assert suspended.status == 200
    assert suspended.body["status"] == "suspended"
    assert "status" not in suspended.body["document"]  # an operational hold, not an edit
    await eventually(other, "c.test", lambda code, _: code == 503)
    listed = await api.call("GET", "/api/v1/tenants", token=op)
    assert {t["id"]: t["status"] for t in listed.body["tenants"]}["t3"] == "suspended"
    resumed = await api.call("POST", "/api/v1/tenants/t3/resume", token=op)
    assert resumed.body["status"] == "active"
    await eventually(other, "c.test", lambda code, _: code == 200)

    actions = [e["action"] for e in (await api.call(
        "GET", "/api/v1/tenants/t3/audit", token=op)).body["entries"]]
    assert actions == ["tenant.create", "tenant.update", "tenant.suspend", "tenant.resume"]
    # The other tenants are untouched throughout.
    assert (await other.fetch("a.test", TOML)).code == 200


async def test_offboarding_drops_data_destroys_keys_frees_hosts(
        mgmt: Mgmt, make_server: MakeServer) -> None:
    other = await make_server()
    api, op, store = mgmt.api, mgmt.operator, mgmt.srv.services.store
    await store.tenant("t2", "customers").insert_one({"_id": "c1", "status": "ACCEPTED"})
    before = await store.platform("tenants").find_one({"_id": "t2"})
    assert before is not None
    await eventually(other, "b.test", lambda code, _: code == 200)

    deleted = await api.call("DELETE", "/api/v1/tenants/t2", token=op)
    assert deleted.status == 204
    await eventually(other, "b.test", lambda code, _: code == 404)
    assert (await mgmt.srv.fetch("b.test", TOML)).code == 404

    record = await store.platform("tenants").find_one({"_id": "t2"})
    assert record is not None
    assert record["status"] == "deleted"
    assert "blob" not in record["secrets"]
    assert "blob" not in str(record)
    # The stored secrets are gone: what the platform still holds cannot be unwrapped ...
    with pytest.raises(Exception):  # noqa: B017, PT011 - DecryptionError or a malformed doc
        unwrap_secrets(mgmt.srv.services.keys, "t2", record["secrets"])
    # ... while a copy taken before (a backup) still could -- which is why issue 5 rotates
    # the master key; here we only check the online copy is overwritten.
    assert WrappedKey.from_doc(before["secrets"]).blob
    assert await store.tenant("t2", "customers").count({}) == 0
    assert await store.tenant("t2", "admin_tokens").count({}) == 0
    assert await store.platform("tenant_hosts").count({"tenant": "t2"}) == 0
    assert await store.platform("token_index").count({"tenant": "t2"}) == 0

    assert (await api.call("GET", "/api/v1/whoami", token=mgmt.t2)).status == 401
    assert (await api.call("GET", "/api/v1/tenants/t2", token=op)).status == 404
    assert (await api.call("DELETE", "/api/v1/tenants/t2", token=op)).status == 404
    proof = (await api.call("GET", "/api/v1/audit?action=tenant.delete", token=op)).body
    assert [e["details"]["tenant"] for e in proof["entries"]] == ["t2"]
    assert proof["entries"][0]["details"]["hosts"] == ["b.test"]
    assert (await api.call("GET", "/api/v1/audit/verify", token=op)).body["ok"] is True

    # The host is free again; the same id starts over with new keys.
    reused = await api.call("POST", "/api/v1/tenants", token=op,
                            body=make_tenant_doc("t2", ["b.test"]))
    assert reused.status == 201
    assert reused.body["signing_key"] != mgmt.srv.services.registry.get("t1").secrets \
        .signing_keypair.public_key  # type: ignore[union-attr]
    await eventually(other, "b.test", lambda code, _: code == 200)
    assert (await mgmt.srv.fetch("a.test", TOML)).code == 200


async def test_file_managed_tenant_is_read_only_here(mgmt: Mgmt, tmp_path: Path) -> None:
    api, op = mgmt.api, mgmt.operator
    path = tmp_path / "tenants" / "filed.toml"
    raw = make_tenant_doc("filed", ["f.test"])
    await mgmt.srv.services.tenants.apply(
        [TenantDocument(parse_tenant(raw, str(path)), raw, f"file:{path}")])
    got = await api.call("GET", "/api/v1/tenants/filed", token=op)
    assert got.status == 200
    assert got.body["manager"] == f"file:{path}"
    for method, url, body in (("PUT", "/api/v1/tenants/filed", raw),
                              ("DELETE", "/api/v1/tenants/filed", None),
                              ("POST", "/api/v1/tenants", raw)):
        reply = await api.call(method, url, token=op, body=body)
        assert reply.status == 409, (method, reply.body)
        assert str(path) in reply.error
    # Suspension is an operational switch, as with `kyc-host tenant suspend`.
    reply = await api.call("POST", "/api/v1/tenants/filed/suspend", token=op)
    assert reply.status == 200
    assert reply.body["status"] == "suspended"
    assert reply.body["document"] == raw


@pytest.mark.parametrize(("body", "status", "named"), [
    (b"{not json", 400, "JSON"),
    (b"[1, 2]", 400, "object"),
    (b"", 400, "JSON object"),
    ({**make_tenant_doc("t9", ["n.test"]), "hostz": ["x"]}, 400, "hostz"),
    (make_tenant_doc("t9", ["n.test"], home_domain="x" * 60 + ".test"), 400, "home_domain"),
    (make_tenant_doc("T9", ["n.test"]), 400, "id"),
    ({**make_tenant_doc("t9", ["n.test"]), "hosts": []}, 400, "hosts"),
    (make_tenant_doc("t9", ["n.test"], customer_types={"x": {"required": ["nope"]}}), 400,
     "customer_types.x.required"),
    (make_tenant_doc("t9", ["a.test"]), 409, "hosts"),
])
async def test_bad_documents_are_refused_naming_the_key(
        mgmt: Mgmt, body: object, status: int, named: str) -> None:
    raw = body if isinstance(body, bytes) else None
    reply = await mgmt.api.call("POST", "/api/v1/tenants", token=mgmt.operator,
                                body=None if raw is not None else body, raw=raw)
    assert reply.status == status, reply.body
    assert named in reply.error
    assert await mgmt.srv.services.store.platform("tenants").find_one({"_id": "t9"}) is None
    assert await mgmt.srv.services.store.platform("tenant_hosts").count(
        {"_id": "n.test"}) == 0


async def test_put_rejects_a_different_id_and_bad_documents(mgmt: Mgmt) -> None:
    api, op = mgmt.api, mgmt.operator
    reply = await api.call("PUT", "/api/v1/tenants/t1", token=op,
                           body=make_tenant_doc("t2", ["a.test"]))
    assert reply.status == 400
    assert "id" in reply.error
    reply = await api.call("PUT", "/api/v1/tenants/t1", token=op,
                           body=make_tenant_doc("t1", ["a.test"], network=""))
    assert reply.status == 400
    assert "network" in reply.error
    reply = await api.call("PUT", "/api/v1/tenants/t1", token=op,
                           body=make_tenant_doc("t1", ["b.test"]))
    assert reply.status == 409
    assert "b.test" in reply.error
    assert (await api.call("PUT", "/api/v1/tenants/t7", token=op,
                           body=make_tenant_doc("t7", ["z.test"]))).status == 404
    assert (await mgmt.srv.fetch("a.test", TOML)).code == 200


async def test_list_pages_by_id(mgmt: Mgmt) -> None:
    for n in range(3):
        await mgmt.api.call("POST", "/api/v1/tenants", token=mgmt.operator,
                            body=make_tenant_doc(f"p{n}", [f"p{n}.test"]))
    seen: list[str] = []
    cursor = ""
    while True:
        page = await mgmt.api.call("GET", f"/api/v1/tenants?limit=2&cursor={cursor}",
                                   token=mgmt.operator)
        seen += [t["id"] for t in page.body["tenants"]]
        if page.body["next_cursor"] is None:
            break
        cursor = page.body["next_cursor"]
    assert seen == ["p0", "p1", "p2", "t1", "t2"]
