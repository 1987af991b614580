"""Requests Tornado's HTTP/1 parser refuses get a JSON 400, like every other refusal.

Tornado answers a request line or header block it cannot parse itself, before any handler
exists, with a status line and no body; web/serving.py swaps that answer for a JSON one
(``{"error": "malformed HTTP request: ..."}``). Each case here is refused on the wire before a
tenant is resolved, so it is the same on every host, and nothing reaches the store.
"""

from __future__ import annotations

import json

import pytest
from tests.api.test_sep1 import TOML, raw_http
from tests.conftest import RunningServer

MALFORMED = {
    "control character in a header value": b"Content-Type: text/\x01plain\r\n",
    "header line without a colon": b"NoColonHere\r\n",
    "non-numeric Content-Length": b"Content-Length: ten\r\n",
    "two different Content-Lengths": b"Content-Length: 1\r\nContent-Length: 2\r\n",
    "Transfer-Encoding with Content-Length": (b"Transfer-Encoding: chunked\r\n"
                                              b"Content-Length: 5\r\n"),
    "unknown Transfer-Encoding": b"Transfer-Encoding: gzip\r\n",
    "malformed Host": b"",  # the Host below is replaced for this case
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_unparseable_requests_get_a_json_400(two_tenants: RunningServer,
                                                   case: str) -> None:
    for host in ("a.test", "b.test"):
        host_line = b"Host: a.test b.test\r\n" if case == "malformed Host" else (
            f"Host: {host}\r\n".encode())
        status, data = await raw_http(
            two_tenants.public_port,
            f"PUT {TOML} HTTP/1.1\r\n".encode() + host_line + MALFORMED[case]
            + b"Connection: close\r\n\r\n")
        head, _, body = data.partition(b"\r\n\r\n")
        assert status == 400, (case, data)
        assert b"content-type: application/json" in head.lower(), (case, head)
        error = json.loads(body)["error"]
        assert error.startswith("malformed HTTP request"), (case, error)


async def test_a_well_formed_request_is_untouched(two_tenants: RunningServer) -> None:
    # The control: the same path with clean headers is served by the tenant, not swapped.
    status, data = await raw_http(
        two_tenants.public_port,
        f"GET {TOML} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode())
    assert status == 200, data
    assert b"malformed" not in data
