"""Uploads: size limits answered as 413 JSON before buffering, and types decided by content.

The oversized-body tests talk raw HTTP/1.1 over a socket, so they can show the server
answering *before* the body is sent (reliability-plan B5): the client sends only headers
announcing a huge body and reads the answer; no body byte ever leaves the client.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from conftest import MakeServer, RunningServer
from sep12.sep12_helpers import ALICE, JPEG, PDF, PNG, Wallet, kyc_doc, multipart, png_of_size

MIB = 1024 * 1024


async def small_limits_server(make_server: MakeServer, **limits: Any) -> RunningServer:
    doc = kyc_doc("t1", ["a.test"], limits={"max_file_bytes": MIB,
                                            "max_request_bytes": 2 * MIB, **limits})
    return await make_server(doc, kyc_doc("t2", ["b.test"]))


async def raw_request(srv: RunningServer, head: str,
                      body_chunks: list[bytes] | None = None) -> tuple[int, dict[str, Any]]:
    """Send ``head`` and then ``body_chunks``; read and parse the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.public_port)
    try:
        writer.write(head.encode())
        await writer.drain()
        for chunk in body_chunks or []:
            writer.write(chunk)
            await writer.drain()
        status_line = await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), json.loads(body)
    finally:
        writer.close()


def put_head(wallet: Wallet | None, length: int | None, path: str = "/kyc/customer",
             method: str = "PUT") -> str:
    lines = [f"{method} {path} HTTP/1.1", "Host: a.test",
             "Content-Type: multipart/form-data; boundary=xyz"]
    if wallet is not None:
        lines.append(f"Authorization: Bearer {wallet.token}")
    lines.append(f"Content-Length: {length}" if length is not None
                 else "Transfer-Encoding: chunked")
    return "\r\n".join(lines) + "\r\n\r\n"


async def test_declared_oversize_body_is_413_before_it_is_sent(make_server: MakeServer) -> None:
    srv = await small_limits_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    for path, method in (("/kyc/customer", "PUT"), ("/kyc/customer/files", "POST")):
        status, body = await raw_request(srv, put_head(wallet, 200 * MIB, path, method))
        assert status == 413
        assert "limit" in body["error"]
    # Endpoints that never take files have a small cap.
    status, _ = await raw_request(srv, put_head(wallet, 100_000, "/kyc/customer/callback"))
    assert status == 413


async def test_unauthenticated_big_body_is_401_before_it_is_sent(make_server: MakeServer) -> None:
    srv = await small_limits_server(make_server)
    status, body = await raw_request(srv, put_head(None, 200 * MIB))
    assert status == 401
    assert body["error"]


def chunked(total: int) -> list[bytes]:
    chunk = b"x" * (256 * 1024)
    framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    return [framed] * (total // len(chunk)) + [b"0\r\n\r\n"]


async def test_chunked_body_over_the_limit_is_413(make_server: MakeServer) -> None:
    srv = await small_limits_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    status, body = await raw_request(srv, put_head(wallet, None), chunked(10 * MIB))
    assert status == 413
    assert "limit" in body["error"]
    assert (await wallet.get()).json["status"] == "NEEDS_INFO"  # nothing stored


async def test_endless_chunked_body_is_cut_off(make_server: MakeServer) -> None:
    srv = await small_limits_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    _reader, writer = await asyncio.open_connection("127.0.0.1", srv.public_port)
    writer.write(put_head(wallet, None).encode())

    async def send_200_mib() -> None:
        for chunk in chunked(200 * MIB):
            writer.write(chunk)
            await writer.drain()

    with pytest.raises(ConnectionError):  # the server hangs up instead of reading on
        await send_200_mib()
    writer.close()
    assert (await wallet.get()).status == 200  # and is fine afterwards


async def test_expect_100_continue_gets_413_without_sending(make_server: MakeServer) -> None:
    srv = await small_limits_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    response = await srv.client.fetch(
        f"http://127.0.0.1:{srv.public_port}/kyc/customer/files", method="POST",
        body=b"x" * (3 * MIB), expect_100_continue=True, raise_error=False,
        headers={"Host": "a.test", "Authorization": f"Bearer {wallet.token}",
                 "Content-Type": "multipart/form-data; boundary=xyz"})
    assert response.code == 413
    assert "error" in json.loads(response.body)


async def test_per_file_limit_is_413_json(make_server: MakeServer) -> None:
    srv = await small_limits_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    reply = await wallet.upload(png_of_size(MIB + 1))
    assert reply.status == 413
    assert "file too large" in reply.json["error"]
    assert (await wallet.upload(png_of_size(MIB))).status == 200


@pytest.mark.parametrize(("content", "accepted"), [
    (PNG, "image/png"), (JPEG, "image/jpeg"), (PDF, "application/pdf"),
    (b"<html><script>alert(1)</script></html>", None),
    (b'<svg xmlns="http://www.w3.org/2000/svg"><script>x()</script></svg>', None),
    (b"\x7fELF\x02\x01\x01" + b"\x00" * 64, None), (b"MZ\x90\x00" + b"\x00" * 64, None),
    (b"PK\x03\x04" + b"\x00" * 64, None), (b"", None),
])
async def test_type_comes_from_the_bytes(make_server: MakeServer, content: bytes,
                                         accepted: str | None) -> None:
    srv = await small_limits_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    reply = await wallet.upload(content, filename="photo.jpg")
    if accepted is None:
        assert reply.status == 400
        assert "error" in reply.json
    else:
        assert reply.status == 200
        assert reply.json["content_type"] == accepted


async def test_tenant_allow_list_applies(make_server: MakeServer) -> None:
    srv = await small_limits_server(make_server, allowed_file_types=["image/png"])
    wallet = Wallet(srv, "a.test", "t1")
    assert (await wallet.upload(PDF, filename="doc.png")).status == 400
    assert (await wallet.upload(PNG)).status == 200
    parts: list[tuple[str, str | bytes, str | None]] = [(k, v, None) for k, v in ALICE.items()]
    reply = await wallet.put_multipart([*parts, ("photo_id_front", JPEG, "x.png")])
    assert reply.status == 400
    assert "photo_id_front" in reply.json["error"]


async def test_client_filename_is_never_kept(make_server: MakeServer, tmp_path: Path) -> None:
    srv = await small_limits_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    names = ["../../etc/passwd-CANARYFN1", "a\x00b-CANARYFN2.png",
             "CANARYFN3" + "x" * 300, "evil\r\nX-Injected: 1-CANARYFN4"]
    for name in names:
        body, ctype = multipart([("file", PNG, name.replace('"', ""))])
        reply = await wallet.call("POST", "/kyc/customer/files", body=body, content_type=ctype)
        assert reply.status in (200, 400)
        assert b"CANARYFN" not in reply.body
        assert not any("CANARYFN" in v for v in reply.headers.values())
    if srv.services.store.backend_name == "sqlite":
        db = Path(srv.services.settings.storage_url.removeprefix("sqlite:///"))
        for path in db.parent.glob(db.name + "*"):
            assert b"CANARYFN" not in path.read_bytes()


async def test_inline_binary_fields_and_file_id_conflicts(make_server: MakeServer) -> None:
    srv = await small_limits_server(make_server)
    wallet = Wallet(srv, "a.test", "t1")
    file_id = (await wallet.upload(PNG)).json["file_id"]
    body, ctype = multipart([("photo_id_front", PNG, None),
                             ("photo_id_front_file_id", file_id, None)])
    reply = await wallet.call("PUT", "/kyc/customer", body=body, content_type=ctype)
    assert reply.status == 400
    assert "photo_id_front" in reply.json["error"]
    assert (await wallet.put({"photo_id_front": "aGVsbG8="})).status == 400  # text, not a file
    body, ctype = multipart([("first_name", PNG, "x.png")])
    assert (await wallet.call("PUT", "/kyc/customer", body=body,
                              content_type=ctype)).status == 400
    customer_id = (await wallet.put_multipart([("photo_id_back", JPEG, None)])).json["id"]
    files = (await wallet.files(customer_id=customer_id)).json["files"]
    assert [f["content_type"] for f in files] == ["image/jpeg"]
    # The same bytes again change nothing; new bytes replace (and erase) the old file.
    await wallet.put_multipart([("photo_id_back", JPEG, None)])
    assert (await wallet.files(customer_id=customer_id)).json["files"] == files
    await wallet.put_multipart([("photo_id_back", PNG, None)])
    replaced = (await wallet.files(customer_id=customer_id)).json["files"]
    assert [f["content_type"] for f in replaced] == ["image/png"]
    assert (await wallet.files(file_id=files[0]["file_id"])).json == {"files": []}
