"""SEP-1 stellar.toml per tenant, routing by Host, and the public/admin error surface.

Real server, real HTTP, both backends. Host fuzz follows reliability-plan B7: an unknown or
malformed host never falls back to any tenant, and variants of a known host (case, trailing
dot, port) map to that same tenant.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import tomllib
from typing import Any

import pytest
from stellar_sdk import Keypair
from tornado.httpclient import HTTPResponse

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.crypto.aead import DecryptionError
from kyc_host.crypto.master import write_new_key_file
from kyc_host.settings import Listen, PlatformSettings
from kyc_host.tenancy.schema import TESTNET

TOML = "/.well-known/stellar.toml"
ISSUER = "GBBD47IF6LWK7P7MDEVSCWR7DPUWV3NY3DTQEVFL4NAT4AQH3ZLLFLA5"


def parse_toml(response: HTTPResponse) -> dict[str, Any]:
    assert response.code == 200, response.body
    return tomllib.loads(response.body.decode())


def assert_json_error(response: HTTPResponse, status: int) -> str:
    """The response is ``status`` with a JSON ``{"error": "..."}`` body and no internals."""
    assert response.code == status, (response.code, response.body)
    assert response.headers["Content-Type"].startswith("application/json")
    body = json.loads(response.body)
    assert set(body) == {"error"}
    assert isinstance(body["error"], str)
    assert body["error"]
    assert_no_internals(response.body)
    message: str = body["error"]
    return message


def assert_no_internals(body: bytes) -> None:
    for marker in (b"Traceback", b'File "', b"kyc_host", b"Error:", b"Exception"):
        assert marker not in body, body


async def signing_key(srv: RunningServer, host: str) -> str:
    key: str = parse_toml(await srv.fetch(host, TOML))["SIGNING_KEY"]
    return key


async def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client normalization) and return (status, whole response)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data


# --- the document ---------------------------------------------------------------------------


async def test_stellar_toml_per_tenant(two_tenants: RunningServer) -> None:
    response = await two_tenants.fetch("a.test", TOML)
    doc = parse_toml(response)
    assert len(response.body) <= 100_000
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert doc["NETWORK_PASSPHRASE"] == TESTNET
    assert doc["WEB_AUTH_ENDPOINT"] == "https://a.test/auth"
    assert doc["KYC_SERVER"] == "https://a.test/kyc"
    Keypair.from_public_key(doc["SIGNING_KEY"])  # a valid G... strkey
    assert doc["SIGNING_KEY"].startswith("G")

    other = parse_toml(await two_tenants.fetch("b.test", TOML))
    assert other["SIGNING_KEY"] != doc["SIGNING_KEY"]
    assert other["WEB_AUTH_ENDPOINT"] == "https://b.test/auth"
    assert other["KYC_SERVER"] == "https://b.test/kyc"
    # Same answer again (the rendered document is cached per tenant version).
    assert parse_toml(await two_tenants.fetch("a.test", TOML)) == doc


async def test_cors_preflight(two_tenants: RunningServer) -> None:
    response = await two_tenants.fetch("a.test", TOML, method="OPTIONS",
                                       headers={"Origin": "https://wallet.example",
                                                "Access-Control-Request-Method": "GET"})
    assert response.code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "GET" in response.headers["Access-Control-Allow-Methods"]


async def test_extra_content_and_first_host(make_server: MakeServer) -> None:
    doc = make_tenant_doc(
        "t1", ["kyc.a.test", "a.test"], home_domain="a.test",
        stellar_toml={
            "documentation": {"ORG_NAME": "A \"quoted\" Anchor", "ORG_URL": "https://a.test"},
            "currencies": [{"code": "USDA", "issuer": ISSUER, "status": "test",
                            "is_asset_anchored": True, "display_decimals": 2}],
            "principals": [{"name": "Jane Doe", "email": "jane@a.test"}],
            "accounts": [ISSUER],
        })
    srv = await make_server(doc)
    toml = parse_toml(await srv.fetch("a.test", TOML))
    assert toml["DOCUMENTATION"] == {"ORG_NAME": "A \"quoted\" Anchor",
                                     "ORG_URL": "https://a.test"}
    assert toml["CURRENCIES"] == [{"code": "USDA", "issuer": ISSUER, "status": "test",
                                   "is_asset_anchored": True, "display_decimals": 2}]
    assert toml["PRINCIPALS"] == [{"name": "Jane Doe", "email": "jane@a.test"}]
    assert toml["ACCOUNTS"] == [ISSUER]
    # URLs use the first host; both hosts serve the same tenant.
    assert toml["KYC_SERVER"] == "https://kyc.a.test/kyc"
    assert parse_toml(await srv.fetch("kyc.a.test", TOML)) == toml


async def test_dev_mode_localhost_uses_http_with_port(make_server: MakeServer) -> None:
    srv = await make_server(make_tenant_doc("t1", ["anchor.localhost"]),
                            make_tenant_doc("t2", ["b.test"]),
                            public_listen=Listen("127.0.0.1", 8123))
    toml = parse_toml(await srv.fetch("anchor.localhost", TOML))
    assert toml["WEB_AUTH_ENDPOINT"] == "http://anchor.localhost:8123/auth"
    assert toml["KYC_SERVER"] == "http://anchor.localhost:8123/kyc"
    # Dev mode does not downgrade hosts that are not *.localhost.
    assert parse_toml(await srv.fetch("b.test", TOML))["KYC_SERVER"] == "https://b.test/kyc"


async def test_outside_dev_mode_localhost_is_https(
    make_server: MakeServer, settings: PlatformSettings
) -> None:
    write_new_key_file(settings.master_key_file)  # outside dev mode the key must exist
    srv = await make_server(make_tenant_doc("t1", ["anchor.localhost"]), dev_mode=False)
    toml = parse_toml(await srv.fetch("anchor.localhost", TOML))
    assert toml["KYC_SERVER"] == "https://anchor.localhost/kyc"


# --- routing by Host --------------------------------------------------------------------------


UNKNOWN_HOSTS = ["nope.test", "localhost", "127.0.0.1", "test", "a.tes", "xa.test",
                 "a.test.b.test", "b.test.a.test", "[::1]"]


async def test_unknown_host_is_404_json_without_tenant_data(two_tenants: RunningServer) -> None:
    for host in UNKNOWN_HOSTS:
        response = await two_tenants.fetch(host, TOML)
        assert_json_error(response, 404)
        for leak in (b"a.test", b"b.test", b"SIGNING_KEY", b"t1", b"t2"):
            assert leak not in response.body, host


async def test_host_variants_map_to_the_same_tenant(two_tenants: RunningServer) -> None:
    expected = await signing_key(two_tenants, "a.test")
    for variant in ("a.test.", "A.TEST", "A.Test.", "a.test:443", "a.test:8443", "A.TEST.:80"):
        assert await signing_key(two_tenants, variant) == expected, variant


MALFORMED_HOSTS = ["a.test@b.test", "b.test@a.test", "a.test/x?", "localhost/openapi.json?x=",
                   "a.test b.test", "a.test:b.test", "a.test:", "a.test\tb.test", ""]


async def test_malformed_hosts_never_reach_a_tenant(two_tenants: RunningServer) -> None:
    keys = [(await signing_key(two_tenants, h)).encode() for h in ("a.test", "b.test")]
    for host in MALFORMED_HOSTS:
        status, data = await raw_http(
            two_tenants.public_port,
            f"GET {TOML} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        # Tornado refuses hosts that are not RFC 3986 host[:port] with a bare 400 before any
        # handler runs; anything else must be our 404. Never 200, never a tenant's data.
        assert status in (400, 404, 421), (host, data)
        for key in keys:
            assert key not in data, host
        assert_no_internals(data)


async def test_duplicate_host_headers_are_refused(two_tenants: RunningServer) -> None:
    keys = [(await signing_key(two_tenants, h)).encode() for h in ("a.test", "b.test")]
    for first, second in (("a.test", "b.test"), ("b.test", "a.test"), ("a.test", "a.test")):
        status, data = await raw_http(
            two_tenants.public_port,
            f"GET {TOML} HTTP/1.1\r\nHost: {first}\r\nHost: {second}\r\n"
            "Connection: close\r\n\r\n".encode())
        assert status in (400, 404, 421), data
        for key in keys:
            assert key not in data


async def test_missing_host_header(two_tenants: RunningServer) -> None:
    status, data = await raw_http(two_tenants.public_port,
                                  f"GET {TOML} HTTP/1.1\r\nConnection: close\r\n\r\n".encode())
    assert status == 400, data
    # HTTP/1.0 may omit Host; Tornado then assumes 127.0.0.1, which is no tenant.
    status, data = await raw_http(two_tenants.public_port, f"GET {TOML} HTTP/1.0\r\n\r\n".encode())
    assert status == 404, data
    assert b'{"error": "unknown host"}' in data


async def test_absolute_form_request_line_never_switches_tenant(
    two_tenants: RunningServer,
) -> None:
    a_key = (await signing_key(two_tenants, "a.test")).encode()
    b_key = (await signing_key(two_tenants, "b.test")).encode()
    status, data = await raw_http(
        two_tenants.public_port,
        f"GET http://b.test{TOML} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
        .encode())
    assert b_key not in data
    assert b"b.test" not in data.split(b"\r\n\r\n", 1)[1]
    if status == 200:
        assert a_key in data
    else:
        assert status in (400, 404, 421), data


async def test_forwarding_headers_are_not_trusted(two_tenants: RunningServer) -> None:
    expected = await signing_key(two_tenants, "a.test")
    for name, value in (("X-Forwarded-Host", "b.test"), ("Forwarded", "host=b.test"),
                        ("X-Host", "b.test"), ("X-Original-Host", "b.test"),
                        ("X-Forwarded-For", "10.0.0.1")):
        response = await two_tenants.fetch("a.test", TOML, headers={name: value})
        assert parse_toml(response)["SIGNING_KEY"] == expected, name
    # And an unknown Host is not rescued by a forwarding header naming a known one.
    response = await two_tenants.fetch("nope.test", TOML, headers={"X-Forwarded-Host": "a.test"})
    assert_json_error(response, 404)


async def test_suspended_tenant_answers_503(two_tenants: RunningServer) -> None:
    assert await two_tenants.services.tenants.set_status("t2", "suspended")
    response = await poll(two_tenants, "b.test", TOML, until=lambda r: r.code == 503)
    assert_json_error(response, 503)
    assert int(response.headers["Retry-After"]) > 0
    assert b"b.test" not in response.body
    # Every path of a suspended tenant is 503, and the other tenant is unaffected.
    assert_json_error(await two_tenants.fetch("b.test", "/nothing-here"), 503)
    assert (await two_tenants.fetch("a.test", TOML)).code == 200
    assert await two_tenants.services.tenants.set_status("t2", "active")
    await poll(two_tenants, "b.test", TOML, until=lambda r: r.code == 200)


async def poll(srv: RunningServer, host: str, path: str, *, until: Any,
               admin: bool = False, deadline: float = 5.0) -> HTTPResponse:
    """Fetch until ``until(response)`` holds; fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        response = await srv.fetch(host, path, admin=admin)
        if until(response):
            return response
        if time.monotonic() > end:
            pytest.fail(f"{host}{path}: still {response.code} after {deadline} s")
        await asyncio.sleep(0.05)


# --- errors ----------------------------------------------------------------------------------


async def test_unknown_path_is_404_json(two_tenants: RunningServer) -> None:
    for path in ("/", "/nope", "/.well-known/stellar.toml/", "/.well-known/", "/healthz/x",
                 "/%2e%2e/etc/passwd", "/.well-known/STELLAR.TOML"):
        assert_json_error(await two_tenants.fetch("a.test", path), 404)
        assert_json_error(await two_tenants.fetch("nope.test", path), 404)


async def test_wrong_method_is_405_json(two_tenants: RunningServer) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        response = await two_tenants.fetch("a.test", TOML, method=method,
                                           body=b"x" if method != "DELETE" else None)
        assert assert_json_error(response, 405) == "method not allowed"
    # A method Tornado does not know at all is refused before any handler code runs.
    assert_json_error(await two_tenants.fetch("a.test", TOML, method="BREW"), 405)
    # An unknown host still gets 404 first: the method tells nothing about other tenants.
    assert_json_error(await two_tenants.fetch("nope.test", TOML, method="POST", body=b"x"), 404)


async def test_unexpected_error_is_generic_500_json(
    two_tenants: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A tenant whose secrets no longer open (here: t1's blob pasted onto t2) fails closed."""
    tenants = two_tenants.services.tenants
    t1 = await tenants.tenants.find_one({"_id": "t1"})
    assert t1 is not None
    await tenants.tenants.update_one(
        {"_id": "t2"}, set={"secrets": t1["secrets"], "rev": "tampered",
                            "updated_at": time.time()})
    await two_tenants.services.registry.refresh()
    with caplog.at_level(logging.ERROR, logger="kyc_host.web"):
        response = await two_tenants.fetch("b.test", TOML)
    assert assert_json_error(response, 500) == "internal server error"
    assert b"ciphertext" not in response.body
    assert b"Decryption" not in response.body
    # The operator gets the details in the log instead, tagged with the tenant.
    [record] = [r for r in caplog.records if r.name == "kyc_host.web"]
    assert record.exc_info is not None
    assert record.exc_info[0] is DecryptionError
    assert getattr(record, "tenant", None) == "t2"
    assert (await two_tenants.fetch("a.test", TOML)).code == 200


# --- admin listener --------------------------------------------------------------------------


async def test_admin_endpoints_only_on_admin_listener(two_tenants: RunningServer) -> None:
    healthz = await two_tenants.fetch("127.0.0.1", "/healthz", admin=True)
    assert healthz.code == 200
    assert json.loads(healthz.body) == {"status": "ok"}
    readyz = await two_tenants.fetch("localhost", "/readyz", admin=True)
    assert readyz.code == 200
    assert json.loads(readyz.body)["status"] == "ready"
    # Any Host on the public listener: the admin routes do not exist there.
    for host in ("a.test", "b.test", "localhost", "127.0.0.1", "nope.test"):
        for path in ("/healthz", "/readyz"):
            assert_json_error(await two_tenants.fetch(host, path), 404)
    # And the public routes do not exist on the admin listener, whatever the Host.
    for host in ("a.test", "localhost"):
        assert_json_error(await two_tenants.fetch(host, TOML, admin=True), 404)
        assert_json_error(await two_tenants.fetch(host, "/nope", admin=True), 404)


# --- logs ------------------------------------------------------------------------------------


async def test_access_log_has_no_query_strings(
    two_tenants: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        assert (await two_tenants.fetch("a.test", TOML + "?account=GSECRET&memo=42")).code == 200
        await two_tenants.fetch("nope.test", "/x?account=GSECRET")
        await two_tenants.fetch("a.test", "/missing?token=GSECRET")
    access = [r for r in caplog.records if r.name == "kyc_host.access"]
    assert [r.getMessage() for r in access] == [
        f"GET {TOML} 200", "GET /x 404", "GET /missing 404"]
    assert getattr(access[0], "tenant", None) == "t1"
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert "GSECRET" not in text
        assert "memo=42" not in text
