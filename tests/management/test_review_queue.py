"""The review queue's paging (store/review_queue.py) on both backends: pages never repeat
or skip a customer, with timestamp ties, several types per customer and every filter; and the
API clamps a huge page size to 200."""

from __future__ import annotations

import random
from typing import Any

from mgmt_helpers import (  # noqa: F401 - fixtures
    Mgmt,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)

from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.base import Store
from kyc_host.store.review_queue import Position, QueueFilter, ReviewQueue

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
