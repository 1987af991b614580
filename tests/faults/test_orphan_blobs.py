"""reliability-plan F3: ``kill -9`` during uploads leaves no reference to a missing blob, and
the chunks it can leave behind (written before their file object, or left by a delete that
was cut) are removed by the purge job (store/files.py explains the write order).

- :func:`test_kill9_during_uploads_leaves_no_dangling_reference`: a real ``kyc-host serve``
  (faults/deploy.py) killed three times while wallets upload multi-chunk files and PUT
  customers with photos; after a plain restart every file object has all its chunks, every
  file a record names exists and belongs to it, every chunk without a file object is in the
  journal, and a purge run past the grace period leaves none of them and nothing else.
- :func:`test_purge_removes_only_chunks_of_interrupted_writes`: the purge step on its own,
  on the states a crash leaves (built with the repository and the store, both backends).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from stellar_sdk import Keypair
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError

from conftest import RunningServer, make_tenant_doc
from faults.deploy import Deployment, connect
from kyc_host.crypto.records import TenantCipher
from kyc_host.retention.purge import erasures_for
from kyc_host.sep.sep12_tenant import service_for
from kyc_host.store.base import Store, gt
from kyc_host.store.files import CHUNK_BYTES, JOURNAL_GRACE_SECONDS, FileRepository
from sep12.sep12_helpers import ALICE, Wallet, png_of_size

HOST, TENANT = "a.test", "t1"
WALLETS = 4
KILLS = 3
#: 202/200 answers per round before the kill is armed; then it comes after a random delay.
ANSWERS_BEFORE_KILL = 4
WAIT_SECONDS = 45.0
CUT = (HTTPClientError, StreamClosedError, OSError)  # the answer never came


def _tenant_doc() -> dict[str, Any]:
    return make_tenant_doc(TENANT, [HOST], customer_types={"individual": {
        "required": ["first_name", "last_name", "email_address"],
        "optional": ["photo_id_front", "photo_id_back"]}})


class Uploader:
    """One wallet: uploads a file of 2-3 chunks and references it, or PUTs a photo inline."""

    def __init__(self, srv: RunningServer, index: int, counts: dict[str, int]) -> None:
        self.wallet = Wallet(srv, HOST, TENANT, keypair=Keypair.random())
        self.rng = random.Random(index)
        self.index = index
        self.counts = counts
        self.n = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self.n += 1
            try:
                await self.step()
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)  # the server is down; the test restarts it
            except CUT:
                self.counts["cut"] += 1

    async def step(self) -> None:
        size = self.rng.choice((1, 2)) * CHUNK_BYTES + 1000 * self.n  # 2 or 3 chunks
        photo = png_of_size(size, self.index)
        if self.rng.random() < 0.5:
            upload = await self.wallet.upload(photo)
            self._count(upload.status, 200)
            if upload.status != 200:
                return
            reply = await self.wallet.put({**ALICE,
                                           "photo_id_back_file_id": upload.json["file_id"]})
        else:
            reply = await self.wallet.put_multipart(
                [*((k, v, None) for k, v in ALICE.items()),
                 ("photo_id_front", photo, "front.png")])
        self._count(reply.status, 202)

    def _count(self, status: int, expected: int) -> None:
        self.counts["answered" if status == expected else f"status {status}"] += 1


async def _wait_for(condition: Callable[[], bool], tasks: list[asyncio.Task[None]]) -> None:
    end = time.monotonic() + WAIT_SECONDS
    while not condition():
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        if time.monotonic() > end:
            pytest.fail("the load made no progress")
        await asyncio.sleep(0.01)


async def _load_then_kill(srv: RunningServer, deployment: Deployment,
                          counts: dict[str, int], rng: random.Random) -> None:
    stop = asyncio.Event()
    uploaders = [Uploader(srv, i, counts) for i in range(WALLETS)]
    tasks = [asyncio.create_task(u.run(stop)) for u in uploaders]
    try:
        start = counts["answered"]
        await _wait_for(lambda: counts["answered"] >= start + ANSWERS_BEFORE_KILL, tasks)
        await asyncio.sleep(rng.uniform(0, 0.3))
        deployment.kill_all()
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _chunk_owners(store: Store) -> dict[str, set[int]]:
    """file id -> chunk numbers present in ``blobs``."""
    owners: dict[str, set[int]] = {}
    blobs, last = store.tenant(TENANT, "blobs"), ""
    # In pages of a few 1 MiB chunks, so each read stays well inside the store timeout.
    while page := await blobs.find({"_id": gt(last)}, sort=[("_id", 1)], limit=4):
        for doc in page:
            last = str(doc["_id"])
            file_id, n = last.rsplit(".", 1)
            owners.setdefault(file_id, set()).add(int(n))
    return owners


async def _check_consistent(srv: RunningServer) -> tuple[int, set[str]]:
    """No reference to anything missing: every record's files exist, are its own and read
    whole; every file object reads whole. Returns (files, ids of chunk sets without a file)."""
    tenant = srv.services.registry.get(TENANT)
    assert tenant is not None
    service = service_for(tenant, srv.services.store, srv.services.settings)
    store = srv.services.store
    file_docs = {str(d["_id"]): d for d in await store.tenant(TENANT, "files").find({})}
    for doc in await store.tenant(TENANT, "customers").find({}):
        record = await service.customers.load(str(doc["_id"]))
        assert record is not None
        for name, file_id in record.files.items():
            assert file_id in file_docs, f"{record.id}: {name} names a missing file"
            assert file_docs[file_id]["customer_id"] == record.id
    owners = await _chunk_owners(store)
    for file_id, doc in file_docs.items():
        assert owners.get(file_id) == set(range(int(doc["chunks"]))), f"{file_id}: chunks"
        data = await service.files.read(file_id)  # opens (authenticates) every chunk
        assert data is not None
        assert len(data) == doc["size"]
    return len(file_docs), set(owners) - set(file_docs)


@pytest.mark.slow
async def test_kill9_during_uploads_leaves_no_dangling_reference(
        backend: str, tmp_path: Path) -> None:
    deployment = Deployment(tmp_path, backend, [_tenant_doc()],
                            settings={"rate_limits": False})
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    counts: dict[str, int] = {"answered": 0, "cut": 0}
    deployment.start()
    try:
        await deployment.ready()
        async with connect(deployment, max_clients=WALLETS * 2) as srv:
            for _ in range(KILLS):
                await _load_then_kill(srv, deployment, counts, rng)
                deployment.start()  # as an operator would: no repair step
                await deployment.ready()
            assert counts["cut"] > 0, counts  # the kills did cut uploads in flight
            assert set(counts) <= {"answered", "cut"}, counts  # nothing but 200/202
            files, orphans = await _check_consistent(srv)
            # Every leftover chunk set is journalled, so the purge can find it.
            journal = {str(d["_id"]) for d in await srv.services.store.tenant(
                TENANT, "blob_journal").find({})}
            assert orphans <= journal
            print(f"\nanswers {counts}; file objects {files}; chunk sets without a file "  # noqa: T201
                  f"object after the kills: {len(orphans)}; journal entries: {len(journal)}")

            tenant = srv.services.registry.get(TENANT)
            assert tenant is not None
            report = await erasures_for(tenant, srv.services.store).purge(
                now=time.time() + JOURNAL_GRACE_SECONDS + 1)
            assert report.interrupted_files == len(orphans)
            assert await _check_consistent(srv) == (files, set())
            assert await srv.services.store.tenant(TENANT, "blob_journal").count({}) == 0
        assert "Traceback" not in deployment.log()
    finally:
        deployment.kill_if_running()


# --- the purge step on the states a crash leaves -----------------------------------------


def _cipher(tenant_id: str) -> TenantCipher:
    return TenantCipher(tenant_id, os.urandom(32), os.urandom(32))


async def test_purge_removes_only_chunks_of_interrupted_writes(store: Store) -> None:
    cipher = _cipher("t1")
    files = FileRepository(store, "t1", cipher)
    blobs, journal = store.tenant("t1", "blobs"), store.tenant("t1", "blob_journal")
    data = os.urandom(2 * CHUNK_BYTES + 10)

    async def stored() -> str:
        info = await files.create(data, "image/png", owner_ix="o", account_ix="a")
        assert await journal.find_one({"_id": info.id}) is None  # finished: no entry left
        return info.id

    # Cut before the file object was written (or after a delete's first step): chunks and
    # the journal entry, no file object.
    cut_create = await stored()
    await store.tenant("t1", "files").delete_one({"_id": cut_create})
    await journal.insert_one({"_id": cut_create, "chunks": 3, "at": time.time()})
    # Cut after the file object was written, before its entry went: the file is whole.
    finished = await stored()
    await journal.insert_one({"_id": finished, "chunks": 3, "at": time.time()})
    untouched = await stored()
    # The other tenant's identical state is not this tenant's purge's business.
    other = FileRepository(store, "t2", _cipher("t2"))
    other_info = await other.create(data, "image/png", owner_ix="o", account_ix="a")
    await store.tenant("t2", "files").delete_one({"_id": other_info.id})
    await store.tenant("t2", "blob_journal").insert_one(
        {"_id": other_info.id, "chunks": 3, "at": time.time()})

    # Within the grace period an entry may belong to a write in progress: nothing goes.
    assert await files.purge_interrupted() == 0
    assert await blobs.count({}) == 9
    assert await journal.count({}) == 2

    later = time.time() + JOURNAL_GRACE_SECONDS + 1
    assert await files.purge_interrupted(later) == 1
    assert await blobs.count({}) == 6
    assert await journal.count({}) == 0
    for file_id in (finished, untouched):
        assert await files.read(file_id) == data
    assert await files.purge_interrupted(later) == 0  # idempotent
    assert await store.tenant("t2", "blobs").count({}) == 3
    assert await store.tenant("t2", "blob_journal").count({}) == 1

    # A finished delete leaves neither chunks nor an entry.
    assert await files.delete([finished]) == 1
    assert await blobs.count({}) == 3
    assert await journal.count({}) == 0

