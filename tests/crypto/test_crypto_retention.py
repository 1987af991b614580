"""Retention periods, legal holds, the auditor path and the purge job (both backends)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import pytest

from conftest import MakeServer, RunningServer
from kyc_host import audit
from kyc_host.retention import commands
from kyc_host.retention.erasure import DAY
from kyc_host.retention.purge import PurgeLoop, erasures_for, purge_tenant
from sep12.sep12_helpers import Wallet, kyc_doc, png_of_size, tenant_of

NAMES = {"first_name": "Heldfirst", "last_name": "Heldlast",
         "email_address": "held@example.org"}


async def retention_server(make_server: MakeServer, **retention: object) -> RunningServer:
    return await make_server(
        kyc_doc("t1", ["a.test"], retention=retention),
        kyc_doc("t2", ["b.test"], retention=retention))


def args(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**{"json": False, "customer": None, **values})


async def test_held_customer_is_gone_for_the_wallet_and_shredded_after_the_period(
        make_server: MakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    srv = await retention_server(make_server, keep_days=30)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create(NAMES)
    reply = await wallet.put_multipart([("photo_id_front", png_of_size(2000, 3), "id.png")])
    assert reply.status == 202
    other = Wallet(srv, "b.test", "t2", keypair=wallet.keypair)
    other_id = await other.create(NAMES)

    assert (await wallet.delete()).status == 200
    status = (await wallet.get()).json
    assert status["status"] == "NEEDS_INFO"
    assert "id" not in status
    assert (await wallet.delete()).status == 404
    assert (await wallet.get(id=customer_id)).status == 404
    # The file the wallet uploaded is out of its reach as well.
    held = erasures_for(tenant_of(srv, "t1"), srv.services.store)
    [meta] = await held.held()
    [file_id] = meta["files"]
    listed = (await wallet.files(file_id=file_id)).json
    assert listed == {"files": []}
    # A reused account starts as a new customer.
    again = await wallet.create(NAMES)
    assert again != customer_id

    # The auditor path reads the held data, audited with field names only.
    assert await commands.customer_show_held(
        srv.services, args(tenant="t1", customer=customer_id)) == commands.OK
    shown = capsys.readouterr().out
    assert "Heldfirst" in shown
    reads, _ = await audit.entries(srv.services.store, "t1", action="customer.read_held")
    assert reads[0]["customer_id"] == customer_id
    assert "first_name" in reads[0]["fields"]
    assert "Heldfirst" not in str(reads)
    # Tenant 2's auditor path does not see tenant 1's held customer.
    assert await commands.customer_show_held(
        srv.services, args(tenant="t2", customer=customer_id)) == commands.FAILED

    # Not due yet: nothing is shredded.
    report = await held.purge(now=time.time())
    assert report.shredded == []
    # A legal hold pauses shredding past the period; clearing it lets the purge shred.
    assert await commands.customer_legal_hold(
        srv.services, args(tenant="t1", customer=customer_id, state="on")) == commands.OK
    later = time.time() + 31 * DAY
    report = await held.purge(now=later)
    assert report.paused == [customer_id]
    assert report.shredded == []
    assert await held.open_held(customer_id) is not None
    assert await commands.customer_legal_hold(
        srv.services, args(tenant="t1", customer=customer_id, state="off")) == commands.OK
    report = await held.purge(now=later)
    assert report.shredded == [customer_id]
    assert await held.open_held(customer_id) is None
    assert await srv.services.store.tenant("t1", "files").find_one({"_id": file_id}) is None
    assert await srv.services.store.tenant("t1", "blobs").find_one(
        {"_id": f"{file_id}.0"}) is None
    # Shredding again is harmless and writes no second proof.
    assert (await held.purge(now=later)).shredded == []
    proofs, _ = await audit.entries(srv.services.store, "t1", action="customer.shred")
    assert [p["customer_id"] for p in proofs] == [customer_id]
    assert proofs[0]["details"]["data_key"] == "destroyed"
    holds, _ = await audit.entries(srv.services.store, "t1", action="customer.legal_hold_set")
    assert holds[0]["customer_id"] == customer_id
    # Tenant 2's customer is untouched by tenant 1's purge.
    t2 = erasures_for(tenant_of(srv, "t2"), srv.services.store)
    assert (await t2.purge(now=later)).shredded == []
    assert await srv.services.store.tenant("t2", "customers").find_one({"_id": other_id})
    assert (await audit.verify(srv.services.store, "t1")).ok


async def test_retention_per_customer_type_and_legal_hold_on_a_live_customer(
        make_server: MakeServer) -> None:
    srv = await retention_server(make_server, customer_types={"business": 365})
    individual = Wallet(srv, "a.test", "t1")
    business = individual.other(memo=7)
    held_one = individual.other(memo=8)
    plain_id = await individual.create(NAMES)
    biz_id = await business.create({"organization.name": "Acme",
                                    "organization.registration_number": "123"},
                                   type="business")
    hold_id = await held_one.create(NAMES)
    store = srv.services.store
    erasures = erasures_for(tenant_of(srv, "t1"), store)
    assert await erasures.set_legal_hold(hold_id, True) == "live"
    for wallet in (individual, business, held_one):
        assert (await wallet.delete()).status == 200
    states = {d["_id"]: d for d in await store.tenant("t1", "erasures").find({})}
    assert states[plain_id]["state"] == "shredded"  # individual: no period
    assert states[biz_id]["state"] == "held"  # business: 365 days
    assert states[biz_id]["shred_after"] > time.time() + 364 * DAY
    assert states[hold_id]["state"] == "held"  # legal hold, despite no period
    assert states[hold_id]["legal_hold"] is True
    assert await erasures.set_legal_hold("no-such-customer", True) is None


async def test_purge_loop_runs_in_the_server(make_server: MakeServer) -> None:
    srv = await retention_server(make_server, keep_days=1)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create(NAMES)
    assert (await wallet.delete()).status == 200
    purge = srv.server.purge
    assert isinstance(purge, PurgeLoop)  # started by app.Server
    erasures = erasures_for(tenant_of(srv, "t1"), srv.services.store)
    await srv.services.store.tenant("t1", "erasures").update_one(
        {"_id": customer_id}, set={"shred_after": time.time() - 1})  # the period is over
    reports = await purge.run_once()
    assert [r.shredded for r in reports if r.tenant == "t1"] == [[customer_id]]
    assert await erasures.held() == []


async def test_cli_purge_show_held_and_key_status(make_server: MakeServer) -> None:
    """The commands as an operator runs them (a separate process on the same store)."""
    srv = await retention_server(make_server, keep_days=10)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create(NAMES)
    assert (await wallet.delete()).status == 200
    settings = srv.services.settings

    async def run(*argv: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kyc_host", *argv, "--storage-url", settings.storage_url,
            "--master-key-file", str(settings.master_key_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        return int(proc.returncode or 0), out.decode(), err.decode()

    code, out, _ = await run("purge", "--tenant", "t1", "--dry-run", "--json")
    assert code == 0
    assert json.loads(out)[0]["shredded"] == []  # held for 10 days: nothing due
    code, out, _ = await run("customer", "show-held", "--tenant", "t1", "--json")
    assert code == 0
    assert [d["id"] for d in json.loads(out)] == [customer_id]
    assert "Heldfirst" not in out  # the listing shows no values
    code, _, err = await run("customer", "legal-hold", "--tenant", "t1", "--customer",
                             "00000000-0000-4000-8000-000000000000", "on")
    assert code == 1
    assert "no customer" in err
    code, _, err = await run("purge", "--tenant", "nope")
    assert code == 2
    code, out, _ = await run("keys", "status", "--tenant", "t1")
    assert code == 0
    status = json.loads(out)
    assert status["kek_versions"] == [1]
    assert "S" not in [v[:1] for v in map(str, status.values())]  # never a seed


async def test_a_record_written_back_after_its_erasure_goes_again_with_its_queue_rows(
        make_server: MakeServer) -> None:
    """A PUT that loaded the customer before its DELETE writes the record (and its review-
    queue rows) back after it. The purge job removes both again; the tenant's other customer
    and the same account's customer on the other tenant keep theirs."""
    srv = await retention_server(make_server)
    alice = Wallet(srv, "a.test", "t1")
    carol = Wallet(srv, "a.test", "t1")
    bob = Wallet(srv, "b.test", "t2", keypair=alice.keypair)
    alice_id = await alice.create(NAMES)
    carol_id = await carol.create(NAMES)
    bob_id = await bob.create(NAMES)
    store = srv.services.store
    customers, rows = store.tenant("t1", "customers"), store.tenant("t1", "review_queue")
    [record] = await customers.find({"_id": alice_id})
    alice_rows = await rows.find({"customer_id": alice_id})
    assert alice_rows
    assert (await alice.delete()).status == 200
    assert await rows.find({"customer_id": alice_id}) == []
    # The racing PUT's save lands now: its record, then its rows.
    await customers.insert_one(record)
    for row in alice_rows:
        await rows.insert_one(row)

    report = await purge_tenant(srv.services, tenant_of(srv, "t1"))
    assert report.resurrected == [alice_id]
    assert await customers.find_one({"_id": alice_id}) is None
    assert await rows.find({"customer_id": alice_id}) == []
    assert [r["customer_id"] for r in await rows.find({})] == [carol_id]
    assert (await purge_tenant(srv.services, tenant_of(srv, "t2"))).resurrected == []
    assert [r["customer_id"] for r in await store.tenant("t2", "review_queue").find({})] \
        == [bob_id]
    assert (await bob.get(id=bob_id)).status == 200
