"""SEP-12 black-box checks 13-25 of sep-digest §8, on two tenants with the demo plugin.

A wallet here is stellar-sdk keys plus plain HTTP; its SEP-10 token comes from the tenant's
real issuer. Callback *delivery* (parts of 22 and 25) belongs to the callbacks work; the
registration side of 22 is checked here.
"""

from __future__ import annotations

import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stellar_sdk import Keypair, MuxedAccount

from conftest import MakeServer
from kyc_host.sep import sep9
from kyc_host.sep.sep10_tokens import issue_token
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.sep.sep12_types import CustomerStatus, Decision
from sep12.sep12_helpers import ALICE, PNG, Reply, Wallet, png_of_size, tenant_of, two_kyc_tenants

FIELD_TYPES = {"string", "binary", "number", "date"}


def assert_error(reply: Reply, status: int) -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["Content-Type"].startswith("application/json")
    assert isinstance(reply.json["error"], str)
    assert reply.json["error"]


# --- 13: authentication on every SEP-12 endpoint ------------------------------------------


def _bad_tokens(wallet: Wallet, other_tenant: Wallet) -> dict[str, str | None]:
    tenant = wallet.tenant
    expired = issue_token(tenant, sub=wallet.sub, jti="x", home_domain=tenant.home_domains[0],
                          now=int(time.time()) - 4 * 3600)
    good_header = jwt.get_unverified_header(wallet.token)
    claims = jwt.decode(wallet.token, options={"verify_signature": False})
    forged = jwt.encode(claims, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"kid": good_header["kid"]})
    return {"none": None, "garbage": "not.a.jwt", "expired": expired, "wrong key": forged,
            "other tenant": other_tenant.token}


async def test_13_every_endpoint_requires_this_tenants_token(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    foreign = Wallet(srv, "b.test", "t2", keypair=wallet.keypair)
    calls = [("GET", "/kyc/customer"), ("PUT", "/kyc/customer"),
             ("PUT", "/kyc/customer/verification"), ("PUT", "/kyc/customer/callback"),
             ("DELETE", f"/kyc/customer/{wallet.account}"), ("GET", "/kyc/customer/files"),
             ("POST", "/kyc/customer/files")]
    for label, token in _bad_tokens(wallet, foreign).items():
        for method, path in calls:
            reply = await wallet.call(method, path, token=token, json_body={"first_name": "x"}
                                      if method != "GET" else None)
            assert reply.status == 401, (label, method, path, reply.body)
            assert_error(reply, 401)
            assert reply.headers["Access-Control-Allow-Origin"] == "*"
    assert (await wallet.get()).status == 200  # the right token still works


async def test_05_preflight_on_customer_endpoints(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    for path, method in (("/kyc/customer", "PUT"), (f"/kyc/customer/{wallet.account}",
                                                    "DELETE"), ("/kyc/customer/files", "POST")):
        reply = await wallet.call("OPTIONS", path, token=None, headers={
            "Origin": "https://wallet.example", "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert 200 <= reply.status < 300, (path, reply.status)
        assert reply.headers["Access-Control-Allow-Origin"] == "*"
        assert method in reply.headers["Access-Control-Allow-Methods"]
        allowed = reply.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed


# --- 14: a new customer --------------------------------------------------------------------


async def test_14_new_customer_needs_info_without_id(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    for query in ({"type": "individual"}, {"type": "business"}, {}):
        reply = await Wallet(srv, "a.test", "t1").get(**query)
        assert reply.status == 200
        body = reply.json
        assert body["status"] == "NEEDS_INFO"
        assert "id" not in body
        assert body["fields"]
        for name, spec in body["fields"].items():
            assert sep9.get(name) is not None, name
            assert spec["type"] in FIELD_TYPES
            assert spec["description"]
            assert isinstance(spec.get("optional", False), bool)
            assert isinstance(spec.get("choices", []), list)
    business = (await Wallet(srv, "a.test", "t1").get(type="business")).json["fields"]
    assert set(business) == {"organization.name", "organization.registration_number",
                             "organization.photo_incorporation_doc"}
    assert business["organization.photo_incorporation_doc"] == {
        "type": "binary", "description": sep9.description("organization.photo_incorporation_doc",
                                                          "en"), "optional": True}


# --- 15: create and read ----------------------------------------------------------------------


async def test_15_create_read_and_idempotent_put(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    reply = await wallet.put(ALICE)
    assert reply.status == 202
    assert reply.headers["Content-Type"].startswith("application/json")
    customer_id = reply.json["id"]
    assert isinstance(customer_id, str)
    assert uuid.UUID(customer_id).version == 4
    by_id = (await wallet.get(id=customer_id)).json
    assert by_id["id"] == customer_id
    assert by_id["status"] in ("ACCEPTED", "PROCESSING")
    assert set(by_id["provided_fields"]) == set(ALICE)
    assert (await wallet.get()).json["id"] == customer_id
    assert (await wallet.put(ALICE)).json == {"id": customer_id}
    assert (await wallet.put_form(ALICE)).json == {"id": customer_id}


async def test_15_missing_required_fields_are_exactly_the_fields(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    await wallet.put({"first_name": "Alice"})
    body = (await wallet.get()).json
    assert body["status"] == "NEEDS_INFO"
    required = {n for n, spec in body["fields"].items() if not spec.get("optional")}
    assert required == {"last_name", "email_address"}
    assert set(body["provided_fields"]) == {"first_name"}


# --- 16: multipart and binary fields -------------------------------------------------------


async def test_16_multipart_with_and_without_filename(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    for filename in ("passport.png", None):
        wallet = Wallet(srv, "a.test", "t1")
        parts: list[tuple[str, str | bytes, str | None]] = [
            (k, v, None) for k, v in ALICE.items()]
        parts.append(("photo_id_front", PNG, filename))
        reply = await wallet.put_multipart(parts)
        assert reply.status == 202, reply.body
        provided = (await wallet.get()).json["provided_fields"]
        assert provided["photo_id_front"]["type"] == "binary"
        files = (await wallet.files(customer_id=reply.json["id"])).json["files"]
        assert [(f["content_type"], f["size"]) for f in files] == [("image/png", len(PNG))]


# --- 17: identity mismatch --------------------------------------------------------------------


async def test_17_account_and_memo_must_match_the_token(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    plain = Wallet(srv, "a.test", "t1")
    other_g = Keypair.random().public_key
    assert_error(await plain.get(account=other_g), 403)
    assert_error(await plain.put({**ALICE, "account": other_g}), 403)
    memo1 = plain.other(memo=1)
    assert_error(await memo1.get(memo="2"), 403)
    assert_error(await memo1.put({**ALICE, "memo": "2"}), 403)
    muxed = plain.other(muxed_id=5)
    assert_error(await muxed.get(memo="6"), 403)
    other_m = MuxedAccount(other_g, 5).account_muxed
    assert_error(await muxed.get(account=other_m), 403)
    # M(G,5) with account=G is the same customer, and so is the M itself.
    customer_id = await muxed.create(account=plain.account)
    assert (await muxed.get(account=muxed.sub)).json["id"] == customer_id
    assert (await muxed.get(account=plain.account, memo="5")).json["id"] == customer_id


async def test_17_muxed_and_memo_tokens_are_one_principal(make_server: MakeServer) -> None:
    """Decision (reliability-plan A10): M(S,100) and S:100 are the same customer."""
    srv = await two_kyc_tenants(make_server)
    shared = Wallet(srv, "a.test", "t1")
    customer_id = await shared.other(muxed_id=100).create()
    assert (await shared.other(memo=100).get()).json["id"] == customer_id
    other = await shared.other(memo=200).create()
    assert (await shared.other(muxed_id=200).get()).json["id"] == other != customer_id


# --- 18: memos separate customers ------------------------------------------------------------


async def test_18_memos_separate_customers(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    owner = Wallet(srv, "a.test", "t1")
    one, two = owner.other(memo=1), owner.other(memo=2)
    id1, id2 = await one.create(), await two.create()
    assert id1 != id2
    by_memo = [await owner.create(memo=m, memo_type="id") for m in ("1", "2")]
    assert by_memo == [id1, id2]  # a bare-G token may address its memos (digest §4.3)
    assert await owner.create(memo="0002") == id2  # "0002" is the canonical 2
    assert await owner.create() not in (id1, id2)
    assert_error(await one.get(id=id2), 404)
    assert (await owner.get(id=id2)).json["id"] == id2


# --- 19: not found ------------------------------------------------------------------------------


async def test_19_unknown_and_foreign_ids_are_404(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    alice, bob = Wallet(srv, "a.test", "t1"), Wallet(srv, "a.test", "t1")
    alice_id = await alice.create()
    unknown = await bob.get(id=str(uuid.uuid4()))
    assert_error(unknown, 404)
    assert_error(await bob.put({**ALICE, "id": alice_id}), 404)
    foreign_tenant = Wallet(srv, "b.test", "t2", keypair=alice.keypair)
    assert_error(await foreign_tenant.get(id=alice_id), 404)
    assert (await bob.get(id=alice_id)).body == unknown.body


# --- 20: bad parameters ----------------------------------------------------------------------


async def test_20_bad_params_are_400(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    assert_error(await wallet.get(type="sep31-nope"), 400)
    assert_error(await wallet.get(transaction_id="x"), 400)
    assert (await wallet.get(type="individual", transaction_id="x")).status == 200
    reply = await wallet.put({**ALICE, "birth_date": "31/12/1990"})
    assert_error(reply, 400)
    assert "birth_date" in reply.json["error"]
    reply = await wallet.put({**ALICE, "address_country_code": "US"})
    assert_error(reply, 400)
    assert "address_country_code" in reply.json["error"]
    assert (await wallet.get()).json["status"] == "NEEDS_INFO"  # nothing was stored


# --- 21: verification codes --------------------------------------------------------------------


async def test_21_mobile_number_verification(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create({**ALICE, "mobile_number": "+14155552671"})
    body = (await wallet.get()).json
    assert body["provided_fields"]["mobile_number"]["status"] == "VERIFICATION_REQUIRED"
    assert body["status"] == "NEEDS_INFO"
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    code = await service.customers.verification_code(customer_id, "mobile_number")
    assert code is not None
    assert len(code) == 6
    wrong = "000000" if code != "000000" else "111111"
    assert_error(await wallet.put({"mobile_number_verification": wrong}), 400)
    reply = await wallet.put({"mobile_number_verification": code})
    assert reply.status == 202
    assert reply.json["id"] == customer_id
    body = (await wallet.get()).json
    assert body["provided_fields"]["mobile_number"]["status"] in ("ACCEPTED", "PROCESSING")
    assert body["status"] in ("ACCEPTED", "PROCESSING")


async def test_21_deprecated_verification_endpoint(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create({**ALICE, "mobile_number": "+14155552671"})
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    code = await service.customers.verification_code(customer_id, "mobile_number")
    stranger = Wallet(srv, "a.test", "t1")
    assert_error(await stranger.call("PUT", "/kyc/customer/verification", json_body={
        "id": customer_id, "mobile_number_verification": code}), 404)
    reply = await wallet.call("PUT", "/kyc/customer/verification", json_body={
        "id": customer_id, "mobile_number_verification": code})
    assert reply.status == 200
    assert reply.json["id"] == customer_id
    assert reply.json["provided_fields"]["mobile_number"]["status"] == "ACCEPTED"


async def test_21_codes_cannot_be_guessed_without_limit(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create({**ALICE, "mobile_number": "+14155552671"})
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    code = await service.customers.verification_code(customer_id, "mobile_number")
    assert code is not None
    wrong = "000000" if code != "000000" else "111111"
    for _ in range(5):
        assert_error(await wallet.put({"mobile_number_verification": wrong}), 400)
    refused = await wallet.put({"mobile_number_verification": code})
    assert_error(refused, 400)
    assert "new code" in refused.json["error"]
    assert (await wallet.put({"mobile_number": "+14155552671"})).status == 202
    fresh = await service.customers.verification_code(customer_id, "mobile_number")
    assert fresh is not None
    assert (await wallet.put({"mobile_number_verification": fresh})).status == 202


# --- 22: callback registration -------------------------------------------------------------------


async def test_22_callback_url_is_validated_and_stored(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    path = "/kyc/customer/callback"
    assert_error(await wallet.call("PUT", path, json_body={"url": "https://hook.test/cb"}), 404)
    customer_id = await wallet.create()
    reply = await wallet.call("PUT", path, json_body={"url": "https://hook.test/cb"})
    assert reply.status == 200, reply.body
    for bad in ("not-a-url", "ftp://hook.test/x", "https://user:pw@hook.test/",
                "https://hook.test/#frag", ""):
        assert_error(await wallet.call("PUT", path, json_body={"url": bad}), 400)
    other = Wallet(srv, "a.test", "t1")
    assert_error(await other.call("PUT", path, json_body={"url": "https://evil.test/",
                                                          "id": customer_id}), 404)
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    assert await service.customers.callback_url(customer_id) == "https://hook.test/cb"
    await wallet.call("PUT", path, form={"url": "https://hook.test/v2", "id": customer_id})
    assert await service.customers.callback_url(customer_id) == "https://hook.test/v2"


# --- 23: files ----------------------------------------------------------------------------------


async def test_23_files_endpoint(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    reply = await wallet.upload(png_of_size(51200))
    assert reply.status == 200, reply.body
    item = reply.json
    assert item["content_type"] == "image/png"
    assert item["size"] == 51200
    assert "customer_id" in item
    assert item["customer_id"] is None
    assert item["expires_at"].endswith("Z")
    listed = (await wallet.files(file_id=item["file_id"])).json
    assert listed == {"files": [item]}
    assert (await wallet.files(customer_id=str(uuid.uuid4()))).json == {"files": []}
    reply = await wallet.put({**ALICE, "photo_id_front_file_id": item["file_id"]})
    assert reply.status == 202
    customer_id = reply.json["id"]
    assert "photo_id_front" in (await wallet.get()).json["provided_fields"]
    attached = (await wallet.files(customer_id=customer_id)).json["files"]
    assert [(f["file_id"], f["customer_id"]) for f in attached] == [(item["file_id"],
                                                                     customer_id)]
    assert "expires_at" not in attached[0]
    stranger = Wallet(srv, "a.test", "t1")
    assert (await stranger.files(file_id=item["file_id"])).json == {"files": []}
    assert (await stranger.files(customer_id=customer_id)).json == {"files": []}
    theirs = (await stranger.upload(PNG)).json["file_id"]
    assert_error(await wallet.put({"photo_id_back_file_id": theirs}), 404)
    assert_error(await stranger.put({**ALICE, "photo_id_front_file_id": item["file_id"]}), 404)


async def test_23_a_file_the_record_names_is_listed_without_expiry_before_it_is_attached(
        make_server: MakeServer) -> None:
    """A PUT attaches its files only after writing the record that names them; one cut in
    between (store budget, failure, kill -9) leaves them expiring until the purge attaches
    them. The wallet is told what SEP-12 says: a referenced file has no ``expires_at``; an
    upload no record names keeps its expiry. Nobody else sees either file."""
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    reply = await wallet.put_multipart([*((k, v, None) for k, v in ALICE.items()),
                                        ("photo_id_front", PNG, "id.png")])
    assert reply.status == 202, reply.body
    customer_id = reply.json["id"]
    [named] = (await wallet.files(customer_id=customer_id)).json["files"]
    files = srv.services.store.tenant("t1", "files")
    await files.update_one({"_id": named["file_id"]}, set={"expires_at": time.time() + 60})
    spare = (await wallet.upload(png_of_size(300))).json
    assert spare["customer_id"] == customer_id
    assert spare["expires_at"].endswith("Z")

    by_customer = {f["file_id"]: f for f in
                   (await wallet.files(customer_id=customer_id)).json["files"]}
    assert set(by_customer) == {named["file_id"], spare["file_id"]}
    assert "expires_at" not in by_customer[named["file_id"]]
    assert by_customer[spare["file_id"]] == spare
    [by_id] = (await wallet.files(file_id=named["file_id"])).json["files"]
    assert by_id == named
    assert "expires_at" not in named
    stranger = Wallet(srv, "a.test", "t1")
    assert (await stranger.files(customer_id=customer_id)).json == {"files": []}
    assert (await stranger.files(file_id=named["file_id"])).json == {"files": []}
    t2_wallet = Wallet(srv, "b.test", "t2", keypair=wallet.keypair)
    assert (await t2_wallet.files(customer_id=customer_id)).json == {"files": []}
    assert (await t2_wallet.files(file_id=named["file_id"])).json == {"files": []}
    # What the wallet was told holds: the purge attaches the named file, deletes the spare.
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    assert await service.files.purge_expired(time.time() + 48 * 3600) == (1, 1)
    assert (await wallet.files(customer_id=customer_id)).json == {"files": [named]}


async def test_23_eleven_megabyte_file_is_413_json(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    big = png_of_size(11 * 1024 * 1024)
    assert_error(await wallet.upload(big), 413)
    parts: list[tuple[str, str | bytes, str | None]] = [(k, v, None) for k, v in ALICE.items()]
    assert_error(await wallet.put_multipart([*parts, ("photo_id_front", big, "a.png")]), 413)
    assert (await wallet.get()).json["status"] == "NEEDS_INFO"


# --- 24: delete ---------------------------------------------------------------------------------


async def test_24_delete(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create()
    file_id = (await wallet.upload(PNG)).json["file_id"]
    await wallet.put({"photo_id_front_file_id": file_id})
    assert_error(await wallet.delete(Keypair.random().public_key), 403)
    reply = await wallet.delete()
    assert reply.status == 200, reply.body
    body = (await wallet.get()).json
    assert body["status"] == "NEEDS_INFO"
    assert "id" not in body
    assert_error(await wallet.get(id=customer_id), 404)
    assert (await wallet.files(file_id=file_id)).json == {"files": []}
    assert_error(await wallet.delete(), 404)
    assert await wallet.create() != customer_id  # a reused account starts afresh


async def test_24_delete_shared_account_by_memo(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    owner = Wallet(srv, "a.test", "t1")
    id1 = await owner.other(memo=1).create()
    id2 = await owner.other(memo=2).create()
    plain = await owner.create()
    assert (await owner.delete(memo="1")).status == 200
    assert_error(await owner.get(id=id1), 404)
    assert (await owner.get(id=id2)).json["id"] == id2
    assert (await owner.get()).json["id"] == plain
    muxed = owner.other(muxed_id=2)
    assert_error(await muxed.delete(owner.account, memo="3"), 403)
    assert (await muxed.delete(muxed.sub)).status == 200
    assert_error(await owner.get(id=id2), 404)


# --- 25: lang and REJECTED ------------------------------------------------------------------


async def test_25_unknown_lang_falls_back_to_english(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    english = (await wallet.get()).json
    for lang in ("xx", "en", "zz-ZZ", "x" * 300):
        reply = await wallet.get(lang=lang)
        assert reply.status == 200
        assert reply.json == english
    await wallet.create()
    assert (await wallet.get(lang="es")).json["message"].startswith("Gracias")


async def test_25_rejected_customer_has_a_message(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    customer_id = await wallet.create()
    service = service_for(tenant_of(srv, "t1"), srv.services.store, srv.services.settings)
    decision = Decision(CustomerStatus.REJECTED, "Documents could not be verified.")
    assert await service.customers.set_decision(customer_id, "individual", decision)
    body = (await wallet.get()).json
    assert body["status"] == "REJECTED"
    assert body["message"] == "Documents could not be verified."
    assert (await wallet.get(type="business")).json["status"] == "NEEDS_INFO"  # per type
    # The demo plugin's screening check rejects on its own, with a message.
    listed = Wallet(srv, "a.test", "t1")
    await listed.create({**ALICE, "first_name": "ivan", "last_name": "SANCTIONED"})
    body = (await listed.get()).json
    assert body["status"] == "REJECTED"
    assert body["message"]
