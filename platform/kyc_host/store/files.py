"""Uploaded files of one tenant (SEP-12 ``/customer/files`` and binary SEP-9 fields).

- ``files``: the file object: id, content type (decided from the bytes, never the client's
  word), size, owner (blind index of the uploading identity and of its account), the
  customer it is attached to, expiry while unattached, a keyed digest of the contents (to
  tell an identical re-upload) and the file's own data key wrapped by the tenant key.
- ``blobs``: the contents, split into chunks of at most 1 MiB (far below every backend's
  document limit), each sealed with associated data naming the file, the chunk number and
  the chunk count, so chunks cannot be swapped, dropped or moved to another file.
- ``blob_journal``: one entry per file whose chunks are being written or deleted.

Crash safety (reliability-plan F3). A file object is written after all its chunks and
deleted before them, and callers write a customer record that names a file only after the
file exists and delete a file only once no record names it (sep/sep12_service.py,
retention/erasure.py): a ``kill -9`` at any point can leave chunks that nothing references,
never a reference to a missing chunk or file. Such chunks are unreadable (their data key
lives only in the file object, which was never written or is gone) and are found through the
journal -- the blobs are never scanned: :meth:`FileRepository.purge_interrupted` (run by the
purge job) removes them once the entry is older than :data:`JOURNAL_GRACE_SECONDS`.

The client's filename is never stored. Sealing and opening big files runs in a worker thread
so a 10 MB upload does not stall the event loop for other tenants.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from kyc_host.crypto.records import RecordCipher, TenantCipher
from kyc_host.store import bounded
from kyc_host.store.base import Doc, Store, StoreError, fresh_batches, in_, lt
from kyc_host.store.customers import new_id

T = TypeVar("T")
COLLECTION = "files"
CHUNK_BYTES = 1024 * 1024
#: Files (and upload bodies) larger than this are sealed, opened and parsed in a worker
#: thread instead of on the loop.
THREAD_THRESHOLD = 256 * 1024
#: Those threads: not asyncio's default executor, which also resolves host names (Tornado's
#: default resolver). Under an upload load, SEP-10 logins waited there seconds behind
#: sealing jobs for their Horizon lookup (L1 mixed load at 150 req/s: POST /auth p50 1.7 s).
#: Module-level and never shut down, on purpose: unlike the SQLite store's threads (each
#: holds that store's connection) these hold nothing to close -- each job is a pure function
#: of its arguments. One pool per process is the CPU bound meant (2 threads, 2 vCPUs), shared
#: by every FileRepository; those are built from (store, tenant) alone (sep12_tenant.py,
#: retention/erasure.py, crypto/rotation.py), where no Server is at hand. Its threads start
#: at the first file above THREAD_THRESHOLD, so the ``serve`` supervisor (which never seals
#: files) forks its workers with none. At exit concurrent.futures joins them: idle ones at
#: once, a running job within milliseconds; forked workers end with os._exit anyway.
_CRYPTO = ThreadPoolExecutor(2, thread_name_prefix="file-crypto")
#: Crypto work that waited longer than this for a thread is refused unrun (StoreUnavailable:
#: 503 + Retry-After), so an overloaded process sheds uploads instead of letting them run
#: into client timeouts (reliability-plan L2), as the SQLite store does with its queue.
QUEUE_TIMEOUT_SECONDS = bounded.QUEUE_TIMEOUT_SECONDS
#: How long an uploaded file that no customer references is kept (SEP-12 ``expires_at``).
UNATTACHED_TTL_SECONDS = 24 * 3600
#: Expired files the purge reads at a time (``FileRepository.purge_expired``).
PURGE_BATCH = 1000
#: A journal entry older than this belongs to a create or delete that was interrupted (both
#: take seconds at most: every store call is bounded), so its leftover chunks may go.
JOURNAL_GRACE_SECONDS = 10 * 60


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A stored file's metadata (never its contents)."""

    id: str
    content_type: str
    size: int
    created_at: float
    expires_at: float | None  # None once attached to a customer
    customer_id: str | None
    owner_ix: str
    account_ix: str
    digest: str


class FileRepository:
    def __init__(self, store: Store, tenant_id: str, cipher: TenantCipher) -> None:
        self.tenant_id = tenant_id
        self.cipher = cipher
        self._files = store.tenant(tenant_id, "files")
        self._blobs = store.tenant(tenant_id, "blobs")
        self._journal = store.tenant(tenant_id, "blob_journal")
        self._customers = store.tenant(tenant_id, "customers")

    async def digest(self, data: bytes) -> str:
        """The keyed digest of a file's contents (equality checks without plaintext), in a
        thread for big files: hashlib releases the GIL, and hashing 10 MiB on the loop held
        every other request for ~7 ms, twice per upload (reliability-plan L4)."""
        return await threaded_if_large(len(data), self.cipher.digest, "file", data)

    async def create(self, data: bytes, content_type: str, *, owner_ix: str, account_ix: str,
                     customer_id: str | None = None, owner_key: str | None = None,
                     digest: str | None = None) -> FileInfo:
        """Encrypt and store a file; the file object is written last, after every chunk.

        A new file expires after UNATTACHED_TTL_SECONDS unless :meth:`attach` is called
        once a written record names it (so nothing that no record names is kept for ever).
        ``owner_key`` (the uploader's identity key) is kept sealed under the file's own key,
        so a reindex can recompute the owner's blind indexes. ``digest`` is
        :meth:`digest` of ``data`` if the caller has it already.
        """
        file_id = new_id()
        cipher, wrapped = self.cipher.new_record(COLLECTION, file_id)
        count = max(1, -(-len(data) // CHUNK_BYTES))
        await self._begin(file_id, count)
        # Sealed and written one chunk at a time: an upload in flight holds one sealed chunk
        # beside its plaintext, not a second copy of the whole file (20 concurrent 10 MB
        # uploads are part of the noisy-neighbour load, reliability-plan L4).
        for n in range(count):
            piece = data[n * CHUNK_BYTES:(n + 1) * CHUNK_BYTES]
            blob = await threaded_if_large(len(piece), cipher.seal, _chunk_field(n, count), piece)
            await self._blobs.insert_one({"_id": _chunk_id(file_id, n), "data": blob})
        now = time.time()
        info = FileInfo(id=file_id, content_type=content_type, size=len(data), created_at=now,
                        expires_at=now + UNATTACHED_TTL_SECONDS,
                        customer_id=customer_id, owner_ix=owner_ix, account_ix=account_ix,
                        digest=digest or await self.digest(data))
        sealed_owner = None if owner_key is None else cipher.seal_text("owner", owner_key)
        await self._files.insert_one({**_info_doc(info), "key": wrapped, "chunks": count,
                                      "owner_key": sealed_owner,
                                      "ix_v": self.cipher.index_plan.write})
        await self._journal.delete_one({"_id": file_id})
        return info

    async def get(self, file_id: str) -> FileInfo | None:
        doc = await self._files.find_one({"_id": file_id})
        return None if doc is None else _info(doc)

    async def for_customer(self, customer_id: str) -> list[FileInfo]:
        docs = await self._files.find({"customer_id": customer_id}, sort=[("created_at", 1)],
                                      limit=1000)
        return [_info(d) for d in docs]

    async def count_owned(self, owner_ixs: Sequence[str]) -> int:
        """How many stored files were uploaded by the identity with these blind indexes
        (attached or not; the ``limits.max_files_per_identity`` quota)."""
        return await self._files.count({"owner": in_(owner_ixs)})

    async def attach(self, file_id: str, customer_id: str) -> None:
        """Attach a file to a customer; it no longer expires."""
        await self._files.update_one({"_id": file_id},
                                     set={"customer_id": customer_id, "expires_at": None})

    async def read(self, file_id: str) -> bytes | None:
        """The decrypted contents, or None if the file does not exist."""
        doc = await self._files.find_one({"_id": file_id})
        if doc is None:
            return None
        cipher = self.cipher.open_record(COLLECTION, file_id, doc["key"])
        count = int(doc["chunks"])
        # One chunk per call: each store call moves at most 1 MiB, well inside the store's
        # per-call timeout even on a slow link, and a bare ``_id`` is an index lookup on
        # FerretDB too (an ``$in`` scans the whole collection there).
        blobs = []
        for n in range(count):
            chunk = await self._blobs.find_one({"_id": _chunk_id(file_id, n)})
            if chunk is None:  # never left by a crash (see the module doc): corruption
                raise StoreError(f"file {file_id}: chunk {n} of {count} is missing")
            blobs.append(chunk["data"])
        return await threaded_if_large(int(doc["size"]), _open_chunks, cipher, file_id, blobs)

    async def delete(self, file_ids: Sequence[str], *,
                     expired_before: float | None = None) -> int:
        """Delete files and their contents (object first, so it stops being listed). With
        ``expired_before``, only files that still expire before it: one a PUT has claimed
        since the caller listed it (:meth:`claim` renews the expiry) is kept."""
        deleted = 0
        for file_id in file_ids:
            flt: dict[str, Any] = {"_id": file_id}
            if expired_before is not None:
                flt["expires_at"] = lt(expired_before)
            doc = await self._files.find_one(flt)
            if doc is None:
                continue
            await self._begin(file_id, int(doc["chunks"]))
            if not await self._files.delete_one(flt):  # claimed meanwhile: chunks stay too
                await self._journal.delete_one({"_id": file_id})
                continue
            deleted += 1
            ids = [_chunk_id(file_id, n) for n in range(int(doc["chunks"]))]
            await self._blobs.delete_many({"_id": in_(ids)})
            await self._journal.delete_one({"_id": file_id})
        return deleted

    async def delete_for_customer(self, customer_id: str) -> int:
        return await self.delete([f.id for f in await self.for_customer(customer_id)])

    async def claim(self, file_id: str, customer_id: str) -> bool:
        """Name the customer whose record is about to reference the file, and renew its
        expiry (it keeps expiring until :meth:`attach`), so that neither a purge running
        meanwhile deletes it nor one after a cut PUT misses the reference
        (:meth:`purge_expired`). False if the file is gone: a purge deleted it after the
        caller read it, and the record must not name it."""
        return bool(await self._files.update_one(
            {"_id": file_id},
            set={"customer_id": customer_id,
                 "expires_at": time.time() + UNATTACHED_TTL_SECONDS}))

    async def detach(self, file_id: str) -> None:
        """Let a file that its customer's record is about to stop naming expire, as an
        unattached upload does: if the record's write happens, :meth:`purge_expired` deletes
        the file should the caller not get to deleting it; if not, it attaches it again."""
        await self._files.update_one({"_id": file_id},
                                     set={"expires_at": time.time() + UNATTACHED_TTL_SECONDS})

    async def purge_expired(self, now: float | None = None) -> tuple[int, int]:
        """Delete the files that expired unattached, except those their customer's record
        names, which are attached instead. A PUT writes the record before it attaches the
        files the record names, so a PUT cut before its record's write leaves only files
        that expire, and one cut between the two leaves named files this finds. Returns
        (files deleted, files attached).

        A batch of :data:`PURGE_BATCH` at a time until none is left: one batch per run (an
        hour by default) let a tenant whose wallets leave more uploads unattached fall
        further behind each hour, for good."""
        cutoff = time.time() if now is None else now
        deleted = attached = 0

        def batch() -> Awaitable[list[Doc]]:
            return self._files.find({"expires_at": lt(cutoff)}, limit=PURGE_BATCH)

        async for found in fresh_batches(batch, PURGE_BATCH):
            docs = [d for d in found if d.get("expires_at")]
            named = await self._named(d.get("customer_id") for d in docs)
            expired = []
            for doc in docs:
                if (str(doc.get("customer_id")), str(doc["_id"])) in named:
                    await self.attach(str(doc["_id"]), str(doc["customer_id"]))
                    attached += 1
                else:
                    expired.append(str(doc["_id"]))
            deleted += await self.delete(expired, expired_before=cutoff)
        return deleted, attached

    async def as_referenced(self, files: Sequence[FileInfo]) -> list[FileInfo]:
        """``files`` as SEP-12 describes them to the wallet: one that its customer's record
        names is referenced, without ``expires_at``, although its attaching (the PUT's last
        step) has not happened yet or was cut; the purge attaches it instead of deleting."""
        named = await self._named(f.customer_id for f in files if f.expires_at is not None)
        return [replace(f, expires_at=None) if (f.customer_id, f.id) in named else f
                for f in files]

    async def _named(self, customer_ids: Iterable[str | None]) -> set[tuple[str, str]]:
        """(customer id, file id) of every file the records of these customers name."""
        owners = sorted({str(c) for c in customer_ids if c})
        named: set[tuple[str, str]] = set()
        if owners:
            for doc in await self._customers.find({"_id": in_(owners)}, fields=["files"]):
                named |= {(str(doc["_id"]), str(f["file_id"])) for f in doc.get("files") or ()}
        return named

    async def purge_interrupted(self, now: float | None = None) -> int:
        """Remove the chunks of creates and deletes that a crash interrupted: journal entries
        older than JOURNAL_GRACE_SECONDS whose file object does not exist. An entry whose
        file object exists (the crash came after the create, or before the delete's first
        step) is dropped and the file kept. Returns how many files' chunks were removed."""
        cutoff = (time.time() if now is None else now) - JOURNAL_GRACE_SECONDS
        removed = 0
        for entry in await self._journal.find({"at": lt(cutoff)}, limit=1000):
            file_id = str(entry["_id"])
            if await self._files.find_one({"_id": file_id}) is None:
                ids = [_chunk_id(file_id, n) for n in range(int(entry["chunks"]))]
                removed += bool(await self._blobs.delete_many({"_id": in_(ids)}))
            await self._journal.delete_one({"_id": file_id})
        return removed

    async def _begin(self, file_id: str, chunks: int) -> None:
        """Journal that ``file_id``'s chunks are about to be written or deleted (replacing an
        entry an earlier interrupted attempt left)."""
        await self._journal.replace_one(
            {"_id": file_id}, {"_id": file_id, "chunks": chunks, "at": time.time()},
            upsert=True)


def _chunk_id(file_id: str, n: int) -> str:
    return f"{file_id}.{n}"


def _chunk_field(n: int, count: int) -> str:
    return f"chunk:{n}/{count}"


def _open_chunks(cipher: RecordCipher, file_id: str, blobs: list[bytes]) -> bytes:
    count = len(blobs)
    return b"".join(cipher.open(_chunk_field(n, count), blob) for n, blob in enumerate(blobs))


async def threaded_if_large(size: int, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, on the file-crypto threads if it works on over THREAD_THRESHOLD bytes
    (a file's sealing, opening and digest; an upload's body parsing, sep/sep12.py), so that
    it does not hold the event loop every tenant is served by."""
    if size <= THREAD_THRESHOLD:
        return fn(*args)
    return await bounded.run_bounded(_CRYPTO, lambda: fn(*args), bound=QUEUE_TIMEOUT_SECONDS,
                                     busy="file crypto busy")


def _info_doc(info: FileInfo) -> Doc:
    return {"_id": info.id, "content_type": info.content_type, "size": info.size,
            "created_at": info.created_at, "expires_at": info.expires_at,
            "customer_id": info.customer_id, "owner": info.owner_ix,
            "owner_account": info.account_ix, "digest": info.digest}


def _info(doc: Doc) -> FileInfo:
    return FileInfo(id=str(doc["_id"]), content_type=doc["content_type"], size=int(doc["size"]),
                    created_at=doc["created_at"], expires_at=doc.get("expires_at"),
                    customer_id=doc.get("customer_id"), owner_ix=doc["owner"],
                    account_ix=doc["owner_account"], digest=doc["digest"])
