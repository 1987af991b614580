"""The wallet-facing OpenAPI document (SEP-1/10/12 as the tenant hosts serve them): served on
the admin listener, valid OpenAPI 3.1, and real answers of every wallet route fit it."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest
from jsonschema import ValidationError
from mgmt_helpers import (  # noqa: F401 - fixtures
    Mgmt,
    checker_fixture,
    make_token_for_fixture,
    mgmt_fixture,
)
from openapi_spec_validator import validate
from review_helpers import ALICE, WALLET_CHECKER, KycWallet, multipart, png

from kyc_host.management.openapi_public import wallet_document
from kyc_host.web.routes import public_routes


async def test_document_is_served_and_valid(mgmt: Mgmt) -> None:
    reply = await mgmt.api.call("GET", "/api/v1/openapi-public.json")
    assert reply.status == 200
    assert reply.body == json.loads(json.dumps(wallet_document()))
    validate(reply.body)
    assert (await mgmt.srv.fetch("a.test", "/api/v1/openapi-public.json")).code == 404


def test_every_public_route_is_documented() -> None:
    paths = wallet_document()["paths"]
    for rule, *_ in public_routes():
        sample = (rule.replace("\\", "").replace("([^/]+)", "GAAA"))
        assert WALLET_CHECKER.template_for(sample) is not None, rule
    assert len(paths) == len(public_routes())


async def test_wallet_answers_fit_the_document(mgmt: Mgmt) -> None:
    """Every call goes through KycWallet.call, which checks status and body."""
    wallet = KycWallet(mgmt.srv, "a.test", "t1")
    status, toml = await wallet.call("GET", "/.well-known/stellar.toml", token=None)
    assert status == 200
    assert "KYC_SERVER" in toml
    assert (await wallet.call("GET", "/.well-known/jwks.json", token=None))[0] == 200
    status, challenge = await wallet.call("GET", "/auth", query={"account": wallet.account},
                                          token=None)
    assert status == 200
    assert challenge["network_passphrase"]
    assert (await wallet.call("GET", "/auth", query={"account": "nope"}, token=None))[0] == 400
    junk = json.dumps({"transaction": "AAAA"}).encode()
    assert (await wallet.call("POST", "/auth", body=junk, content_type="application/json",
                              token=None))[0] == 400
    assert (await wallet.call("POST", "/auth", body=b"x", content_type="text/csv",
                              token=None))[0] == 415

    assert (await wallet.get())["status"] == "NEEDS_INFO"
    assert (await wallet.call("GET", "/kyc/customer", token=None))[0] == 401
    assert (await wallet.call("GET", "/kyc/customer", query={"type": "nope"}))[0] == 400
    customer_id = await wallet.put_with_photo(ALICE, png(11))
    assert (await wallet.get(lang="de"))["id"] == customer_id
    stranger = KycWallet(mgmt.srv, "a.test", "t1")
    assert (await stranger.call("GET", "/kyc/customer", query={"id": customer_id}))[0] == 404
    other = KycWallet(mgmt.srv, "a.test", "t1")
    assert (await other.call("GET", "/kyc/customer",
                             query={"account": wallet.account}))[0] == 403

    raw, content_type = multipart([("file", png(12), "id.png")])
    status, stored = await wallet.call("POST", "/kyc/customer/files", body=raw,
                                       content_type=content_type)
    assert status == 200
    status, listed = await wallet.call("GET", "/kyc/customer/files",
                                       query={"file_id": stored["file_id"]})
    assert status == 200
    assert len(listed["files"]) == 1
    assert (await wallet.call("GET", "/kyc/customer/files"))[0] == 400
    callback = urlencode({"url": "http://127.0.0.1:9/cb"}).encode()
    assert (await wallet.call("PUT", "/kyc/customer/callback", body=callback,
                              content_type="application/x-www-form-urlencoded"))[0] == 200
    assert (await wallet.call("PUT", "/kyc/customer/verification", body=b"{}",
                              content_type="application/json"))[0] == 400
    assert (await wallet.call("PUT", "/kyc/customer", body=b"a",
                              content_type="text/plain"))[0] == 415
    assert (await wallet.call("DELETE", f"/kyc/customer/{wallet.account}"))[0] == 200
    assert (await wallet.call("DELETE", f"/kyc/customer/{wallet.account}"))[0] == 404

    unknown = await mgmt.srv.fetch("nobody.test", "/kyc/customer")
    WALLET_CHECKER.check("GET", "/kyc/customer", unknown.code, json.loads(unknown.body))
    assert unknown.code == 404


def test_the_wallet_checker_can_fail() -> None:
    with pytest.raises(ValidationError):
        WALLET_CHECKER.check("GET", "/kyc/customer", 200, {"status": "APPROVED"})
    with pytest.raises(ValidationError):
        WALLET_CHECKER.check("PUT", "/kyc/customer", 202, {"id": "x", "status": "ACCEPTED"})
    with pytest.raises(AssertionError):
        WALLET_CHECKER.check("PUT", "/kyc/customer", 200, {"id": "x"})
    with pytest.raises(AssertionError):
        WALLET_CHECKER.check("GET", "/.well-known/stellar.toml", 200, "x", "text/html")
