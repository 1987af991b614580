"""The hash-chained audit log: appends under contention, verification finds tampering in the
raw store (altered, removed, reordered) with the right seq, and the read API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mgmt_helpers import (  # noqa: F401 - fixtures
    Mgmt,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)

from kyc_host import audit
from kyc_host.store import open_store
from kyc_host.store.base import Store


async def fill(store: Store, tenant: str, n: int, **kw: Any) -> None:
    for i in range(n):
        await audit.record(store, tenant, actor="system", action=f"test.step{i % 3}",
                           customer_id=f"c{i % 2}", fields=("first_name", "email_address"),
                           request_id=f"r{i}", details={"n": i, **kw})


async def test_concurrent_appends_form_one_unbroken_chain(store: Store, backend: str) -> None:
    """Many writers at once, in this process and in "another process" (a second connection,
    which shares no lock with the first: only the unique seq index keeps them apart)."""
    other = open_store(backend)
    await other.start()
    try:
        results = await asyncio.gather(*(
            audit.record(store if i % 2 else other, "t1", actor="wallet",
                         action="customer.put", customer_id=f"c{i}", fields=("last_name",))
            for i in range(30)))
    finally:
        await other.close()
    assert sorted(r["seq"] for r in results) == list(range(1, 31))
    result = await audit.verify(store, "t1")
    assert result.ok
    assert result.entries == 30
    assert (await audit.verify(store, "t2")).entries == 0  # logs are per tenant


async def test_entries_hold_names_not_values(store: Store) -> None:
    entry = await audit.record(store, "t1", actor="token:0123456789", action="customer.read",
                               customer_id="c1", fields=("email_address", "first_name"),
                               request_id="abc", details={"status": "ACCEPTED"})
    assert entry["fields"] == ["email_address", "first_name"]
    assert entry["seq"] == 1
    assert entry["prev_hash"] == audit.GENESIS
    for bad in ({"n": 1.5}, {"x": "v" * 201}, {"bad key": "x"}, {"nested": {"a": 1}}):
        with pytest.raises(ValueError, match="audit detail"):
            await audit.record(store, "t1", actor="system", action="x", details=bad)
    with pytest.raises(ValueError, match="field"):
        await audit.record(store, "t1", actor="system", action="x", fields=("Jane Doe",))
    assert await store.tenant("t1", "audit").count({}) == 1  # nothing half-written


async def _swap_seq(store: Store, tenant: str, a: int, b: int) -> None:
    coll = store.tenant(tenant, "audit")
    first = await coll.find_one({"seq": a})
    second = await coll.find_one({"seq": b})
    assert first is not None
    assert second is not None
    await coll.update_one({"_id": first["_id"]}, set={"seq": -1})
    await coll.update_one({"_id": second["_id"]}, set={"seq": a})
    await coll.update_one({"_id": first["_id"]}, set={"seq": b})


@pytest.mark.parametrize(("tamper", "bad_seq", "words"), [
    ("alter", 4, "altered"),
    ("alter_first", 1, "altered"),
    ("delete", 4, "missing"),
    ("delete_first", 1, "missing"),
    ("swap", 4, "out of order"),
    ("rehash", 5, "chain broken"),
])
async def test_tampering_in_the_raw_store_is_found(
        store: Store, tamper: str, bad_seq: int, words: str) -> None:
    await fill(store, "t1", 8)
    coll = store.tenant("t1", "audit")
    assert (await audit.verify(store, "t1")).ok
    if tamper == "alter":
        await coll.update_one({"seq": 4}, set={"actor": "someone-else"})
    elif tamper == "alter_first":
        await coll.update_one({"seq": 1}, set={"fields": []})
    elif tamper == "delete":
        await coll.delete_one({"seq": 4})
    elif tamper == "delete_first":
        await coll.delete_one({"seq": 1})
    elif tamper == "swap":
        await _swap_seq(store, "t1", 4, 5)
    elif tamper == "rehash":  # rewrite entry 4 and make its own hash consistent again
        entry = await coll.find_one({"seq": 4})
        assert entry is not None
        entry["action"] = "nothing.happened"
        await coll.update_one({"seq": 4}, set={"action": entry["action"],
                                               "hash": audit.entry_hash(entry)})
    result = await audit.verify(store, "t1")
    assert not result.ok
    assert result.first_bad_seq == bad_seq, result
    assert words in (result.problem or ""), result


async def test_audit_api_filters_and_pages(mgmt: Mgmt) -> None:
    store = mgmt.srv.services.store
    await fill(store, "t1", 205)
    base = "/api/v1/tenants/t1/audit"
    clamped = await mgmt.api.call("GET", f"{base}?limit=1000", token=mgmt.t1)
    assert len(clamped.body["entries"]) == 200
    assert clamped.body["next_cursor"] == "200"
    rest = await mgmt.api.call("GET", f"{base}?limit=1000&cursor=200", token=mgmt.t1)
    assert [e["seq"] for e in rest.body["entries"]] == [201, 202, 203, 204, 205]
    assert rest.body["next_cursor"] is None
    default = await mgmt.api.call("GET", base, token=mgmt.t1)
    assert len(default.body["entries"]) == 50

    by_action = await mgmt.api.call("GET", f"{base}?action=test.step1&customer_id=c0&limit=200",
                                    token=mgmt.t1)
    entries = by_action.body["entries"]
    assert entries
    assert all(e["action"] == "test.step1" and e["customer_id"] == "c0"
                           for e in entries)
    assert len(entries) == len([i for i in range(205) if i % 3 == 1 and i % 2 == 0])

    middle = clamped.body["entries"][99]["time"]
    since = await mgmt.api.call("GET", f"{base}?since={middle}&limit=200", token=mgmt.t1)
    seqs = [e["seq"] for e in since.body["entries"]]
    assert 100 in seqs
    assert seqs[0] >= 99
    assert all(e["time"] >= middle for e in since.body["entries"])
    future = await mgmt.api.call("GET", f"{base}?since=2999-01-01T00:00:00Z", token=mgmt.t1)
    assert future.body["entries"] == []
    bad = await mgmt.api.call("GET", f"{base}?since=last+tuesday", token=mgmt.t1)
    assert bad.status == 400
    assert "since" in bad.error


async def test_audit_verify_api_and_isolation(mgmt: Mgmt) -> None:
    store = mgmt.srv.services.store
    await fill(store, "t1", 5)
    await fill(store, "t2", 3)
    ok = await mgmt.api.call("GET", "/api/v1/tenants/t1/audit/verify", token=mgmt.t1)
    assert ok.body == {"ok": True, "entries": 5, "first_bad_seq": None, "problem": None}
    await store.tenant("t1", "audit").update_one({"seq": 2}, set={"customer_id": "c9"})
    bad = await mgmt.api.call("GET", "/api/v1/tenants/t1/audit/verify", token=mgmt.t1)
    assert bad.body["ok"] is False
    assert bad.body["first_bad_seq"] == 2
    # t2's log is untouched and out of t1's reach.
    assert (await mgmt.api.call("GET", "/api/v1/tenants/t2/audit/verify",
                                token=mgmt.t1)).status == 404
    t2 = await mgmt.api.call("GET", "/api/v1/tenants/t2/audit/verify", token=mgmt.t2)
    assert t2.body["ok"] is True
    assert t2.body["entries"] == 3


async def test_token_actions_are_audited_with_the_actor(mgmt: Mgmt) -> None:
    created = await mgmt.api.call("POST", "/api/v1/tenants/t1/tokens", token=mgmt.t1,
                                  body={"scopes": ["audit:read"]})
    await mgmt.api.call("DELETE", f"/api/v1/tenants/t1/tokens/{created.body['prefix']}",
                        token=mgmt.t1)
    who = (await mgmt.api.call("GET", "/api/v1/whoami", token=mgmt.t1)).body["prefix"]
    log = (await mgmt.api.call("GET", "/api/v1/tenants/t1/audit", token=mgmt.t1)).body
    assert [(e["action"], e["actor"], e["details"]["token"]) for e in log["entries"]] == [
        ("token.create", f"token:{who}", created.body["prefix"]),
        ("token.revoke", f"token:{who}", created.body["prefix"]),
    ]
    assert all(e["request_id"] for e in log["entries"])
    assert created.body["token"] not in str(log)
    assert (await mgmt.api.call("GET", "/api/v1/tenants/t2/audit", token=mgmt.t2)).body[
        "entries"] == []
