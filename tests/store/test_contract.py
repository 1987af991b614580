"""The store contract: every backend behaves the same. Runs on SQLite and on MongoDB (FerretDB)."""

from __future__ import annotations

import asyncio

import pytest

from kyc_host.store.base import (
    DuplicateKeyError,
    Store,
    gt,
    gte,
    in_,
    lt,
    lte,
    ne,
    nin,
)


async def test_insert_and_find_round_trip_types(store: Store) -> None:
    coll = store.tenant("t1", "customers")
    doc = {"_id": "c1", "status": "NEEDS_INFO", "n": 3, "f": 1.5, "ok": True, "none": None,
           "blob": b"\x00\x01\xffbytes", "nested": {"a": [1, "x"]}, "updated_at": 10.0}
    assert await coll.insert_one(doc) == "c1"
    found = await coll.find_one({"_id": "c1"})
    assert found == doc
    assert isinstance(found["blob"], bytes)


async def test_insert_generates_id(store: Store) -> None:
    coll = store.tenant("t1", "customers")
    new_id = await coll.insert_one({"status": "x"})
    assert len(new_id) == 32
    assert (await coll.find_one({"_id": new_id})) == {"_id": new_id, "status": "x"}


async def test_duplicate_id_and_unique_index(store: Store) -> None:
    coll = store.tenant("t1", "audit")
    await coll.insert_one({"_id": "a", "seq": 1})
    with pytest.raises(DuplicateKeyError):
        await coll.insert_one({"_id": "a", "seq": 2})
    with pytest.raises(DuplicateKeyError):
        await coll.insert_one({"_id": "b", "seq": 1})  # unique index on seq
    assert await coll.count({}) == 1


async def test_unique_violation_by_update_or_replace(store: Store) -> None:
    coll = store.tenant("t1", "audit")
    await coll.insert_one({"_id": "a", "seq": 1})
    await coll.insert_one({"_id": "b", "seq": 2})
    with pytest.raises(DuplicateKeyError):
        await coll.update_one({"_id": "b"}, set={"seq": 1})
    with pytest.raises(DuplicateKeyError):
        await coll.replace_one({"_id": "b"}, {"_id": "b", "seq": 1})
    assert (await coll.find_one({"_id": "b"}))["seq"] == 2  # type: ignore[index]


async def test_unique_index_is_per_tenant(store: Store) -> None:
    await store.prepare_tenant("t2")
    await store.tenant("t1", "audit").insert_one({"_id": "a", "seq": 1})
    await store.tenant("t2", "audit").insert_one({"_id": "a", "seq": 1})
    assert await store.tenant("t2", "audit").count({}) == 1


async def test_tenant_isolation(store: Store) -> None:
    one, two = store.tenant("t1", "customers"), store.tenant("t2", "customers")
    await one.insert_one({"_id": "same", "status": "ACCEPTED"})
    assert await two.find_one({"_id": "same"}) is None
    assert await two.find({}) == []
    assert await two.update_one({"_id": "same"}, set={"status": "REJECTED"}) == 0
    assert await two.delete_many({}) == 0
    assert (await one.find_one({"_id": "same"}))["status"] == "ACCEPTED"  # type: ignore[index]
    assert await store.platform("tenants").find({}) == []


async def test_drop_tenant_removes_only_that_tenant(store: Store) -> None:
    await store.prepare_tenant("t2")
    for tenant in ("t1", "t2"):
        await store.tenant(tenant, "customers").insert_one({"_id": "c", "status": "x"})
    await store.drop_tenant("t1")
    assert await store.tenant("t1", "customers").count({}) == 0
    assert await store.tenant("t2", "customers").count({}) == 1


async def test_filters_compare_and_sort(store: Store) -> None:
    coll = store.tenant("t1", "outbox")
    for i in range(6):
        await coll.insert_one({"_id": f"e{i}", "state": "pending" if i % 2 else "done",
                               "due_at": float(i)})
    ids = lambda docs: [d["_id"] for d in docs]  # noqa: E731
    assert ids(await coll.find({"due_at": lt(2)}, sort=[("due_at", 1)])) == ["e0", "e1"]
    assert ids(await coll.find({"due_at": lte(2)}, sort=[("due_at", -1)])) == ["e2", "e1", "e0"]
    assert ids(await coll.find({"due_at": gt(3)}, sort=[("due_at", 1)])) == ["e4", "e5"]
    assert ids(await coll.find({"due_at": gte(5)})) == ["e5"]
    assert ids(await coll.find({"state": "pending", "due_at": gte(2)},
                               sort=[("due_at", 1)])) == ["e3", "e5"]
    assert ids(await coll.find({"_id": in_(["e1", "e4", "zz"])}, sort=[("_id", 1)])) == \
        ["e1", "e4"]
    assert ids(await coll.find({"_id": nin(["e0", "e1", "e2", "e3"])}, sort=[("_id", 1)])) == \
        ["e4", "e5"]
    assert ids(await coll.find({"_id": in_([])})) == []
    assert len(await coll.find({"state": ne("done")})) == 3
    assert ids(await coll.find({}, sort=[("due_at", -1)], limit=2)) == ["e5", "e4"]
    assert await coll.count({"state": "done"}) == 3


async def test_null_matches_missing(store: Store) -> None:
    coll = store.tenant("t1", "customers")
    await coll.insert_one({"_id": "a", "status": None})
    await coll.insert_one({"_id": "b"})
    await coll.insert_one({"_id": "c", "status": "x"})
    assert sorted(d["_id"] for d in await coll.find({"status": None})) == ["a", "b"]
    assert [d["_id"] for d in await coll.find({"status": ne(None)})] == ["c"]


async def test_operator_lookalike_values_match_literally(store: Store) -> None:
    """NoSQL injection: a dict value is a value, never an operator (reliability-plan B4)."""
    coll = store.tenant("t1", "customers")
    await coll.insert_one({"_id": "victim", "status": "ACCEPTED"})
    for evil in ({"$ne": None}, {"$gt": ""}, {"$regex": ".*"}, ["ACCEPTED"]):
        assert await coll.find_one({"status": evil}) is None
        assert await coll.update_one({"_id": evil}, set={"status": "x"}) == 0
        assert await coll.delete_many({"_id": evil}) == 0
    assert await coll.count({}) == 1


async def test_update_set_unset_inc_and_dotted(store: Store) -> None:
    coll = store.tenant("t1", "customers")
    await coll.insert_one({"_id": "c", "status": "NEEDS_INFO", "n": 1, "tmp": "x",
                           "fields": {"a": 1}})
    matched = await coll.update_one({"_id": "c"}, set={"status": "PROCESSING", "fields.b": 2},
                                    unset=["tmp"], inc={"n": 2})
    assert matched == 1
    assert await coll.find_one({"_id": "c"}) == {
        "_id": "c", "status": "PROCESSING", "n": 3, "fields": {"a": 1, "b": 2}}
    assert await coll.update_one({"_id": "missing"}, set={"status": "x"}) == 0


async def test_upsert_and_find_one_and_update(store: Store) -> None:
    meta = store.tenant("t1", "counters")
    first = await meta.find_one_and_update({"_id": "seq"}, inc={"value": 1}, upsert=True)
    second = await meta.find_one_and_update({"_id": "seq"}, inc={"value": 1}, upsert=True)
    assert first == {"_id": "seq", "value": 1}
    assert second == {"_id": "seq", "value": 2}
    assert await meta.find_one_and_update({"_id": "nope"}, inc={"value": 1}) is None
    assert await meta.update_one({"_id": "u"}, set={"x": 1}, upsert=True) == 1
    assert await meta.find_one({"_id": "u"}) == {"_id": "u", "x": 1}


async def test_find_one_and_update_claims_in_sort_order(store: Store) -> None:
    coll = store.tenant("t1", "outbox")
    for i, due in enumerate([5.0, 1.0, 3.0]):
        await coll.insert_one({"_id": f"e{i}", "state": "pending", "due_at": due})
    claimed = await coll.find_one_and_update({"state": "pending", "due_at": lte(4.0)},
                                             set={"state": "leased"}, sort=[("due_at", 1)])
    assert claimed is not None
    assert claimed["_id"] == "e1"
    assert claimed["state"] == "leased"


async def test_concurrent_inserts_of_one_key_have_one_winner(store: Store) -> None:
    """Insert-with-unique-key is the platform's exclusivity primitive (challenge consumption,
    outbox claims): among racing inserts of one key exactly one succeeds, on every backend."""
    coll = store.tenant("t1", "challenges")

    async def claim(i: int) -> int:
        try:
            await coll.insert_one({"_id": "hash", "by": i, "expires_at": 1.0})
        except DuplicateKeyError:
            return 0
        return 1

    assert sum(await asyncio.gather(*(claim(i) for i in range(25)))) == 1
    assert await coll.count({}) == 1


async def test_replace_and_delete(store: Store) -> None:
    coll = store.tenant("t1", "customers")
    await coll.insert_one({"_id": "c", "status": "a", "old": 1})
    assert await coll.replace_one({"_id": "c"}, {"_id": "c", "status": "b"}) == 1
    assert await coll.find_one({"_id": "c"}) == {"_id": "c", "status": "b"}
    assert await coll.replace_one({"_id": "d"}, {"_id": "d", "status": "n"}, upsert=True) == 1
    assert await coll.delete_one({"status": "b"}) == 1
    assert await coll.delete_one({"status": "b"}) == 0
    assert await coll.delete_many({}) == 1


async def test_unknown_collection_and_bad_field_names_are_refused(store: Store) -> None:
    with pytest.raises(KeyError):
        store.tenant("t1", "nope")
    with pytest.raises(KeyError):
        store.tenant("t1", "tenants")  # platform collection asked as a tenant one
    with pytest.raises(ValueError, match="invalid field name"):
        await store.tenant("t1", "customers").find_one({"a'); DROP TABLE x; --": 1})


async def test_ping(store: Store) -> None:
    await store.ping()
