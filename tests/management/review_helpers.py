"""A SEP-12 wallet for the review tests, and the wallet-facing OpenAPI checker. Index:

- :class:`KycWallet`: one wallet identity (``G`` or ``G:memo``) on a tenant host, its SEP-10
  token minted by ``sep10_tokens.issue_token`` (the real issuing code, as tests/sep12 do);
  every answer it gets is checked against the wallet-facing OpenAPI document.
- :data:`WALLET_CHECKER`: that document's checker (:class:`OpenApiChecker`).
- :func:`png` / :func:`multipart`: a real PNG and a multipart body.
"""

from __future__ import annotations

import json
import struct
import uuid
import zlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from mgmt_helpers import OpenApiChecker
from stellar_sdk import Keypair

from conftest import RunningServer
from kyc_host.management.openapi_public import wallet_document
from kyc_host.sep.sep10_tokens import issue_token

WALLET_CHECKER = OpenApiChecker(wallet_document())
ALICE = {"first_name": "Alice", "last_name": "Liddell", "email_address": "alice@example.com"}
BOB = {"first_name": "Bob", "last_name": "Builder", "email_address": "bob@example.org"}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png(seed: int = 0) -> bytes:
    """A valid 1x1 PNG; ``seed`` makes the bytes differ."""
    header = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0,
                                                                 0))
    return (header + _chunk(b"teXt", bytes([seed % 256]) * 32)
            + _chunk(b"IDAT", zlib.compress(b"\x00\x00")) + _chunk(b"IEND", b""))


def multipart(parts: Sequence[tuple[str, str | bytes, str | None]]) -> tuple[bytes, str]:
    """(name, value, filename-or-None) parts -> (body, content type)."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += (value.encode() if isinstance(value, str) else value) + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


class KycWallet:
    """A wallet identity on one tenant host; ``memo`` makes it a shared-account user."""

    def __init__(self, srv: RunningServer, host: str, tenant_id: str, *,
                 keypair: Keypair | None = None, memo: int | None = None) -> None:
        tenant = srv.services.registry.get(tenant_id)
        assert tenant is not None
        self.srv, self.host = srv, host
        self.keypair = keypair or Keypair.random()
        self.account = self.keypair.public_key
        self.memo = memo
        sub = self.account if memo is None else f"{self.account}:{memo}"
        self.token = issue_token(tenant, sub=sub, jti=uuid.uuid4().hex,
                                 home_domain=tenant.home_domains[0])

    async def call(self, method: str, path: str, *, query: Mapping[str, str] | None = None,
                   body: bytes | None = None, content_type: str | None = None,
                   token: str | None = "") -> tuple[int, Any]:
        """One request, its answer checked against the wallet-facing document."""
        headers = {}
        use = self.token if token == "" else token
        if use is not None:
            headers["Authorization"] = f"Bearer {use}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        full = path + (f"?{urlencode(query)}" if query else "")
        response = await self.srv.fetch(self.host, full, method=method, body=body,
                                        headers=headers)
        media = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
        parsed: Any = response.body.decode() if media == "text/plain" else (
            json.loads(response.body) if response.body else None)
        WALLET_CHECKER.check(method, path, response.code, parsed, media)
        return response.code, parsed

    async def get(self, **query: str) -> dict[str, Any]:
        status, body = await self.call("GET", "/kyc/customer", query=query)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def put(self, data: Mapping[str, str]) -> str:
        status, body = await self.call("PUT", "/kyc/customer",
                                       body=json.dumps(dict(data)).encode(),
                                       content_type="application/json")
        assert status == 202, body
        return str(body["id"])

    async def put_with_photo(self, data: Mapping[str, str], photo: bytes) -> str:
        raw, content_type = multipart([*((k, v, None) for k, v in data.items()),
                                       ("photo_id_front", photo, "../../etc/passwd.html")])
        status, body = await self.call("PUT", "/kyc/customer", body=raw,
                                       content_type=content_type)
        assert status == 202, body
        return str(body["id"])
