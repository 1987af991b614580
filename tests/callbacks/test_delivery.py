"""Delivery guarantees: crashes, several processes, hanging receivers, private addresses.

Two "processes" here are two complete servers (each with its own store client, registry and
worker) on one store, as ``make_server`` builds them; the real ``kill -9`` of a real
``kyc-host serve`` process is in test_kill9.py.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from callbacks.cb_helpers import (
    ALICE,
    FAST,
    Receiver,
    cb_doc,
    complete,
    customer_with_callback,
    decide,
    events_of,
    eventually,
    signing_key,
)
from conftest import MakeServer, RunningServer
from kyc_host.callbacks.outbox import OutboxObserver
from kyc_host.callbacks.worker import PER_TENANT
from kyc_host.crypto.master import write_new_key_file
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.sep.sep12_types import CustomerStatus
from kyc_host.settings import PlatformSettings
from sep12.sep12_helpers import Wallet, tenant_of


def crash(srv: RunningServer) -> None:
    """As close to ``kill -9`` as one process gets: the worker dies mid-attempt, keeping its
    leases and recording nothing; the server is never drained."""
    worker = srv.server.callbacks
    assert worker is not None
    for task in [worker._main, *worker._drains.values()]:
        if task is not None:
            task.cancel()


async def test_events_pending_at_a_crash_are_all_delivered_after_restart(
        make_server: MakeServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    first = await make_server(cb_doc("t1", ["a.test"]), cb_doc("t2", ["b.test"]), **FAST)
    sinks = {t: receiver.sink(f"/{t}", public_key=signing_key(first, t), status=503,
                              delay=0.2) for t in ("t1", "t2")}
    wallets = [(t, Wallet(first, host, t)) for t, host in
               (("t1", "a.test"),) * 5 + (("t2", "b.test"),) * 3]
    customers = [(t, w, await customer_with_callback(w, receiver.url(f"/{t}")))
                 for t, w in wallets]
    for _, wallet, _ in customers:
        await complete(wallet)
    await eventually(lambda: sum(len(s.hits) for s in sinks.values()) >= 8,
                     what="first attempts")
    crash(first)
    # Two more changes are written while no relay runs (a crash between the record write
    # and the outbox insert): they exist only inside the customer records.
    noop = OutboxObserver.after_save

    async def no_relay(self: OutboxObserver, record: object) -> None:
        del self, record

    monkeypatch.setattr(OutboxObserver, "after_save", no_relay)
    for t, _, customer_id in customers[:2]:
        await decide(first, t, customer_id, CustomerStatus.ACCEPTED)
    monkeypatch.setattr(OutboxObserver, "after_save", noop)
    raw = first.services.store.tenant("t1", "customers")
    assert await raw.count({"has_pending_events": True}) == 2

    for sink in sinks.values():
        sink.status, sink.delay = 200, 0.0
    second = await make_server(**FAST)  # a new process on the same store
    expected = {(t, c): ["PROCESSING"] + (["ACCEPTED"] if i < 2 else [])
                for i, (t, _, c) in enumerate(customers)}

    def all_delivered() -> bool:
        got: dict[tuple[str, str], list[str]] = {}
        for t, sink in sinks.items():
            for hit in sink.delivered():
                got.setdefault((t, hit.json["id"]), []).append(hit.json["status"])
        return got == expected

    await eventually(all_delivered, what="every event after the restart")
    assert await raw.count({"has_pending_events": True}) == 0
    async def recorded() -> bool:
        states = {e["state"] for t in ("t1", "t2") for e in await events_of(second, t)}
        return states == {"delivered"}

    await eventually(recorded, what="every delivery to be recorded")
    for t in ("t1", "t2"):
        # Every delivery is signed with its own tenant's key (the sinks refused others).
        assert all(h.verified for h in sinks[t].hits)


async def test_two_processes_never_send_one_event_at_the_same_time(
        make_server: MakeServer, receiver: Receiver) -> None:
    # Leases long enough that none expires even on a loaded machine (FerretDB calls can take
    # seconds there): then any second POST of an event would be a claim bug, not a retry.
    settings = {**FAST, "callbacks_lease_seconds": 30.0}
    one = await make_server(cb_doc("t1", ["a.test"]), **settings)
    two = await make_server(**settings)
    sink = receiver.sink("/w", public_key=signing_key(one, "t1"), delay=0.05)
    wallets = [Wallet(srv, "a.test", "t1") for srv in (one, two) for _ in range(15)]
    for wallet in wallets:
        await customer_with_callback(wallet, receiver.url("/w"))
    await asyncio.gather(*(complete(w) for w in wallets))
    await eventually(lambda: len(set(sink.delivered_ids())) == 30, what="30 deliveries")
    await asyncio.sleep(0.5)
    assert sink.overlaps == 0
    # No lease expired (0.05 s answers, 30 s leases), so no event was sent twice at all.
    assert len(sink.hits) == 30
    counts = [s.services.callback_metrics.delivered for s in (one, two)]
    assert sum(counts) == 30


async def test_a_hanging_receiver_of_one_tenant_does_not_delay_another(
        make_server: MakeServer, receiver: Receiver) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), cb_doc("t2", ["b.test"]),
                            **{**FAST, "callbacks_attempt_timeout_seconds": 5.0})
    stuck = receiver.sink("/t1", public_key=signing_key(srv, "t1"), hang=True)
    healthy = receiver.sink("/t2", public_key=signing_key(srv, "t2"))
    t1_wallets = [Wallet(srv, "a.test", "t1") for _ in range(PER_TENANT + 2)]
    for wallet in t1_wallets:
        await customer_with_callback(wallet, receiver.url("/t1"))
    t2_wallet = Wallet(srv, "b.test", "t2")
    await customer_with_callback(t2_wallet, receiver.url("/t2"))
    for wallet in t1_wallets:
        await complete(wallet)
    await eventually(lambda: stuck.hanging == PER_TENANT, what="t1's attempts to hang")
    await complete(t2_wallet)
    await eventually(lambda: len(healthy.delivered()) == 1, what="t2's delivery")
    # t2 was served while every t1 attempt was still held: none of them has ended yet
    # (they end only at the 5 s attempt timeout).
    assert stuck.hits == []
    assert stuck.hanging == PER_TENANT
    # t1's attempts are cut at the timeout and retried later, never delivered.
    await eventually(lambda: len(stuck.hits) >= PER_TENANT, within=20, what="timeouts")

    async def timeout_recorded() -> bool:
        # The receiver sees the connection end before the worker has stored the attempt's
        # outcome (a store write of its own, slower on FerretDB): waited for, not assumed.
        events = await events_of(srv, "t1")
        return any(e["last_error"] == "no answer in time" for e in events)

    await eventually(timeout_recorded, what="a timed-out attempt recorded")
    events = await events_of(srv, "t1")
    assert {e["state"] for e in events} == {"pending"}


async def test_private_callback_urls_are_refused_outside_dev_mode(
        make_server: MakeServer, receiver: Receiver, settings: PlatformSettings) -> None:
    write_new_key_file(settings.master_key_file)
    srv = await make_server(cb_doc("t1", ["a.test"]), dev_mode=False, **FAST)
    sink = receiver.sink("/w")
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create({"first_name": "Alice"})
    port = receiver.port
    for url in (f"https://127.0.0.1:{port}/w", "https://10.0.0.7/w", "https://[::1]/w",
                f"https://localhost:{port}/w", "https://169.254.169.254/latest",
                "http://wallet.example/w", "https://2130706433/w"):
        reply = await wallet.call("PUT", "/kyc/customer/callback", json_body={"url": url})
        assert reply.status == 400, url
        assert reply.json["error"].startswith("url: "), reply.json
    reply = await wallet.call("PUT", "/kyc/customer/callback",
                              json_body={"url": "https://wallet.example/cb"})
    assert reply.status == 200  # a public name is accepted (its address is checked at delivery)

    # At delivery too: a URL that got into a record anyway (an IP literal, and a name that
    # resolves to loopback) is never contacted.
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    literal = await wallet.other(memo=1).create({"first_name": "Bob"})
    for cid, url in ((customer_id, f"https://127.0.0.1:{port}/w"),
                     (literal, f"https://localhost:{port}/w")):
        record = await service.customers.load(cid)
        assert record is not None
        record.callback_url, record.callback_set_at = url, time.time()
        await service.customers.save(record)
    await complete(wallet)
    await wallet.other(memo=1).put(ALICE)

    async def attempted() -> bool:
        events = await events_of(srv, "t1", kind="sep12")
        return len(events) == 2 and all(e["attempt"] >= 1 for e in events)

    await eventually(attempted, what="both attempts")
    by_customer = {e["customer_id"]: e for e in await events_of(srv, "t1", kind="sep12")}
    assert by_customer[customer_id]["state"] == "disabled"
    assert "non-public" in by_customer[customer_id]["last_error"]
    assert by_customer[literal]["state"] == "pending"  # DNS may change: retried, refused
    assert by_customer[literal]["last_error"] == "host resolves to a non-public address"
    assert sink.hits == []
