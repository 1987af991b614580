"""SEP-12 answers carry no ETag and are never turned into 304 by If-None-Match (issue 8).

They are one customer's current state, sent ``Cache-Control: no-store``; Tornado's default
SHA-1 ETag of every GET body was pure per-request cost, and ``If-None-Match: *`` made any
GET an empty 304. stellar.toml (public, max-age=60) keeps its ETag.
"""

from __future__ import annotations

from conftest import MakeServer
from sep12.sep12_helpers import Wallet, two_kyc_tenants


def header_names(headers: object) -> set[str]:
    assert isinstance(headers, dict)
    return {str(name).lower() for name in headers}


async def test_customer_get_has_no_etag_and_ignores_if_none_match(
    make_server: MakeServer,
) -> None:
    srv = await two_kyc_tenants(make_server)
    alice = Wallet(srv, "a.test", "t1")
    assert (await alice.put({"first_name": "Alice"})).status == 202
    plain = await alice.get()
    assert plain.status == 200
    assert "etag" not in header_names(plain.headers)
    assert plain.headers.get("Cache-Control") == "no-store"
    for condition in ("*", '"anything"'):
        conditional = await alice.call("GET", "/kyc/customer",
                                       headers={"If-None-Match": condition})
        assert conditional.status == 200
        assert conditional.json == plain.json
        assert "etag" not in header_names(conditional.headers)

    # Another customer of the other tenant: its own body, same rules.
    bob = Wallet(srv, "b.test", "t2")
    other = await bob.call("GET", "/kyc/customer", headers={"If-None-Match": "*"})
    assert other.status == 200
    assert other.json["status"] == "NEEDS_INFO"
    assert "id" not in other.json
    assert "etag" not in header_names(other.headers)
    # Still no token, no answer: the check runs before anything else.
    anonymous = await alice.call("GET", "/kyc/customer", token=None,
                                 headers={"If-None-Match": "*"})
    assert anonymous.status == 401


async def test_stellar_toml_keeps_its_etag(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    first = await srv.fetch("a.test", "/.well-known/stellar.toml")
    assert first.code == 200
    etag = first.headers.get("Etag")
    assert etag
    again = await srv.fetch("a.test", "/.well-known/stellar.toml",
                            headers={"If-None-Match": etag})
    assert again.code == 304
