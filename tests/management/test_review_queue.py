"""The review queue (store/review_queue.py) on both backends: pages never repeat or skip a
customer, with timestamp ties, several types per customer and every filter; the API clamps a
huge page size to 200; the purge job repairs rows that a save cut midway left behind."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest
from mgmt_helpers import (  # noqa: F401 - fixtures
    Api,
    MakeToken,
    Mgmt,
    OpenApiChecker,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)
from review_helpers import ALICE, BOB, KycWallet
from test_customers import ACME

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.retention.purge import purge_tenant
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store import review_queue
from kyc_host.store.base import Store
from kyc_host.store.review_queue import Position, QueueFilter, ReviewQueue, micros
from sep12.sep12_helpers import tenant_of

STATUSES = ("PROCESSING", "NEEDS_INFO", "ACCEPTED")


def _rows(seed: int) -> list[dict[str, Any]]:
    """40 customers on 8 distinct times (many ties), some with two types."""
    rng = random.Random(seed)
    rows = []
    for n in range(40):
        customer_id = f"{rng.randrange(16**8):08x}-c{n:02d}"
        updated = 1_000_000 + rng.randrange(8)
        for type_name in ("individual", "business")[:rng.choice((1, 1, 2))]:
            rows.append({"_id": f"{customer_id}|{type_name}", "customer_id": customer_id,
                         "type": type_name, "status": rng.choice(STATUSES),
                         "updated_us": updated})
    return rows


def _expected(rows: list[dict[str, Any]], flt: QueueFilter, newest: bool) -> list[str]:
    keys = {(r["updated_us"], r["customer_id"]) for r in rows
            if (flt.status is None or r["status"] == flt.status)
            and (flt.type is None or r["type"] == flt.type)
            and (flt.customer_ids is None or r["customer_id"] in flt.customer_ids)
            and (flt.since_us is None or r["updated_us"] >= flt.since_us)}
    return [cid for _, cid in sorted(keys, reverse=newest)]


async def _walk(queue: ReviewQueue, flt: QueueFilter, limit: int, newest: bool) -> list[str]:
    seen: list[str] = []
    after: Position | None = None
    for _ in range(100):
        page, after = await queue.page(flt, limit=limit, newest_first=newest, after=after)
        assert len(page) <= limit
        seen += [p.customer_id for p in page]
        if after is None:
            return seen
        assert len(page) == limit  # only a full page has a next position
    raise AssertionError("paging did not end")


async def test_pages_never_repeat_or_skip(store: Store) -> None:
    rows = _rows(7)
    coll = store.tenant("t1", "review_queue")
    for row in rows:
        await coll.insert_one(row)
    queue = ReviewQueue(store, "t1")
    some_ids = tuple(sorted({r["customer_id"] for r in rows})[::3])
    filters = [QueueFilter(), QueueFilter(status="PROCESSING"), QueueFilter(type="business"),
               QueueFilter(type="individual", status="ACCEPTED"),
               QueueFilter(customer_ids=some_ids), QueueFilter(customer_ids=()),
               QueueFilter(since_us=1_000_004), QueueFilter(status="NEEDS_INFO",
                                                            since_us=1_000_002)]
    for flt in filters:
        for newest in (True, False):
            expected = _expected(rows, flt, newest)
            for limit in (1, 2, 3, 7, 50):
                assert await _walk(queue, flt, limit, newest) == expected, (flt, newest, limit)
    # Another tenant's rows are never seen.
    assert (await ReviewQueue(store, "t2").page(QueueFilter(), limit=50))[0] == []


async def test_huge_page_size_is_clamped_to_200(mgmt: Mgmt) -> None:
    tenant = mgmt.srv.services.registry.get("t1")
    assert tenant is not None
    service = service_for(tenant, mgmt.srv.services.store, mgmt.srv.services.settings)
    for n in range(205):
        record = service.customers.new()
        record.fields["first_name"] = f"n{n}"
        record.type_state("individual").status = "NEEDS_INFO"
        await service.customers.save(record)
    base = "/api/v1/tenants/t1/customers"
    first = await mgmt.api.call("GET", f"{base}?limit=1000000000", token=mgmt.t1)
    assert first.status == 200
    assert len(first.body["customers"]) == 200
    assert first.body["next_cursor"]
    rest = await mgmt.api.call(
        "GET", f"{base}?limit=1000000000&cursor={first.body['next_cursor']}", token=mgmt.t1)
    assert len(rest.body["customers"]) == 5
    assert rest.body["next_cursor"] is None
    ids = [c["id"] for c in first.body["customers"] + rest.body["customers"]]
    assert len(set(ids)) == 205
    default = await mgmt.api.call("GET", base, token=mgmt.t1)
    assert len(default.body["customers"]) == 50
    assert [c["id"] for c in default.body["customers"]] == ids[:50]
    tiny = await mgmt.api.call("GET", f"{base}?limit=-5", token=mgmt.t1)
    assert len(tiny.body["customers"]) == 1


async def test_the_purge_job_repairs_rows_a_cut_save_left_behind(
        make_server: MakeServer, checker: OpenApiChecker,
        make_token_for: Callable[[RunningServer], MakeToken],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A save writes the record, then its queue rows; a request cut between the two (its
    store budget spent, the store failing, ``kill -9``) leaves the rows behind, and the
    wallet's identical retry writes nothing. The purge job's repair finds and rewrites them,
    and only them: the other customer of the tenant and the other tenant are untouched."""
    srv = await make_server(make_tenant_doc("t1", ["a.test"], customer_types=ACME),
                            make_tenant_doc("t2", ["b.test"], customer_types=ACME))
    api = Api(srv, checker)
    make = make_token_for(srv)
    admin1, admin2 = await make("t1"), await make("t2")
    store = srv.services.store
    alice = KycWallet(srv, "a.test", "t1")
    carol = KycWallet(srv, "a.test", "t1")  # another customer of t1
    bob = KycWallet(srv, "b.test", "t2", keypair=alice.keypair)  # the same G on t2
    alice_id = await alice.put({"first_name": "Alice"})
    carol_id = await carol.put(BOB)
    bob_id = await bob.put({"first_name": "Bob"})
    rows1 = store.tenant("t1", "review_queue")
    rows2 = store.tenant("t2", "review_queue")
    before = await rows1.find({"customer_id": alice_id})
    assert [row["status"] for row in before] == ["NEEDS_INFO"]
    bob_rows = await rows2.find({})

    complete = dict(ALICE)
    assert await alice.put(complete) == alice_id  # now PROCESSING, by the record
    # What a save cut after its record write leaves: the rows as they were before it.
    for row in before:
        await rows1.replace_one({"_id": row["_id"]}, row)

    async def processing(token: str, tenant: str = "t1") -> list[str]:
        reply = await api.call("GET", f"/api/v1/tenants/{tenant}/customers?status=PROCESSING",
                               token=token)
        assert reply.status == 200
        return [c["id"] for c in reply.body["customers"]]

    assert await processing(admin1) == [carol_id]  # alice is missing from the review queue
    assert await alice.put(complete) == alice_id  # the identical retry writes nothing...
    assert await processing(admin1) == [carol_id]  # ...so she stays missing

    # Records saved in the last minute are left to their saves.
    assert await ReviewQueue(store, "t1").repair() == []
    monkeypatch.setattr(review_queue, "REPAIR_GRACE_SECONDS", 0.0)
    tenant1, tenant2 = tenant_of(srv, "t1"), tenant_of(srv, "t2")
    dry = await purge_tenant(srv.services, tenant1, dry_run=True)
    assert dry.queue_repaired == [alice_id]
    assert await processing(admin1) == [carol_id]  # a dry run writes nothing
    report = await purge_tenant(srv.services, tenant1)
    assert report.queue_repaired == [alice_id]
    assert report.to_json()["queue_repaired"] == [alice_id]
    assert await processing(admin1) == [alice_id, carol_id]  # newest first
    [row] = await rows1.find({"customer_id": alice_id})
    assert row["status"] == "PROCESSING"
    assert row["updated_us"] > before[0]["updated_us"]

    # The other tenant: nothing to repair, nothing written.
    assert (await purge_tenant(srv.services, tenant2)).queue_repaired == []
    assert await rows2.find({}) == bob_rows
    assert await processing(admin2, "t2") == []
    # A second run starts from the checkpoint and finds nothing.
    assert (await purge_tenant(srv.services, tenant1)).queue_repaired == []
    assert bob_id != alice_id


async def test_the_repair_leaves_newer_rows_and_erasures_alone(store: Store) -> None:
    """A row newer than the record it was read with (a save wrote it after the repair read
    the record) is left as it is, and so is a customer being erased (its erasure removes the
    rows); a row that is missing is written."""
    customers = store.tenant("t1", "customers")
    rows = store.tenant("t1", "review_queue")
    old = int(time.time()) - 3600.5  # exact in 15 digits, as the SQLite store keeps floats
    for customer_id in ("c-newer", "c-missing", "c-erasing"):
        await customers.insert_one({"_id": customer_id, "updated_at": old, "types": [
            {"type": "individual", "status": "NEEDS_INFO", "decision": None}]})
    await store.tenant("t1", "erasures").insert_one(
        {"_id": "c-erasing", "state": "shredding", "shred_after": old})
    newer = {"_id": "c-newer|individual", "customer_id": "c-newer", "type": "individual",
             "status": "ACCEPTED", "updated_us": micros(old) + 1_000_000}
    await rows.insert_one(newer)
    assert await ReviewQueue(store, "t1").repair() == ["c-missing"]
    assert await rows.find({"customer_id": "c-newer"}) == [newer]
    assert await rows.find({"customer_id": "c-erasing"}) == []
    assert await rows.find({"customer_id": "c-missing"}) == [
        {"_id": "c-missing|individual", "customer_id": "c-missing", "type": "individual",
         "status": "NEEDS_INFO", "updated_us": micros(old)}]
    assert await store.tenant("t2", "review_queue").find({}) == []
