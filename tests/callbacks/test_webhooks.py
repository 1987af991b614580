"""Tenant webhooks (HMAC-signed, secrets rotated with an overlap), dead letters, and what
operators and tenant admins see and replay (management API and CLI)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest

from callbacks.cb_helpers import (
    FAST,
    Receiver,
    cb_doc,
    events_of,
    eventually,
    signed_at,
)
from conftest import MakeServer, RunningServer
from kyc_host import audit
from kyc_host.callbacks.signing import verify_webhook
from kyc_host.management.auth import create_token
from kyc_host.management.openapi import management_document
from kyc_host.settings import PlatformSettings
from management.mgmt_helpers import Api, OpenApiChecker
from sep12.sep12_helpers import Wallet

CURRENT = "wh-secret-current-0123456789abcdef"
PREVIOUS = "wh-secret-previous-0123456789abcdef"
PII = ("Zqwebhookfirst", "Xkwebhooklast", "zq.webhook@canary-example.org")


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBTEST_WEBHOOK_SECRET", CURRENT)
    monkeypatch.setenv("CBTEST_WEBHOOK_SECRET_OLD", PREVIOUS)


def webhook_doc(tenant_id: str, host: str, receiver: Receiver) -> dict[str, Any]:
    return cb_doc(tenant_id, [host], callbacks={"max_attempts": 8}, webhooks=[
        {"url": receiver.url(f"/{tenant_id}/events"),
         "events": ["customer.submitted", "customer.status_changed", "customer.deleted",
                    "callback.dead_lettered"],
         "secret_env": "CBTEST_WEBHOOK_SECRET",
         "previous_secret_env": "CBTEST_WEBHOOK_SECRET_OLD"},
        {"url": receiver.url(f"/{tenant_id}/broken"), "events": ["customer.status_changed"],
         "secret_env": "CBTEST_WEBHOOK_SECRET"},
    ])


async def setup(make_server: MakeServer, receiver: Receiver) -> RunningServer:
    srv = await make_server(webhook_doc("t1", "a.test", receiver),
                            webhook_doc("t2", "b.test", receiver), **FAST)
    for tenant_id in ("t1", "t2"):
        receiver.sink(f"/{tenant_id}/events", secret=CURRENT.encode())
        receiver.sink(f"/{tenant_id}/broken", secret=CURRENT.encode(), status=503)
    return srv


def types_of(receiver: Receiver, path: str) -> list[str]:
    return [h.json["type"] for h in receiver.sinks[path].delivered()]


async def test_webhooks_are_signed_with_both_secrets_and_carry_no_pii(
        make_server: MakeServer, receiver: Receiver) -> None:
    srv = await setup(make_server, receiver)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create({"first_name": PII[0]})
    reply = await wallet.put({"last_name": PII[1], "email_address": PII[2]})
    assert reply.status == 202
    sink = receiver.sinks["/t1/events"]
    await eventually(lambda: len(sink.delivered()) == 3, what="three webhook events")
    assert types_of(receiver, "/t1/events") == [
        "customer.status_changed", "customer.status_changed", "customer.submitted"]
    statuses = [(h.json["data"].get("previous_status"), h.json["data"]["status"])
                for h in sink.delivered()]
    assert statuses[:2] == [(None, "NEEDS_INFO"), ("NEEDS_INFO", "PROCESSING")]
    for hit in sink.delivered():
        assert hit.json["tenant_id"] == "t1"
        assert hit.json["data"]["customer_id"] == customer_id
        assert hit.json["id"] == hit.event_id
        assert not any(p.encode() in hit.body for p in PII)
        assert wallet.account.encode() not in hit.body
        header = hit.headers["Webhook-Signature"]
        assert header.count("v1=") == 2  # current and previous secret during a rotation
        assert verify_webhook(header, hit.body, CURRENT.encode())
        assert verify_webhook(header, hit.body, PREVIOUS.encode())
        assert not verify_webhook(header, hit.body, b"some-other-tenant-secret-000000")
        assert not verify_webhook(header, hit.body + b" ", CURRENT.encode())
        # t is the sender's clock at the attempt: within 5 s of receipt (reliability plan).
        assert hit.headers["Webhook-Timestamp"] == str(signed_at(hit))
        assert 0 <= hit.received_at - signed_at(hit) <= 5
    # The other tenant's endpoint got nothing; erasure is announced, without data.
    assert receiver.sinks["/t2/events"].hits == []
    assert (await wallet.delete()).status == 200
    await eventually(lambda: "customer.deleted" in types_of(receiver, "/t1/events"),
                     what="customer.deleted")
    deleted = sink.delivered()[-1].json
    assert deleted["data"] == {"customer_id": customer_id}


async def test_dead_letter_notification_and_replay_through_the_api(
        make_server: MakeServer, receiver: Receiver) -> None:
    srv = await setup(make_server, receiver)
    api = Api(srv, OpenApiChecker(management_document()))
    store = srv.services.store
    t1_admin = (await create_token(store, tenant_id="t1", scopes=["callbacks:read",
                                                                   "callbacks:replay"],
                                   created_by="test")).token
    t1_reader = (await create_token(store, tenant_id="t1", scopes=["callbacks:read"],
                                    created_by="test")).token
    t2_admin = (await create_token(store, tenant_id="t2", scopes=["callbacks:read",
                                                                   "callbacks:replay"],
                                   created_by="test")).token
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create({"first_name": "Ann"})
    broken = receiver.sinks["/t1/broken"]
    # 8 attempts (the tenant's max_attempts) with test backoff, then dead-lettered, and the
    # anchor's other endpoint hears about it.
    await eventually(lambda: "callback.dead_lettered" in types_of(receiver, "/t1/events"),
                     what="the dead-letter notice")
    assert len(broken.hits) == 8
    notice = receiver.sinks["/t1/events"].delivered()[-1].json["data"]
    [dead] = await events_of(srv, "t1", state="dead")
    assert notice == {"event_id": dead["_id"], "event_type": "customer.status_changed",
                      "customer_id": customer_id, "attempts": 8,
                      "last_error": "receiver answered 503"}
    await eventually(lambda: srv.services.callback_metrics.dead_lettered == 1)

    base = "/api/v1/tenants/t1/callbacks"
    listed = await api.call("GET", base + "?state=dead", token=t1_admin)
    assert listed.status == 200
    assert [e["id"] for e in listed.body["events"]] == [dead["_id"]]
    assert listed.body["events"][0]["attempts"] == 8
    assert listed.body["events"][0]["endpoint"] == receiver.url("/t1/broken")
    page = await api.call("GET", base + "?limit=1", token=t1_admin)
    assert len(page.body["events"]) == 1
    assert page.body["next_cursor"] is not None
    rest = await api.call("GET", base + f"?limit=200&cursor={page.body['next_cursor']}",
                          token=t1_admin)
    assert page.body["events"][0]["id"] not in [e["id"] for e in rest.body["events"]]
    # Other tenants' tokens, missing scopes, bad input: refused, nothing changes.
    assert (await api.call("GET", base, token=t2_admin)).status == 404
    path = f"{base}/{dead['_id']}/replay"
    assert (await api.call("POST", path, token=t2_admin)).status == 404
    assert (await api.call("POST", path, token=t1_reader)).status == 403
    assert (await api.call("GET", base + "?state=lost", token=t1_admin)).status == 400
    assert (await api.call("GET", base + "?cursor=abc", token=t1_admin)).status == 400
    assert (await api.call("POST", f"{base}/{'0' * 32}/replay", token=t1_admin)).status == 404
    assert (await api.call("POST", f"{base}/nope/replay", token=t1_admin)).status == 404
    t2_path = "/api/v1/tenants/t2/callbacks/" + dead["_id"] + "/replay"
    assert (await api.call("POST", t2_path, token=t2_admin)).status == 404
    delivered = (await events_of(srv, "t1", state="delivered"))[0]
    conflict = await api.call("POST", f"{base}/{delivered['_id']}/replay", token=t1_admin)
    assert conflict.status == 409

    broken.status = 200
    replayed = await api.call("POST", path, token=t1_admin)
    assert replayed.status == 200
    assert replayed.body["state"] == "pending"
    assert replayed.body["attempts"] == 0
    await eventually(lambda: len(broken.delivered()) == 1, what="the replayed delivery")
    assert broken.delivered()[0].event_id == dead["_id"]
    entries, _ = await audit.entries(store, "t1", action="callback.replay", customer_id=None,
                                     since=None, after=0, limit=10)
    assert [e["details"]["event_id"] for e in entries] == [dead["_id"]]


async def test_cli_lists_and_replays(make_server: MakeServer, receiver: Receiver,
                                    settings: PlatformSettings) -> None:
    srv = await setup(make_server, receiver)
    wallet = Wallet(srv, "b.test", "t2")
    await wallet.create({"first_name": "Ann"})
    await eventually(lambda: len(receiver.sinks["/t2/broken"].hits) == 8, what="dead letter")

    async def dead() -> bool:
        return len(await events_of(srv, "t2", state="dead")) == 1

    await eventually(dead)
    [event] = await events_of(srv, "t2", state="dead")
    common = ["--storage-url", settings.storage_url, "--master-key-file",
              str(settings.master_key_file), "--dev"]

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kyc_host", "callbacks", *args, *common],
                              capture_output=True, text=True, timeout=60, check=False)

    listed = await asyncio.to_thread(cli, "list", "--tenant", "t2", "--state", "dead", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)] == [event["_id"]]
    text = await asyncio.to_thread(cli, "list", "--tenant", "t2")
    assert event["_id"] in text.stdout
    assert "receiver answered 503" in text.stdout
    unknown = await asyncio.to_thread(cli, "list", "--tenant", "nobody")
    assert unknown.returncode == 2
    receiver.sinks["/t2/broken"].status = 200
    other = await asyncio.to_thread(cli, "replay", "--tenant", "t1", event["_id"])
    assert other.returncode == 1  # another tenant's event id is simply not found
    done = await asyncio.to_thread(cli, "replay", "--tenant", "t2", event["_id"])
    assert done.returncode == 0, done.stderr
    await eventually(lambda: len(receiver.sinks["/t2/broken"].delivered()) == 1,
                     what="the replayed delivery")
    again = await asyncio.to_thread(cli, "replay", "--tenant", "t2", event["_id"])
    assert again.returncode == 1
    assert "only dead or disabled" in again.stderr
    entries, _ = await audit.entries(srv.services.store, "t2", action="callback.replay",
                                     customer_id=None, since=None, after=0, limit=10)
    assert [(e["actor"], e["details"]["event_id"]) for e in entries] == [("cli",
                                                                          event["_id"])]


async def test_missing_secret_is_retried_not_sent_unsigned(
        make_server: MakeServer, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CBTEST_WEBHOOK_SECRET")
    srv = await setup(make_server, receiver)
    wallet = Wallet(srv, "a.test", "t1")
    await wallet.create({"first_name": "Ann"})

    async def tried() -> bool:
        events = await events_of(srv, "t1", type="customer.submitted")
        events += await events_of(srv, "t1", type="customer.status_changed")
        return bool(events) and all(e["attempt"] >= 2 for e in events)

    await eventually(tried, what="attempts")
    events = await events_of(srv, "t1", type="customer.status_changed")
    assert all("CBTEST_WEBHOOK_SECRET is not set" in e["last_error"] for e in events)
    assert receiver.sinks["/t1/events"].hits == []
    monkeypatch.setenv("CBTEST_WEBHOOK_SECRET", CURRENT)
    await eventually(lambda: len(receiver.sinks["/t1/events"].delivered()) == 1)
