"""The tenant admins' review API (issue 7 §3) over real HTTP, on both backends: the issue's
"Done when" flow (without callback delivery), decisions and their validation, downloads,
identities, erasure, and isolation between customers."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from mgmt_helpers import (  # noqa: F401 - fixtures
    Api,
    Mgmt,
    OpenApiChecker,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)
from review_helpers import ALICE, BOB, KycWallet, png
from stellar_sdk import Keypair

from conftest import MakeServer, make_tenant_doc
from kyc_host.management import commands

BASE = "/api/v1/tenants/t1/customers"
ACME = {
    "individual": {"required": ["first_name", "last_name", "email_address"],
                   "optional": ["mobile_number", "photo_id_front", "birth_date"]},
}


def _no_values(body: Any, *values: str) -> None:
    text = json.dumps(body)
    for value in values:
        assert value not in text, value


async def _audit(api: Api, token: str, tenant: str = "t1") -> list[dict[str, Any]]:
    reply = await api.call("GET", f"/api/v1/tenants/{tenant}/audit?limit=200", token=token)
    assert reply.status == 200
    entries: list[dict[str, Any]] = reply.body["entries"]
    return entries


async def test_done_when_flow(make_server: MakeServer, checker: OpenApiChecker,
                              capsys: pytest.CaptureFixture[str]) -> None:
    """Operator token from the CLI command, tenant onboarded through the API, a tenant-admin
    token, two wallets submit KYC, the queue, ACCEPTED for one and NEEDS_INFO with a field
    error for the other, each wallet sees its result, and the audit log shows it all."""
    srv = await make_server()
    api = Api(srv, checker)
    args = argparse.Namespace(operator=True, tenant=None, scopes=None, expires_in=None,
                              note="bootstrap", json=True)
    assert await commands.token_create(srv.services, args) == commands.OK
    operator = json.loads(capsys.readouterr().out)["token"]

    doc = make_tenant_doc("acme", ["kyc.acme.test"], customer_types=ACME)
    assert (await api.call("POST", "/api/v1/tenants", token=operator, body=doc)).status == 201
    assert (await srv.fetch("kyc.acme.test", "/.well-known/stellar.toml")).code == 200
    made = await api.call("POST", "/api/v1/tenants/acme/tokens", token=operator, body={
        "scopes": ["customers:read", "customers:review", "audit:read"], "note": "review"})
    assert made.status == 201
    admin = made.body["token"]

    alice = KycWallet(srv, "kyc.acme.test", "acme")
    bob = KycWallet(srv, "kyc.acme.test", "acme")
    photo = png(1)
    alice_id = await alice.put_with_photo(ALICE, photo)
    bob_id = await bob.put(BOB)
    assert (await alice.get())["status"] == (await bob.get())["status"] == "PROCESSING"

    base = "/api/v1/tenants/acme/customers"
    queue = await api.call("GET", f"{base}?status=PROCESSING", token=admin)
    assert queue.status == 200
    assert [c["id"] for c in queue.body["customers"]] == [bob_id, alice_id]  # newest first
    by_id = {c["id"]: c for c in queue.body["customers"]}
    assert by_id[alice_id]["provided_fields"] == sorted([*ALICE, "photo_id_front"])
    assert by_id[alice_id]["types"] == {"individual": "PROCESSING"}
    _no_values(queue.body, "Alice", "Liddell", "alice@example.com", "Bob")

    detail = await api.call("GET", f"{base}/{alice_id}", token=admin)
    assert detail.status == 200
    assert detail.body["fields"] == ALICE
    assert detail.body["identities"] == [{"account": alice.account, "memo": None,
                                          "memo_type": None}]
    [photo_file] = detail.body["files"]
    assert photo_file["field"] == "photo_id_front"
    assert photo_file["content_type"] == "image/png"
    download = await api.call("GET", f"{base}/{alice_id}/files/{photo_file['file_id']}",
                              token=admin)
    assert download.status == 200
    assert download.body == photo
    assert download.headers["Content-Type"] == "image/png"
    assert download.headers["Content-Disposition"] == (
        f'attachment; filename="{photo_file["file_id"]}.png"')
    assert download.headers["X-Content-Type-Options"] == "nosniff"
    assert download.headers["Cache-Control"] == "no-store"

    accepted = await api.call("POST", f"{base}/{alice_id}/decision", token=admin,
                              body={"type": "individual", "status": "ACCEPTED"})
    assert accepted.status == 200, accepted.body
    assert accepted.body["status"] == "ACCEPTED"
    assert accepted.body["previous_status"] == "PROCESSING"
    seen = await alice.get()
    assert seen["status"] == "ACCEPTED"
    assert {f["status"] for f in seen["provided_fields"].values()} == {"ACCEPTED"}

    more = await api.call("POST", f"{base}/{bob_id}/decision", token=admin, body={
        "status": "NEEDS_INFO", "message": "Please use a work email.",
        "fields": {"email_address": {"status": "REJECTED",
                                     "error": "Personal email domains are not accepted."}}})
    assert more.status == 200, more.body
    assert more.body["status"] == "NEEDS_INFO"
    seen = await bob.get()
    assert seen["status"] == "NEEDS_INFO"
    assert seen["message"] == "Please use a work email."
    assert seen["provided_fields"]["email_address"]["status"] == "REJECTED"
    assert seen["provided_fields"]["email_address"]["error"] == (
        "Personal email domains are not accepted.")
    assert seen["provided_fields"]["first_name"]["status"] == "PROCESSING"
    assert "email_address" in seen["fields"]  # asked for again, so the wallet resubmits
    await bob.put({"email_address": "bob@builder.example"})
    assert (await bob.get())["status"] == "PROCESSING"  # new data reopens review

    accepted_only = await api.call("GET", f"{base}?status=ACCEPTED", token=admin)
    assert [c["id"] for c in accepted_only.body["customers"]] == [alice_id]

    entries = await _audit(api, admin, "acme")
    steps = [(e["action"], e["customer_id"], e["fields"]) for e in entries]
    assert steps[:2] == [("tenant.create", "", []), ("token.create", "", [])]
    assert steps[2:] == [
        ("customer.read", alice_id, sorted([*ALICE, "photo_id_front"])),
        ("customer.file_read", alice_id, ["photo_id_front"]),
        ("customer.decision", alice_id, []),
        ("customer.decision", bob_id, ["email_address"]),
    ]
    decisions = [e["details"] for e in entries if e["action"] == "customer.decision"]
    assert decisions[0]["status"] == "ACCEPTED"
    assert decisions[1]["field_statuses"] == ["email_address:REJECTED"]
    assert {e["actor"] for e in entries[2:]} == {f"token:{made.body['prefix']}"}
    _no_values(entries, "Alice", "Liddell", "alice@example.com", "work email", "Personal")
    verify = await api.call("GET", "/api/v1/tenants/acme/audit/verify", token=admin)
    assert verify.body == {"ok": True, "entries": len(entries), "first_bad_seq": None,
                           "problem": None}


BAD_DECISIONS: list[tuple[dict[str, Any], str]] = [
    ({}, "status:"),
    ({"status": "APPROVED"}, "status:"),
    ({"status": ["ACCEPTED"]}, "status:"),
    ({"status": "REJECTED"}, "message:"),
    ({"status": "REJECTED", "message": ""}, "message:"),
    ({"status": "NEEDS_INFO"}, "message:"),
    ({"status": "ACCEPTED", "message": 5}, "message:"),
    ({"status": "ACCEPTED", "message": "x" * 1001}, "message:"),
    ({"status": "ACCEPTED", "type": "business"}, "type:"),
    ({"status": "ACCEPTED", "type": 7}, "type:"),
    ({"status": "ACCEPTED", "extra": 1}, "extra:"),
    ({"status": "ACCEPTED", "fields": []}, "fields:"),
    ({"status": "NEEDS_INFO", "fields": {"favorite_color": {"status": "REJECTED"}}},
     "fields.favorite_color:"),
    ({"status": "NEEDS_INFO", "fields": {"bank_account_number": {"status": "REJECTED"}}},
     "fields.bank_account_number:"),
    ({"status": "NEEDS_INFO", "fields": {"email_address": "REJECTED"}},
     "fields.email_address:"),
    ({"status": "NEEDS_INFO", "fields": {"email_address": {"status": "MAYBE"}}},
     "fields.email_address.status:"),
    ({"status": "NEEDS_INFO", "fields": {"email_address": {"status": "VERIFICATION_REQUIRED"}}},
     "fields.email_address.status:"),
    ({"status": "PROCESSING", "fields": {"email_address": {"status": "ACCEPTED", "error": "x"}}},
     "fields.email_address.error:"),
    ({"status": "ACCEPTED", "fields": {"email_address": {"status": "REJECTED"}}},
     "fields.email_address.status:"),
    ({"status": "NEEDS_INFO", "fields": {"email_address": {"status": "REJECTED", "why": 1}}},
     "fields.email_address.why:"),
    ({"status": "NEEDS_INFO", "fields": {"last_name": {"status": "REJECTED"},
                                         "family_name": {"status": "REJECTED"}}},
     "fields.family_name:"),
]


async def test_bad_decisions_are_400_naming_the_key_and_write_nothing(mgmt: Mgmt) -> None:
    wallet = KycWallet(mgmt.srv, "a.test", "t1")
    customer_id = await wallet.put(ALICE)
    before = await wallet.get()
    for body, key in BAD_DECISIONS:
        reply = await mgmt.api.call("POST", f"{BASE}/{customer_id}/decision", token=mgmt.t1,
                                    body=body)
        assert reply.status == 400, (body, reply.body)
        assert reply.error.startswith(key), (body, reply.error)
    for raw in (b"", b"[]", b"{", b"\"ACCEPTED\""):
        reply = await mgmt.api.call("POST", f"{BASE}/{customer_id}/decision", token=mgmt.t1,
                                    raw=raw or None)
        assert reply.status == 400, raw

    # The customer's data does not allow these: 409 naming what is wrong.
    partial = KycWallet(mgmt.srv, "a.test", "t1")
    partial_id = await partial.put({"first_name": "Ann"})
    reply = await mgmt.api.call("POST", f"{BASE}/{partial_id}/decision", token=mgmt.t1,
                                body={"status": "ACCEPTED"})
    assert reply.status == 409
    assert "last_name" in reply.error
    assert "email_address" in reply.error
    reply = await mgmt.api.call("POST", f"{BASE}/{customer_id}/decision", token=mgmt.t1, body={
        "status": "NEEDS_INFO", "fields": {"mobile_number": {"status": "REJECTED"}}})
    assert reply.status == 409
    assert reply.error.startswith("fields.mobile_number:")

    assert await wallet.get() == before
    assert (await partial.get())["status"] == "NEEDS_INFO"
    entries = await _audit(mgmt.api, mgmt.t1)
    assert not [e for e in entries if e["action"] == "customer.decision"]


async def test_rejected_is_final_and_aliases_use_the_tenant_name(mgmt: Mgmt) -> None:
    wallet = KycWallet(mgmt.srv, "a.test", "t1")
    customer_id = await wallet.put(ALICE)
    reply = await mgmt.api.call("POST", f"{BASE}/{customer_id}/decision", token=mgmt.t1, body={
        "status": "NEEDS_INFO", "fields": {"family_name": {"status": "REJECTED",
                                                           "error": "Does not match the ID."}}})
    assert reply.status == 200
    assert reply.body["decision"]["fields"] == {
        "last_name": {"status": "REJECTED", "error": "Does not match the ID."}}
    seen = await wallet.get()
    assert seen["provided_fields"]["last_name"]["error"] == "Does not match the ID."
    assert "last_name" in seen["fields"]

    reply = await mgmt.api.call("POST", f"{BASE}/{customer_id}/decision", token=mgmt.t1, body={
        "status": "REJECTED", "message": "We cannot serve this customer."})
    assert reply.status == 200
    await wallet.put({"first_name": "Alicia"})  # new data does not reopen a final REJECTED
    seen = await wallet.get()
    assert seen["status"] == "REJECTED"
    assert seen["message"] == "We cannot serve this customer."
    assert "fields" not in seen or "last_name" not in seen["fields"]
    detail = await mgmt.api.call("GET", f"{BASE}/{customer_id}", token=mgmt.t1)
    assert detail.body["types"]["individual"]["status"] == "REJECTED"
    assert detail.body["fields"]["first_name"] == "Alicia"


async def test_other_customers_and_their_files_are_not_found(mgmt: Mgmt) -> None:
    alice = KycWallet(mgmt.srv, "a.test", "t1")
    bob = KycWallet(mgmt.srv, "a.test", "t1")
    alice_id = await alice.put_with_photo(ALICE, png(2))
    bob_id = await bob.put_with_photo(BOB, png(3))
    alice_file = (await mgmt.api.call("GET", f"{BASE}/{alice_id}", token=mgmt.t1)
                  ).body["files"][0]["file_id"]
    t2_wallet = KycWallet(mgmt.srv, "b.test", "t2")
    t2_id = await t2_wallet.put_with_photo(ALICE, png(4))

    not_found = [
        f"{BASE}/{bob_id}/files/{alice_file}",  # another customer's file
        f"{BASE}/{t2_id}",  # another tenant's customer, through this tenant's path
        f"{BASE}/{t2_id}/files/{alice_file}",
        f"{BASE}/00000000-0000-4000-8000-000000000000",
        f"{BASE}/not-a-uuid",
        f"{BASE}/{alice_id}/files/00000000-0000-4000-8000-000000000000",
        f"{BASE}/{alice_id}/files/..%2f..%2fetc",
    ]
    for path in not_found:
        reply = await mgmt.api.call("GET", path, token=mgmt.t1)
        assert reply.status == 404, path
        assert reply.error in ("customer not found", "file not found")
    for method, suffix, body in (("POST", "/decision", {"status": "ACCEPTED"}),
                                 ("POST", "/identities", {"account": alice.account}),
                                 ("DELETE", "", None)):
        reply = await mgmt.api.call(method, f"{BASE}/{t2_id}{suffix}", token=mgmt.operator,
                                    body=body)
        assert reply.status == 404, (method, suffix)
    assert (await t2_wallet.get())["status"] == "PROCESSING"
    reads = [e for e in await _audit(mgmt.api, mgmt.t1) if e["action"].startswith("customer.")]
    assert [e["customer_id"] for e in reads] == [alice_id]  # only the one successful read


async def test_scopes_of_the_review_routes(mgmt: Mgmt) -> None:
    wallet = KycWallet(mgmt.srv, "a.test", "t1")
    customer_id = await wallet.put(ALICE)
    reader = await mgmt.make_token("t1", ["customers:read"])
    reviewer = await mgmt.make_token("t1", ["customers:review"])
    assert (await mgmt.api.call("GET", BASE, token=reader)).status == 200
    assert (await mgmt.api.call("GET", f"{BASE}/{customer_id}", token=reader)).status == 200
    for token, method, suffix, body in (
            (reader, "POST", "/decision", {"status": "ACCEPTED"}),
            (reader, "DELETE", "", None),
            (reviewer, "GET", "", None),
            (reviewer, "DELETE", "", None)):
        reply = await mgmt.api.call(method, f"{BASE}/{customer_id}{suffix}", token=token,
                                    body=body)
        assert reply.status == 403, (method, suffix)
    reply = await mgmt.api.call("POST", f"{BASE}/{customer_id}/decision", token=reviewer,
                                body={"status": "ACCEPTED"})
    assert reply.status == 200
    assert (await wallet.get())["status"] == "ACCEPTED"


async def test_link_and_unlink_identities(mgmt: Mgmt) -> None:
    alice = KycWallet(mgmt.srv, "a.test", "t1")
    bob = KycWallet(mgmt.srv, "a.test", "t1")
    alice_id = await alice.put(ALICE)
    bob_id = await bob.put(BOB)
    second = KycWallet(mgmt.srv, "a.test", "t1", memo=42)  # a memo user of another account
    path = f"{BASE}/{alice_id}/identities"

    reply = await mgmt.api.call("POST", path, token=mgmt.t1,
                                body={"account": second.account, "memo": "0042"})
    assert reply.status == 201, reply.body
    assert {"account": second.account, "memo": "42", "memo_type": "id"} in reply.body[
        "identities"]
    assert (await second.get())["id"] == alice_id  # the linked identity reaches Alice now
    again = await mgmt.api.call("POST", path, token=mgmt.t1,
                                body={"account": second.account, "memo": "42"})
    assert again.status == 200
    taken = await mgmt.api.call("POST", path, token=mgmt.t1, body={"account": bob.account})
    assert taken.status == 409
    for body, key in (({}, "account:"), ({"account": "GBAD"}, "account:"),
                      ({"account": alice.account, "memo": "x", "memo_type": "id"}, "memo"),
                      ({"account": alice.account, "memo_type": "nope"}, "memo_type"),
                      ({"account": alice.account, "mmo": "1"}, "mmo:"),
                      ({"account": 5}, "account:")):
        reply = await mgmt.api.call("POST", path, token=mgmt.t1, body=body)
        assert reply.status == 400, body
        assert reply.error.startswith(key), (body, reply.error)

    foreign = await mgmt.api.call("DELETE", path, token=mgmt.t1, body={"account": bob.account})
    assert foreign.status == 404
    unlinked = await mgmt.api.call("DELETE", path, token=mgmt.t1,
                                   body={"account": alice.account})
    assert unlinked.status == 200
    assert unlinked.body["identities"] == [{"account": second.account, "memo": "42",
                                            "memo_type": "id"}]
    assert "id" not in await alice.get()  # Alice's account no longer reaches the customer
    last = await mgmt.api.call("DELETE", path, token=mgmt.t1,
                               body={"account": second.account, "memo": "42"})
    assert last.status == 409
    assert (await second.get())["id"] == alice_id
    assert (await bob.get())["id"] == bob_id
    actions = [e["action"] for e in await _audit(mgmt.api, mgmt.t1)]
    assert actions.count("customer.identity_link") == 1
    assert actions.count("customer.identity_unlink") == 1


async def test_admin_delete_is_the_wallet_erasure(mgmt: Mgmt) -> None:
    wallet = KycWallet(mgmt.srv, "a.test", "t1")
    customer_id = await wallet.put_with_photo(ALICE, png(5))
    other = KycWallet(mgmt.srv, "a.test", "t1")
    other_id = await other.put(BOB)
    store = mgmt.srv.services.store
    assert await store.tenant("t1", "files").count({"customer_id": customer_id}) == 1

    reply = await mgmt.api.call("DELETE", f"{BASE}/{customer_id}", token=mgmt.t1)
    assert reply.status == 204
    assert "id" not in await wallet.get()
    assert (await mgmt.api.call("GET", f"{BASE}/{customer_id}", token=mgmt.t1)).status == 404
    assert (await mgmt.api.call("DELETE", f"{BASE}/{customer_id}", token=mgmt.t1)).status == 404
    for name in ("customers", "identities", "files", "review_queue"):
        assert await store.tenant("t1", name).count({"customer_id": customer_id}) == 0, name
    assert await store.tenant("t1", "customers").count({"_id": customer_id}) == 0
    assert await store.tenant("t1", "blobs").count({}) == 0
    listed = await mgmt.api.call("GET", BASE, token=mgmt.t1)
    assert [c["id"] for c in listed.body["customers"]] == [other_id]
    # One proof-of-deletion entry (the shared erasure's), naming the admin token as actor.
    prefix = mgmt.t1.split("_")[1]
    [entry] = [e for e in await _audit(mgmt.api, mgmt.t1) if e["customer_id"] == customer_id
               and e["action"] in ("customer.erase", "customer.hold")]
    assert entry["actor"] == f"token:{prefix}"
    # The wallet's own DELETE goes through the same erasure.
    assert (await other.call("DELETE", f"/kyc/customer/{other.account}"))[0] == 200
    assert await store.tenant("t1", "review_queue").count({}) == 0


async def test_download_of_an_unknown_stored_type_is_opaque(mgmt: Mgmt) -> None:
    """Defence in depth: a stored content type outside the safe list (an old record, a
    plugin) is served as application/octet-stream with a .bin name."""
    wallet = KycWallet(mgmt.srv, "a.test", "t1")
    customer_id = await wallet.put_with_photo(ALICE, png(6))
    files = mgmt.srv.services.store.tenant("t1", "files")
    [doc] = await files.find({"customer_id": customer_id})
    await files.update_one({"_id": doc["_id"]}, set={"content_type": "text/html"})
    reply = await mgmt.api.call("GET", f"{BASE}/{customer_id}/files/{doc['_id']}",
                                token=mgmt.t1)
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/octet-stream"
    assert reply.headers["Content-Disposition"] == f'attachment; filename="{doc["_id"]}.bin"'


async def test_list_filters(mgmt: Mgmt) -> None:
    shared = Keypair.random()
    memo1 = KycWallet(mgmt.srv, "a.test", "t1", keypair=shared, memo=1)
    memo2 = KycWallet(mgmt.srv, "a.test", "t1", keypair=shared, memo=2)
    plain = KycWallet(mgmt.srv, "a.test", "t1")
    partial = KycWallet(mgmt.srv, "a.test", "t1")
    id1, id2 = await memo1.put(ALICE), await memo2.put(BOB)
    id3 = await plain.put(ALICE)
    id4 = await partial.put({"first_name": "Ann"})
    await mgmt.api.call("POST", f"{BASE}/{id3}/decision", token=mgmt.t1,
                        body={"status": "ACCEPTED"})

    async def ids(query: str) -> list[str]:
        reply = await mgmt.api.call("GET", f"{BASE}?{query}", token=mgmt.t1)
        assert reply.status == 200, (query, reply.body)
        return [c["id"] for c in reply.body["customers"]]

    assert await ids("") == [id3, id4, id2, id1]  # id3 was updated last (its decision)
    assert await ids("order=asc") == [id1, id2, id4, id3]
    assert await ids("status=PROCESSING") == [id2, id1]
    assert await ids("status=NEEDS_INFO&type=individual") == [id4]
    assert await ids("status=ACCEPTED") == [id3]
    assert await ids(f"account={shared.public_key}") == [id2, id1]
    assert await ids(f"account={shared.public_key}&memo=2") == [id2]
    assert await ids(f"account={shared.public_key}&memo=0002&memo_type=id") == [id2]
    assert await ids(f"account={shared.public_key}&memo=3") == []
    assert await ids(f"account={Keypair.random().public_key}") == []
    detail = await mgmt.api.call("GET", f"{BASE}/{id4}", token=mgmt.t1)
    since = detail.body["updated_at"]
    assert await ids(f"updated_since={since}") == [id3, id4]
    assert await ids(f"updated_since={since}&order=asc") == [id4, id3]
    assert await ids("updated_since=2999-01-01T00:00:00Z") == []
    for query, key in (("status=APPROVED", "status:"), ("type=business", "type:"),
                       ("account=GBAD", "account:"), ("memo=1", "memo:"),
                       ("updated_since=yesterday", "updated_since:"), ("order=up", "order:"),
                       ("cursor=zz", "cursor:"), ("limit=x", "limit"),
                       ("status=ACCEPTED&status=REJECTED", "query parameter status")):
        reply = await mgmt.api.call("GET", f"{BASE}?{query}", token=mgmt.t1)
        assert reply.status == 400, query
        assert reply.error.startswith(key), (query, reply.error)
    page = await mgmt.api.call("GET", f"{BASE}?limit=1&order=asc", token=mgmt.t1)
    cursor = page.body["next_cursor"]
    assert cursor
    wrong_order = await mgmt.api.call("GET", f"{BASE}?cursor={cursor}", token=mgmt.t1)
    assert wrong_order.status == 400
