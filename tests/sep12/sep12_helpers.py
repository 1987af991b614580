"""A SEP-12 wallet for tests: stellar-sdk keys, tokens from the tenant's real issuer, plain HTTP.

- :func:`kyc_doc`: a tenant document with SEP-12 customer types (and the demo plugin).
- :class:`Wallet`: one wallet identity (``G``, ``G:memo`` or ``M``) on one tenant host; its
  token is minted by ``sep10_tokens.issue_token`` for that tenant (the real issuing code).
- :func:`multipart`: builds a ``multipart/form-data`` body, parts with or without filename.
- Canned files: :data:`PNG`, :func:`png_of_size`, :data:`JPEG`, :data:`PDF`.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from stellar_sdk import Keypair, MuxedAccount

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.sep.sep10_tokens import issue_token
from kyc_host.tenancy.registry import Tenant

INDIVIDUAL = {
    "required": ["first_name", "last_name", "email_address"],
    "optional": ["mobile_number", "photo_id_front", "photo_id_back", "birth_date",
                 "address_country_code"],
}
BUSINESS = {
    "required": ["organization.name", "organization.registration_number"],
    "optional": ["organization.photo_incorporation_doc"],
}
ALICE = {"first_name": "Alice", "last_name": "Liddell", "email_address": "alice@example.com"}


def kyc_doc(tenant_id: str, hosts: list[str], **overrides: Any) -> dict[str, Any]:
    doc = make_tenant_doc(tenant_id, hosts, customer_types={
        "individual": INDIVIDUAL, "business": BUSINESS}, default_customer_type="individual")
    doc.update(overrides)
    return doc


async def two_kyc_tenants(make_server: MakeServer, **overrides: Any) -> RunningServer:
    """T1 on a.test and T2 on b.test, both with the demo plugin (plugins/demo_anchor.py)."""
    return await make_server(kyc_doc("t1", ["a.test"], plugin="demo_anchor", **overrides),
                             kyc_doc("t2", ["b.test"], plugin="demo_anchor", **overrides))


def tenant_of(srv: RunningServer, tenant_id: str) -> Tenant:
    tenant = srv.services.registry.get(tenant_id)
    assert tenant is not None
    return tenant


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Mapping[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def multipart(parts: Sequence[tuple[str, str | bytes, str | None]]) -> tuple[bytes, str]:
    """(name, value, filename-or-None) parts -> (body, content type)."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, value, filename in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n"
        out += value.encode() if isinstance(value, str) else value
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class Wallet:
    """A wallet identity on one tenant host. ``sub`` is G, G:memo or M (SEP-10 §3.6)."""

    def __init__(self, srv: RunningServer, host: str, tenant_id: str, *,
                 keypair: Keypair | None = None, memo: int | None = None,
                 muxed_id: int | None = None) -> None:
        self.srv = srv
        self.host = host
        self.tenant = tenant_of(srv, tenant_id)
        self.keypair = keypair or Keypair.random()
        self.account = self.keypair.public_key
        if muxed_id is not None:
            self.sub = MuxedAccount(self.account, muxed_id).account_muxed
        elif memo is not None:
            self.sub = f"{self.account}:{memo}"
        else:
            self.sub = self.account
        self.token = issue_token(self.tenant, sub=self.sub, jti=uuid.uuid4().hex,
                                 home_domain=self.tenant.home_domains[0])

    def other(self, **kwargs: Any) -> Wallet:
        """The same keypair with another memo or mux id (a shared account's other user)."""
        return Wallet(self.srv, self.host, self.tenant.id, keypair=self.keypair, **kwargs)

    async def call(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                   json_body: Any = None, form: Mapping[str, str] | None = None,
                   body: bytes | None = None, content_type: str | None = None,
                   token: str | None = "", headers: Mapping[str, str] | None = None) -> Reply:
        """One request; ``token=""`` uses this wallet's token, None sends none."""
        all_headers = dict(headers or {})
        use = self.token if token == "" else token
        if use is not None:
            all_headers["Authorization"] = f"Bearer {use}"
        if json_body is not None:
            body, content_type = json.dumps(json_body).encode(), "application/json"
        elif form is not None:
            body, content_type = urlencode(form).encode(), "application/x-www-form-urlencoded"
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        full = path + (f"?{urlencode(query)}" if query else "")
        response = await self.srv.fetch(self.host, full, method=method, body=body,
                                        headers=all_headers)
        return Reply(response.code, response.body or b"", dict(response.headers))

    async def get(self, **query: str) -> Reply:
        return await self.call("GET", "/kyc/customer", query=query)

    async def put(self, data: Mapping[str, Any]) -> Reply:
        return await self.call("PUT", "/kyc/customer", json_body=dict(data))

    async def put_form(self, data: Mapping[str, str]) -> Reply:
        return await self.call("PUT", "/kyc/customer", form=data)

    async def put_multipart(self, parts: Sequence[tuple[str, str | bytes, str | None]],
                            path: str = "/kyc/customer", method: str = "PUT") -> Reply:
        body, content_type = multipart(parts)
        return await self.call(method, path, body=body, content_type=content_type)

    async def delete(self, account: str | None = None, **body: str) -> Reply:
        return await self.call("DELETE", f"/kyc/customer/{account or self.account}",
                               form=body if body else None)

    async def upload(self, data: bytes, filename: str | None = "id.png") -> Reply:
        return await self.put_multipart([("file", data, filename)],
                                        path="/kyc/customer/files", method="POST")

    async def files(self, **query: str) -> Reply:
        return await self.call("GET", "/kyc/customer/files", query=query)

    async def create(self, data: Mapping[str, Any] | None = None, **extra: Any) -> str:
        reply = await self.put({**(ALICE if data is None else data), **extra})
        assert reply.status == 202, reply.body
        customer_id: str = reply.json["id"]
        return customer_id


# --- files ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_of_size(size: int, seed: int = 0) -> bytes:
    """A valid 1x1 PNG padded with an ancillary chunk to exactly ``size`` bytes."""
    header = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0,
                                                                     0, 0))
    image = _png_chunk(b"IDAT", zlib.compress(b"\x00\x00")) + _png_chunk(b"IEND", b"")
    pad = size - len(header) - len(image) - 12
    assert pad >= 0
    filler = (bytes([seed % 256]) * pad)
    return header + _png_chunk(b"teXt", filler) + image


PNG = png_of_size(200)
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF\x00" + b"\x00" * 100 + b"\xff\xd9"
PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
