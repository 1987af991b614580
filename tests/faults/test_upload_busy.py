"""Uploads when the file-crypto threads are backed up: refused with 503, nothing stored.

Large files are sealed and hashed on the store's own crypto threads (store/files.py); work
that waited there longer than ``QUEUE_TIMEOUT_SECONDS`` is refused before it runs, so an
overloaded process answers 503 + Retry-After instead of letting uploads run into client
timeouts (reliability-plan L2). A bound of 0 makes every such wait "too long", which shows
the refusal path deterministically; files under the thread threshold never queue.
"""

from __future__ import annotations

import json

import pytest

from conftest import MakeServer, make_tenant_doc
from kyc_host.store import files as files_module
from sep12.sep12_helpers import ALICE, Wallet, png_of_size


async def test_large_uploads_are_refused_whole_when_crypto_is_backed_up(
        make_server: MakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]))
    monkeypatch.setattr(files_module, "QUEUE_TIMEOUT_SECONDS", -1.0)
    big = png_of_size(files_module.THREAD_THRESHOLD + 1024, 1)
    wallet, other = Wallet(srv, "a.test", "t1"), Wallet(srv, "b.test", "t2")
    refused = await wallet.put_multipart([*((k, v, None) for k, v in ALICE.items()),
                                          ("photo_id_front", big, "id.png")])
    assert refused.status == 503, refused.body
    assert int(refused.headers["Retry-After"]) > 0
    assert json.loads(refused.body) == {"error": "service temporarily unavailable"}
    assert (await wallet.get()).json["status"] == "NEEDS_INFO"  # nothing of it was stored
    # A small file needs no thread; the other tenant's small uploads go on meanwhile.
    assert (await other.upload(png_of_size(2048, 2))).status == 200
    # With the threads free again, the same upload is stored.
    monkeypatch.setattr(files_module, "QUEUE_TIMEOUT_SECONDS", 4.0)
    stored = await wallet.put_multipart([*((k, v, None) for k, v in ALICE.items()),
                                         ("photo_id_front", big, "id.png")])
    assert stored.status == 202, stored.body
