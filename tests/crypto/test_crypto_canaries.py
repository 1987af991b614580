"""No PII in the store or the logs (issue 5 "done when", reliability-plan B8).

A full KYC flow with canary values -- names, email, phone, document bytes, a callback URL --
runs over real HTTP, with a real SEP-10 login, a retention hold, a DELETE, a purge, a KEK
rotation and a reindex, while every log record at DEBUG is written as JSON lines (the
platform's own formatter) into a buffer. Then the raw SQLite files (database and WAL) or
every raw MongoDB document, and the log buffer, are searched: no canary, no JWT, no seed or
key is found.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator

import pytest
from stellar_sdk import Keypair

from conftest import MakeServer
from keys.keys_helpers import job_context, raw_dump
from kyc_host.crypto.rotation import reindex, rotate_kek
from kyc_host.crypto.tenant_keys import read_secrets
from kyc_host.logs import JsonFormatter
from kyc_host.retention.purge import purge_tenant
from sep10.sep10_helpers import HorizonStub
from sep10.sep10_helpers import Wallet as AuthWallet
from sep12.sep12_helpers import Wallet, kyc_doc, png_of_size, tenant_of

PII = {"first_name": "Qzcanaryfirst", "last_name": "Vwcanarylast",
       "email_address": "qz.canary@canary-mail.example", "mobile_number": "+14155550177"}
DOC_CANARY = b"DOCUMENTCANARY-91fe"
URL_CANARY = "https://canary-callback.example/hook-q7"


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield buffer
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def document() -> bytes:
    picture = png_of_size(4096, 1)
    return picture[:200] + DOC_CANARY + picture[200 + len(DOC_CANARY):]


async def test_no_pii_jwt_or_secret_in_store_or_debug_logs(
        make_server: MakeServer, debug_log: io.StringIO) -> None:
    horizon = HorizonStub()
    try:
        srv = await make_server(
            kyc_doc("t1", ["a.test"], horizon_url=horizon.url, retention={"keep_days": 30}),
            kyc_doc("t2", ["b.test"], horizon_url=horizon.url))
        client = Keypair.random()
        login = await AuthWallet(srv).token("a.test", client, account=client.public_key)
        wallet = Wallet(srv, "a.test", "t1", keypair=client)
        wallet.token = login  # the JWT from a real SEP-10 login
        erased = wallet.other(memo=5)
        customer_id = await wallet.create(PII)
        await erased.create(PII)
        parts: list[tuple[str, str | bytes, str | None]] = [
            ("photo_id_front", document(), "passport.png")]
        assert (await wallet.put_multipart(parts)).status == 202
        assert (await wallet.upload(document())).status == 200
        assert (await wallet.call("PUT", "/kyc/customer/callback",
                                  json_body={"url": URL_CANARY})).status == 200
        assert (await wallet.get()).json["id"] == customer_id
        assert (await wallet.put({"first_name": "not-a-name-\r\n\x1b[31m"})).status in (202,
                                                                                         400)
        assert (await erased.delete()).status == 200  # held for 30 days
        await purge_tenant(srv.services, tenant_of(srv, "t1"))
        await rotate_kek(job_context(srv), "t1")
        await reindex(job_context(srv), "t1")
        assert (await wallet.get()).json["id"] == customer_id
        dump = await raw_dump(srv)
        logs = debug_log.getvalue()
    finally:
        await horizon.close()

    assert customer_id.encode() in dump  # the dump holds the stored documents
    assert "/kyc/customer" in logs  # and the log saw the requests
    for value in [*PII.values(), URL_CANARY]:
        for encoded in (value.encode(), value.encode("utf-16-le")):
            assert encoded not in dump, value
        assert value not in logs, value
    assert DOC_CANARY not in dump
    assert DOC_CANARY.decode() not in logs
    assert base64.b64encode(DOC_CANARY).decode()[:16] not in logs
    secrets = await read_secrets(srv.services.store, srv.services.keys, "t1")
    never = [login, wallet.token, erased.token, secrets.signing_seed,
             base64.b64encode(secrets.data_kek).decode(),
             base64.b64encode(secrets.index_key).decode(),
             base64.b64encode(secrets.jwt_ed25519_seed).decode(),
             srv.services.settings.master_key_file.read_text().split("1:", 1)[1].strip()]
    for secret in never:
        assert secret not in logs
        assert secret.encode() not in dump
    for line in logs.splitlines():  # injected CR/LF/ESC never split or colour a line
        assert "\x1b" not in line
