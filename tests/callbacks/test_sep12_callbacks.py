"""SEP-12 status callbacks (sep-digest §4.8) end to end: the real server, its worker, and a
real receiver that verifies every signature with the tenant's public SIGNING_KEY."""

from __future__ import annotations

import asyncio
import json

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
    signed_at,
    signing_key,
)
from conftest import MakeServer
from foundation.test_metrics import sample
from kyc_host.callbacks.signing import url_host, verify_sep12
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.sep.sep12_types import CustomerStatus
from sep12.sep12_helpers import Wallet, tenant_of


async def test_status_change_sends_one_signed_post_equal_to_get(
        make_server: MakeServer, receiver: Receiver) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), cb_doc("t2", ["b.test"]), **FAST)
    sink = receiver.sink("/w1", public_key=signing_key(srv, "t1"))
    other_sink = receiver.sink("/w2", public_key=signing_key(srv, "t2"))
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await customer_with_callback(wallet, receiver.url("/w1"))
    # Another customer of the same tenant, without a URL, and one of tenant 2 with its own.
    bystander = Wallet(srv, "a.test", "t1")
    await bystander.put(ALICE)
    t2_wallet = Wallet(srv, "b.test", "t2")
    t2_customer = await customer_with_callback(t2_wallet, receiver.url("/w2"))
    assert not sink.hits  # registering a URL is not a status change

    await complete(wallet)  # NEEDS_INFO -> PROCESSING
    await eventually(lambda: len(sink.delivered()) == 1, what="the callback")
    hit = sink.hits[0]
    get = await wallet.get()
    assert get.status == 200
    assert hit.body == get.body  # byte for byte what GET /customer answers
    assert hit.json == {**json.loads(get.body), "id": customer_id}
    assert hit.json["status"] == "PROCESSING"
    assert hit.headers["Content-Type"] == "application/json"
    assert hit.headers["X-Stellar-Signature"] == hit.headers["Signature"]
    # The signed t is the sender's clock at this attempt (reliability plan: skew <= 5 s),
    # never ahead of the receiver's (one host clock here; t is whole seconds, rounded down).
    assert 0 <= hit.received_at - signed_at(hit) <= 5
    url = receiver.url("/w1")
    assert verify_sep12(hit.headers["Signature"], url, hit.body, signing_key(srv, "t1"))
    assert not verify_sep12(hit.headers["Signature"], url, hit.body, signing_key(srv, "t2"))
    # The signed host is the URL's host:port; another host does not verify.
    assert url_host(url) == f"127.0.0.1:{receiver.port}"
    assert not verify_sep12(hit.headers["Signature"], "http://127.0.0.2:1/w1", hit.body,
                            signing_key(srv, "t1"))

    async def recorded() -> bool:
        return (await events_of(srv, "t1", customer_id=customer_id))[0]["state"] == "delivered"

    await eventually(recorded, what="the delivery to be recorded")
    [event] = await events_of(srv, "t1", customer_id=customer_id)
    assert hit.event_id == event["_id"]

    # Tenant 2's customer changes too: its own receiver path, signed with t2's key only.
    await complete(t2_wallet)
    await eventually(lambda: len(other_sink.delivered()) == 1, what="t2's callback")
    t2_hit = other_sink.hits[0]
    assert t2_hit.json["id"] == t2_customer
    assert not verify_sep12(t2_hit.headers["Signature"], receiver.url("/w2"), t2_hit.body,
                            signing_key(srv, "t1"))
    # Nothing more arrives: one event per change, none for the customer without a URL.
    await asyncio.sleep(0.5)
    assert len(sink.hits) == 1
    assert len(other_sink.hits) == 1
    assert await events_of(srv, "t1", kind="sep12") == [await srv.services.store.tenant(
        "t1", "outbox").find_one({"_id": event["_id"]})]


async def test_hundred_identical_puts_give_at_most_one_event(
        make_server: MakeServer, receiver: Receiver) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), **FAST)
    sink = receiver.sink("/w", public_key=signing_key(srv, "t1"))
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await customer_with_callback(wallet, receiver.url("/w"))
    for _ in range(100):
        assert (await wallet.put(ALICE)).status == 202
    # 20 concurrent identical PUTs with new data: one change, so still one more event.
    update = {**ALICE, "birth_date": "1990-01-02"}
    replies = await asyncio.gather(*(wallet.put(update) for _ in range(20)))
    assert {r.status for r in replies} == {202}
    await eventually(lambda: len(sink.delivered()) == 1, what="the callback")
    await asyncio.sleep(0.5)
    assert len(await events_of(srv, "t1", customer_id=customer_id)) == 1
    assert len(sink.hits) == 1


async def test_concurrent_status_changes_write_one_event(
        make_server: MakeServer, receiver: Receiver) -> None:
    """20 concurrent PUTs that each complete the customer make one change: one event."""
    srv = await make_server(cb_doc("t1", ["a.test"]), **FAST)
    receiver.sink("/w", public_key=signing_key(srv, "t1"))
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await customer_with_callback(wallet, receiver.url("/w"))
    replies = await asyncio.gather(*(wallet.put(ALICE) for _ in range(20)))
    assert {r.status for r in replies} == {202}
    events = await events_of(srv, "t1", customer_id=customer_id)
    assert len(events) == 1, [e["status"] for e in events]


async def test_decisions_arrive_in_order_and_final_status_ends_registration(
        make_server: MakeServer, receiver: Receiver) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), **FAST)
    sink = receiver.sink("/w", public_key=signing_key(srv, "t1"))
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await customer_with_callback(wallet, receiver.url("/w"))
    receiver.sink("/w", fail_first=3)  # the first attempts fail: order must still hold
    await complete(wallet)
    await decide(srv, "t1", customer_id, CustomerStatus.ACCEPTED)
    await eventually(lambda: len(sink.delivered()) == 2, what="both callbacks")
    assert [h.json["status"] for h in sink.delivered()] == ["PROCESSING", "ACCEPTED"]
    # SEP-12: after ACCEPTED the wallet must register again; the URL is forgotten.
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    await eventually(lambda: _no_url(service, customer_id), what="the URL to be cleared")
    await decide(srv, "t1", customer_id, CustomerStatus.REJECTED, "document expired")
    await asyncio.sleep(0.5)
    assert len(sink.hits) == 2 + 3
    # Registering again brings callbacks back.
    reply = await wallet.call("PUT", "/kyc/customer/callback",
                              json_body={"url": receiver.url("/w")})
    assert reply.status == 200
    await decide(srv, "t1", customer_id, CustomerStatus.ACCEPTED)
    await eventually(lambda: len(sink.delivered()) == 3, what="the third callback")
    assert sink.delivered()[-1].json["status"] == "ACCEPTED"


async def _no_url(service: object, customer_id: str) -> bool:
    from kyc_host.sep.sep12_service import Sep12Service

    assert isinstance(service, Sep12Service)
    return await service.customers.callback_url(customer_id) is None


async def test_receiver_down_then_up_is_delivered(make_server: MakeServer,
                                                  receiver: Receiver) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), **FAST)
    sink = receiver.sink("/w", public_key=signing_key(srv, "t1"), status=503, retry_after="0")
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await customer_with_callback(wallet, receiver.url("/w"))
    await complete(wallet)
    await eventually(lambda: len(sink.hits) >= 3, what="failed attempts")
    [event] = await events_of(srv, "t1", customer_id=customer_id)
    assert event["state"] == "pending"
    assert event["last_error"] == "receiver answered 503"
    sink.status = 200
    await eventually(lambda: len(sink.delivered()) == 1, what="delivery after recovery")
    assert {h.event_id for h in sink.hits} == {event["_id"]}  # every retry: same event id

    async def recorded() -> bool:
        return (await events_of(srv, "t1", customer_id=customer_id))[0]["state"] == "delivered"

    await eventually(recorded, what="the delivery to be recorded")
    [event] = await events_of(srv, "t1", customer_id=customer_id)
    assert event["attempt"] == len(sink.hits)
    metrics = srv.services.callback_metrics
    await eventually(lambda: metrics.delivered == 1, what="the metrics")
    assert metrics.retried == len(sink.hits) - 1
    # The same counts on the admin listener's /metrics, by tenant and outcome.
    text = (await srv.fetch("localhost", "/metrics", admin=True)).body.decode()
    assert sample(text, "kyc_callback_events_total", tenant="t1", outcome="delivered") == 1
    assert sample(text, "kyc_callback_events_total", tenant="t1",
                  outcome="retried") == len(sink.hits) - 1
    assert sample(text, "kyc_callback_delivery_seconds_count") == 1
    assert 'kyc_callback_events_pending{tenant="t1"}' in text

    async def none_pending() -> bool:
        text = (await srv.fetch("localhost", "/metrics", admin=True)).body.decode()
        return sample(text, "kyc_callback_events_pending", tenant="t1") == 0

    await eventually(none_pending, what="the pending gauge to drop")


async def test_410_disables_the_url(make_server: MakeServer, receiver: Receiver) -> None:
    srv = await make_server(cb_doc("t1", ["a.test"]), **FAST)
    sink = receiver.sink("/w", public_key=signing_key(srv, "t1"), status=410)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await customer_with_callback(wallet, receiver.url("/w"))
    await complete(wallet)
    await eventually(lambda: len(sink.hits) == 1, what="the attempt")
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    await eventually(lambda: _no_url(service, customer_id), what="the URL to be disabled")
    [event] = await events_of(srv, "t1", customer_id=customer_id)
    assert event["state"] == "disabled"
    assert event["last_status"] == 410
    # Later changes send nothing there.
    await decide(srv, "t1", customer_id, CustomerStatus.ACCEPTED)
    await asyncio.sleep(0.5)
    assert len(sink.hits) == 1
    assert len(await events_of(srv, "t1", customer_id=customer_id)) == 1


async def test_field_changes_only_when_the_tenant_opts_in(make_server: MakeServer,
                                                          receiver: Receiver) -> None:
    srv = await make_server(
        cb_doc("t1", ["a.test"]),
        cb_doc("t2", ["b.test"], callbacks={"notify_on_field_change": True}), **FAST)
    quiet = receiver.sink("/q", public_key=signing_key(srv, "t1"))
    chatty = receiver.sink("/c", public_key=signing_key(srv, "t2"))
    w1, w2 = Wallet(srv, "a.test", "t1"), Wallet(srv, "b.test", "t2")
    await customer_with_callback(w1, receiver.url("/q"))
    await customer_with_callback(w2, receiver.url("/c"))
    for wallet in (w1, w2):
        await complete(wallet)
    await eventually(lambda: len(quiet.delivered()) == 1 and len(chatty.delivered()) == 1)
    for wallet in (w1, w2):  # the status stays PROCESSING
        assert (await wallet.put({"birth_date": "1991-02-03"})).status == 202
    await eventually(lambda: len(chatty.delivered()) == 2, what="the field-change callback")
    assert chatty.delivered()[1].json["status"] == "PROCESSING"
    await asyncio.sleep(0.5)
    assert len(quiet.hits) == 1


async def test_default_url_per_wallet_domain(make_server: MakeServer,
                                             receiver: Receiver) -> None:
    """A tenant's default URL for a wallet (SEP-10 client_domain) receives callbacks of that
    wallet's customers who registered none; other wallets' customers get nothing."""
    srv = await make_server(cb_doc("t1", ["a.test"], callbacks={
        "default_url": [{"client_domain": "wallet.test", "url": receiver.url("/default")}]}),
        **FAST)
    sink = receiver.sink("/default", public_key=signing_key(srv, "t1"))
    from kyc_host.sep.sep10_tokens import issue_token

    tenant = tenant_of(srv, "t1")
    wallet = Wallet(srv, "a.test", "t1")
    wallet.token = issue_token(tenant, sub=wallet.sub, jti="j1", home_domain="a.test",
                               client_domain="wallet.test")
    plain = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create()
    await plain.create()
    await eventually(lambda: len(sink.delivered()) == 1, what="the default-URL callback")
    assert sink.delivered()[0].json["id"] == customer_id
    await asyncio.sleep(0.3)
    assert len(sink.hits) == 1
