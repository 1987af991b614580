"""The purge job's shredding pass in batches (retention/erasure.py, both backends).

``BATCH`` is set to 3 so a few customers fill a batch. Due records under a legal hold never
take a batch's place (they used to: once a batch's worth of them was due, no other customer
of the tenant was ever shredded again), one run shreds every due record however many
batches they fill, and a tenant's run touches nothing of another tenant's, not even a
record with the same customer id.
"""

from __future__ import annotations

import os
import time

import pytest

from kyc_host import audit
from kyc_host.crypto.records import TenantCipher
from kyc_host.retention import erasure
from kyc_host.retention.config import Retention
from kyc_host.retention.erasure import DAY, Erasures
from kyc_host.store.base import Store
from kyc_host.store.customers import CustomerRepository

BATCH = 3
LATER = 2 * DAY  # past the one-day period of the held records below


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(erasure, "BATCH", BATCH)


class Tenant:
    """A tenant's customers, erased through :meth:`Erasures.erase` under a given period."""

    def __init__(self, store: Store, tenant_id: str) -> None:
        self.store = store
        self.tenant_id = tenant_id
        self.cipher = TenantCipher(tenant_id, os.urandom(32), os.urandom(32))
        self.customers = CustomerRepository(store, tenant_id, self.cipher)
        self.erasures = self.with_days(1)
        self.markers = store.tenant(tenant_id, "erasures")

    def with_days(self, keep_days: int) -> Erasures:
        return Erasures(self.store, self.tenant_id, self.cipher, Retention(keep_days=keep_days))

    async def erase(self, count: int, *, keep_days: int = 1, legal_hold: bool = False,
                    ids: list[str] | None = None) -> list[str]:
        """``count`` customers (with these ids, if given) created and erased: held for
        ``keep_days``, or -- under a legal hold set while they were live -- held until it is
        lifted, due at once with ``keep_days = 0``."""
        erasures = self.with_days(keep_days)
        erased = []
        for n in range(count):
            record = self.customers.new(ids[n] if ids else None)
            record.fields["first_name"] = f"{self.tenant_id}-{n}"
            await self.customers.save(record)
            if legal_hold:
                assert await erasures.set_legal_hold(record.id, True) == "live"
            result = await erasures.erase(self.customers, record, actor="test")
            assert result.held_until is not None
            erased.append(record.id)
        return erased

    async def states(self, ids: list[str]) -> dict[str, str]:
        return {i: str((await self.markers.find_one({"_id": i}) or {}).get("state"))
                for i in ids}


async def test_legal_holds_never_fill_a_batch_and_stay_intact(store: Store) -> None:
    t1 = Tenant(store, "t1")
    # More legally held records than a batch, due at once (keep_days = 0) and so first in
    # the shredding order; then the others, due after their one-day period.
    kept = await t1.erase(BATCH + 1, keep_days=0, legal_hold=True)
    others = await t1.erase(BATCH + 1)
    # A marker without the field (written before it existed, or by hand) is not held.
    await t1.markers.update_one({"_id": others[0]}, unset=["legal_hold"])
    assert "legal_hold" not in (await t1.markers.find_one({"_id": others[0]}) or {})

    report = await t1.erasures.purge(now=time.time() + LATER)

    assert sorted(report.shredded) == sorted(others)
    assert await t1.states(others) == dict.fromkeys(others, "shredded")
    assert await t1.states(kept) == dict.fromkeys(kept, "held")
    assert len(report.paused) == BATCH  # a batch of them is listed
    assert set(report.paused) < set(kept)
    for n, customer_id in enumerate(kept):  # still readable on the auditor path
        assert await t1.erasures.open_held(customer_id) == {"first_name": f"t1-{n}"}
        [held] = await t1.erasures.held(customer_id)
        assert held["legal_hold"] is True
    proofs, _ = await audit.entries(store, "t1", action="customer.shred")
    assert sorted(p["customer_id"] for p in proofs) == sorted(others)
    assert (await audit.verify(store, "t1")).ok

    # Lifting the holds lets the next run shred them all, in one run too.
    for customer_id in kept:
        assert await t1.erasures.set_legal_hold(customer_id, False) == "held"
    report = await t1.erasures.purge(now=time.time() + LATER)
    assert sorted(report.shredded) == sorted(kept)
    assert report.paused == []
    assert await t1.states(kept) == dict.fromkeys(kept, "shredded")


async def test_one_run_shreds_every_due_record_whatever_the_batches(store: Store) -> None:
    t1 = Tenant(store, "t1")
    due = await t1.erase(2 * BATCH + 1)
    not_due = await t1.erase(1, keep_days=30)
    later = time.time() + LATER

    # A dry run shreds nothing (and ends, although the batch it reads stays due).
    dry = await t1.erasures.purge(now=later, dry_run=True)
    assert dry.shredded
    assert set(dry.shredded) <= set(due)
    assert await t1.states(due) == dict.fromkeys(due, "held")

    report = await t1.erasures.purge(now=later)
    assert sorted(report.shredded) == sorted(due)
    assert await t1.states(due) == dict.fromkeys(due, "shredded")
    assert await t1.states(not_due) == dict.fromkeys(not_due, "held")
    assert (await t1.erasures.purge(now=later)).shredded == []


async def test_a_tenants_run_leaves_the_other_tenants_due_records(store: Store) -> None:
    t1, t2 = Tenant(store, "t1"), Tenant(store, "t2")
    theirs = await t2.erase(BATCH + 1)
    theirs_kept = await t2.erase(1, keep_days=0, legal_hold=True)
    # t1's customers carry the same ids as t2's: the tenant, not the id, keeps them apart.
    mine = await t1.erase(BATCH + 1, ids=theirs)

    report = await t1.erasures.purge(now=time.time() + LATER)

    assert sorted(report.shredded) == sorted(mine)
    assert report.paused == []  # t2's legal hold is not t1's
    assert await t1.states(mine) == dict.fromkeys(mine, "shredded")
    assert await t2.states(theirs + theirs_kept) == dict.fromkeys(theirs + theirs_kept,
                                                                  "held")
    for n, customer_id in enumerate(theirs):
        assert await t2.erasures.open_held(customer_id) == {"first_name": f"t2-{n}"}
    proofs, _ = await audit.entries(store, "t2", action="customer.shred")
    assert proofs == []

    report = await t2.erasures.purge(now=time.time() + LATER)
    assert sorted(report.shredded) == sorted(theirs)
    assert report.paused == theirs_kept


async def test_every_record_written_back_after_its_erasure_is_found(store: Store) -> None:
    """A PUT that loaded a customer before its DELETE may save the record after it. The
    purge's check for such records read the first batch of the day's erasures (shredded at
    once, and held), so beyond a batch a written-back record kept its live data key. Every
    one is found now; t2's customers with the same ids are not t1's to remove."""
    t1, t2 = Tenant(store, "t1"), Tenant(store, "t2")
    live = store.tenant("t1", "customers")
    written_back = []
    for keep_days in (0, 1):  # shredded at once; held
        erasures = t1.with_days(keep_days)
        for n in range(2 * BATCH + 1):
            record = t1.customers.new()
            record.fields["first_name"] = f"t1-{keep_days}-{n}"
            await t1.customers.save(record)
            raw = await live.find_one({"_id": record.id})
            await erasures.erase(t1.customers, record, actor="test")
            written_back.append((raw, record.id))
    ids = [customer_id for _, customer_id in written_back]
    for n, customer_id in enumerate(ids):
        record = t2.customers.new(customer_id)
        record.fields["first_name"] = f"t2-{n}"
        await t2.customers.save(record)
    for raw, _ in written_back:  # the racing PUTs' saves land now
        await live.insert_one(raw)

    report = await t1.erasures.purge(now=time.time())
    assert sorted(report.resurrected) == sorted(ids)
    assert await live.find({}) == []
    assert len(await store.tenant("t2", "customers").find({})) == len(ids)
    assert (await t2.erasures.purge(now=time.time())).resurrected == []
    assert (await t1.erasures.purge(now=time.time())).resurrected == []  # done
