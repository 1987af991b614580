"""``Collection.find(..., fields=[...])``: only ``_id`` and the named top-level fields come back
(missing or null ones left out), on both backends; filters, sort, limit and tenant scoping work
as without ``fields``. (The tenant registry's poll uses it to read revisions, not records.)"""

from __future__ import annotations

import pytest

from kyc_host.store.base import Store, gte


async def test_only_named_fields_come_back(store: Store) -> None:
    coll = store.tenant("t1", "customers")
    await coll.insert_one({"_id": "a", "status": "x", "n": 3, "nested": {"k": [1, {"z": "w"}]},
                           "blob": b"\x00\xffkey", "gone": None, "secret": "s3cr3t"})
    await coll.insert_one({"_id": "b", "status": "y", "n": 1, "secret": "other"})
    fields = ["status", "nested", "blob", "gone", "missing"]
    docs = await coll.find({}, sort=[("n", 1)], fields=fields)
    assert docs == [{"_id": "b", "status": "y"},
                    {"_id": "a", "status": "x", "nested": {"k": [1, {"z": "w"}]},
                     "blob": b"\x00\xffkey"}]
    assert await coll.find({"n": gte(2)}, fields=["n"]) == [{"_id": "a", "n": 3}]
    assert await coll.find({}, sort=[("n", -1)], limit=1, fields=["status"]) == [
        {"_id": "a", "status": "x"}]
    assert await coll.find({}, sort=[("n", 1)], fields=[]) == [{"_id": "b"}, {"_id": "a"}]
    # Without fields: whole documents, as before.
    whole = await coll.find({"_id": "b"})
    assert whole == [{"_id": "b", "status": "y", "n": 1, "secret": "other"}]


async def test_other_tenant_sees_nothing(store: Store) -> None:
    await store.tenant("t1", "customers").insert_one({"_id": "a", "status": "x"})
    assert await store.tenant("t2", "customers").find({}, fields=["status"]) == []


async def test_nested_or_bad_field_names_are_refused(store: Store) -> None:
    coll = store.tenant("t1", "customers")
    await coll.insert_one({"_id": "a", "nested": {"k": 1}})
    for name in ("nested.k", "a'b", "$where"):
        with pytest.raises(ValueError, match="field"):
            await coll.find({}, fields=[name])
