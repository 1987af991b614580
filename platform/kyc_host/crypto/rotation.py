"""Key rotation without downtime: tenant KEK, blind-index key, platform master key.

Each job moves through named stages, waits between two stages until every server process
has loaded the first (crypto/tenant_keys.py ``settle``), and walks the records in ``_id``
order in batches, saving a checkpoint after each batch (crypto/jobs.py). Running the same
command again after a crash resumes where the checkpoint says.

``rotate_kek`` (``kyc-host keys rotate --tenant``):
  add (every process learns KEK n+1) -> activate (new data keys are wrapped by n+1, and every
  save re-wraps the key it writes) -> rewrap (customers, files, held records: the data key is
  unwrapped and wrapped again; data is never re-encrypted) -> verify (nothing left under an
  old version, else another pass) -> retire (old KEK versions are dropped).

``reindex`` (``kyc-host keys reindex --tenant``): the four index stages of crypto/records.py,
with a backfill of every customer (identities, transaction bindings, email/phone indexes) and
file (owner indexes, content digest) in the "write" stage, then old index documents deleted.

``rotate_master`` (``kyc-host keys rotate-master``): every tenant's secrets re-wrapped under
the newest master key version; afterwards the old version can leave the key file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import os
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from kyc_host import audit
from kyc_host.crypto.jobs import BatchHook, Checkpoint, Lease, Progress, lease_id, note
from kyc_host.crypto.master import KeyProvider, WrappedKey
from kyc_host.crypto.records import TenantCipher
from kyc_host.crypto.tenant_keys import (
    KeyOperationError,
    live_record,
    read_secrets,
    rewrap_record,
    settle,
    update_secrets,
)
from kyc_host.store.base import Collection, Doc, DuplicateKeyError, Store, gt, in_, ne
from kyc_host.store.customers import CustomerRepository
from kyc_host.store.files import FileRepository
from kyc_host.tenancy.secrets import TenantSecrets

BATCH = 100
MAX_PASSES = 5


@dataclass
class JobContext:
    """What a key job needs: the store and master keys, how long stages take to reach
    every process, who to name in the audit log, and where progress goes."""

    store: Store
    keys: KeyProvider
    refresh_seconds: float
    actor: str = "cli"
    batch: int = BATCH
    progress: bool = True
    stream: TextIO | None = None
    on_batch: BatchHook | None = None
    counters: dict[str, int] = field(default_factory=dict)
    #: Set once the run holds the job's lease (a background starter waits for it, so it can
    #: tell "started" from "another run is busy" before answering).
    started: asyncio.Event = field(default_factory=asyncio.Event)

    def say(self, message: str) -> None:
        note(message, self.stream, self.progress)

    def bar(self, label: str, total: int) -> Progress:
        return Progress(label, total, self.stream, self.progress)

    async def batch_done(self, pass_name: str, done: int) -> None:
        if self.on_batch is not None:
            result = self.on_batch(pass_name, done)
            if inspect.isawaitable(result):
                await result


def rotate_job_id(tenant_id: str) -> str:
    """The ``key_jobs`` id of a tenant's KEK rotation (checkpoint; lease is ``<id>:lease``)."""
    return f"rotate:{tenant_id}"


def reindex_job_id(tenant_id: str) -> str:
    """The ``key_jobs`` id of a tenant's reindex."""
    return f"reindex:{tenant_id}"


def tenant_job_documents(tenant_id: str) -> list[str]:
    """The ids of every ``key_jobs`` document of one tenant: its jobs' checkpoints and
    leases. Offboarding removes them (tenancy/service.py): a checkpoint left behind would be
    resumed by the next tenant applied under the same id, whose fresh secrets never held
    the job's target version."""
    jobs = [rotate_job_id(tenant_id), reindex_job_id(tenant_id)]
    return [*jobs, *map(lease_id, jobs)]


async def _run(ctx: JobContext, job_id: str, stages: dict[str, Any], first: Any) -> Doc:
    """Take the lease, start or resume the job, and run its stages until "done"."""
    job = Checkpoint(ctx.store, job_id)
    lease = Lease(job.jobs, job_id)
    await lease.acquire()
    ctx.started.set()
    try:
        state = await job.load()
        if not state or state.get("stage") == "done":
            await first(job)
        else:
            ctx.counters.update(state.get("counters") or {})
            ctx.say(f"{job_id}: resuming at stage {state['stage']!r}")
        while job.state["stage"] != "done":
            await stages[job.state["stage"]](job, lease)
            await lease.renew()
        return job.state
    finally:
        await lease.release()


async def _walk(ctx: JobContext, job: Checkpoint, lease: Lease, coll: Collection, name: str,
                handle: Any) -> None:
    """Call ``handle(doc)`` for every document after the checkpoint cursor, in ``_id``
    order, saving the cursor after each batch."""
    cursor = str(job.state.get("cursor", ""))
    total = await coll.count({})
    bar = ctx.bar(name, total)
    if cursor:  # resumed: what lies before the cursor is done
        bar.done = max(total - await coll.count({"_id": gt(cursor)}), 0)
    done = 0
    while True:
        docs = await coll.find({"_id": gt(cursor)}, sort=[("_id", 1)], limit=ctx.batch)
        if not docs:
            break
        for doc in docs:
            if await handle(doc):
                ctx.counters[name] = ctx.counters.get(name, 0) + 1
        cursor = str(docs[-1]["_id"])
        done += len(docs)
        await job.save(cursor=cursor, counters=dict(ctx.counters))
        await lease.renew()
        bar.advance(len(docs))
        await ctx.batch_done(name, done)
    bar.close()


# --- tenant KEK rotation ---


async def rotate_kek(ctx: JobContext, tenant_id: str) -> Doc:
    """Rotate the tenant's key-encryption key and re-wrap every data key under it."""
    tenant_coll = ctx.store.tenant
    customers, files = tenant_coll(tenant_id, "customers"), tenant_coll(tenant_id, "files")
    erasures = tenant_coll(tenant_id, "erasures")

    async def first(job: Checkpoint) -> None:
        secrets = await read_secrets(ctx.store, ctx.keys, tenant_id)
        target = max(secrets.data_keks) + 1
        await job.save(kind="rotate", tenant=tenant_id, stage="add", target=target,
                       previous=sorted(secrets.data_keks), cursor="", passes=0,
                       started_at=time.time(), counters={})
        ctx.say(f"tenant {tenant_id}: rotating the key-encryption key to v{target}")

    def target_of(job: Checkpoint) -> int:
        return int(job.state["target"])

    async def add(job: Checkpoint, lease: Lease) -> None:
        target = target_of(job)
        await update_secrets(ctx.store, ctx.keys, tenant_id, lambda s: None
                             if target in s.data_keks else dataclasses.replace(
                                 s, data_keks={**s.data_keks, target: os.urandom(32)}))
        ctx.say(f"KEK v{target} added; waiting until every server has it")
        await settle(ctx.refresh_seconds)
        await job.save(stage="activate")

    async def activate(job: Checkpoint, lease: Lease) -> None:
        target = target_of(job)

        def change(s: TenantSecrets) -> TenantSecrets | None:
            if target not in s.data_keks:
                raise KeyOperationError(f"KEK v{target} is missing from the stored secrets "
                                        "(overwritten by a concurrent write?); rerun")
            return None if s.kek_version == target else dataclasses.replace(
                s, kek_version=target)

        await update_secrets(ctx.store, ctx.keys, tenant_id, change)
        ctx.say(f"KEK v{target} now wraps new data keys; waiting until every server uses it")
        await settle(ctx.refresh_seconds)
        await job.save(stage="rewrap", cursor="", part="customers")

    async def rewrap(job: Checkpoint, lease: Lease) -> None:
        cipher = TenantCipher.from_secrets(tenant_id,
                                           await read_secrets(ctx.store, ctx.keys, tenant_id))
        parts = [("customers", customers, "key", "customers"), ("files", files, "key", "files"),
                 ("held", erasures, "record.key", "customers")]
        start = [p[0] for p in parts].index(job.state.get("part", "customers"))
        for name, coll, path, aad_collection in parts[start:]:
            async def handle(doc: Doc, path: str = path, coll: Collection = coll,
                             aad_collection: str = aad_collection) -> bool:
                return await _rewrap_doc(cipher, coll, doc, path, aad_collection)
            await _walk(ctx, job, lease, coll, name, handle)
            following = parts.index((name, coll, path, aad_collection)) + 1
            if following < len(parts):
                await job.save(part=parts[following][0], cursor="")
        await job.save(stage="verify", cursor="")

    async def verify(job: Checkpoint, lease: Lease) -> None:
        target = target_of(job)
        left = (await customers.count({"key.v": ne(target)})
                + await files.count({"key.v": ne(target)})
                + await erasures.count({"state": "held", "record.key.v": ne(target)}))
        if left == 0:
            await job.save(stage="retire")
            return
        passes = int(job.state.get("passes", 0)) + 1
        if passes >= MAX_PASSES:
            raise KeyOperationError(f"{left} records still use an old KEK after {passes} "
                                    "passes; rerun the command")
        ctx.say(f"{left} records were written under an old KEK meanwhile; another pass")
        await job.save(stage="rewrap", cursor="", part="customers", passes=passes)

    async def retire(job: Checkpoint, lease: Lease) -> None:
        target = target_of(job)
        retired: list[int] = []

        def change(s: TenantSecrets) -> TenantSecrets | None:
            retired.extend(v for v in s.data_keks if v != target)
            if not retired:
                return None
            return dataclasses.replace(s, data_keks={target: s.data_keks[target]})

        await update_secrets(ctx.store, ctx.keys, tenant_id, change)
        await audit.record(ctx.store, tenant_id, actor=ctx.actor, action="key.rotate_kek",
                           details={"kek_version": target, "retired": sorted(set(retired)),
                                    "rewrapped": sum(ctx.counters.values())})
        ctx.say(f"done: every data key is wrapped by KEK v{target}; retired "
                f"{', '.join(f'v{v}' for v in sorted(set(retired))) or 'nothing'}")
        await job.save(stage="done", finished_at=time.time())

    stages = {"add": add, "activate": activate, "rewrap": rewrap, "verify": verify,
              "retire": retire}
    return await _run(ctx, rotate_job_id(tenant_id), stages, first)


async def _rewrap_doc(cipher: TenantCipher, coll: Collection, doc: Doc, path: str,
                      aad_collection: str) -> bool:
    """Re-wrap one stored data key under the current KEK; True if it changed."""
    holder: Any = doc
    for part in path.split(".")[:-1]:
        holder = holder.get(part) if isinstance(holder, dict) else None
    wrapped = holder.get("key") if isinstance(holder, dict) else None
    if not isinstance(wrapped, dict) or wrapped.get("v") == cipher.kek_version:
        return False
    new = cipher.rewrap(aad_collection, str(doc["_id"]), wrapped)
    # Only the key changes, and only if no one re-wrapped it meanwhile: a concurrent save
    # of the record wraps the same data key, so either write leaves a consistent record.
    await coll.update_one({"_id": doc["_id"], f"{path}.v": wrapped.get("v")},
                          set={path: new})
    return True


# --- blind-index key rotation ---


async def reindex(ctx: JobContext, tenant_id: str) -> Doc:
    """Move the tenant's blind indexes to a new index key (stages: module docstring)."""

    async def first(job: Checkpoint) -> None:
        secrets = await read_secrets(ctx.store, ctx.keys, tenant_id)
        target = secrets.index_next or max(secrets.index_keys) + 1
        await job.save(kind="reindex", tenant=tenant_id, stage="read", target=target,
                       previous=secrets.index_version, cursor="", started_at=time.time(),
                       counters={})
        ctx.say(f"tenant {tenant_id}: reindexing under index key v{target}")

    async def stage_read(job: Checkpoint, lease: Lease) -> None:
        target = int(job.state["target"])

        def change(s: TenantSecrets) -> TenantSecrets | None:
            if s.index_next == target:
                return None
            return dataclasses.replace(s, index_keys={**s.index_keys, target: os.urandom(32)},
                                       index_next=target, index_stage="read")

        await update_secrets(ctx.store, ctx.keys, tenant_id, change)
        ctx.say(f"index key v{target} added (lookups try both); waiting for every server")
        await settle(ctx.refresh_seconds)
        await job.save(stage="write")

    async def stage_write(job: Checkpoint, lease: Lease) -> None:
        target = int(job.state["target"])

        def change(s: TenantSecrets) -> TenantSecrets | None:
            if s.index_next != target or target not in s.index_keys:
                raise KeyOperationError(f"index key v{target} is missing from the stored "
                                        "secrets (overwritten by a concurrent write?)")
            return None if s.index_stage == "write" else dataclasses.replace(
                s, index_stage="write")

        await update_secrets(ctx.store, ctx.keys, tenant_id, change)
        ctx.say(f"new index values use v{target}; waiting for every server")
        await settle(ctx.refresh_seconds)
        await job.save(stage="customers", cursor="")

    async def backfill_customers(job: Checkpoint, lease: Lease) -> None:
        backfill = await _Backfill.build(ctx, tenant_id, int(job.state["target"]))
        await _walk(ctx, job, lease, ctx.store.tenant(tenant_id, "customers"), "customers",
                    backfill.customer)
        await job.save(stage="files", cursor="")

    async def backfill_files(job: Checkpoint, lease: Lease) -> None:
        backfill = await _Backfill.build(ctx, tenant_id, int(job.state["target"]))
        await _walk(ctx, job, lease, ctx.store.tenant(tenant_id, "files"), "files",
                    backfill.file)
        await job.save(stage="settle", cursor="")

    async def stage_settle(job: Checkpoint, lease: Lease) -> None:
        target = int(job.state["target"])

        def change(s: TenantSecrets) -> TenantSecrets | None:
            if s.index_version == target and s.index_next is None:
                return None
            return dataclasses.replace(s, index_keys={target: s.index_keys[target]},
                                       index_version=target, index_next=None,
                                       index_stage=None)

        await update_secrets(ctx.store, ctx.keys, tenant_id, change)
        ctx.say(f"index key v{target} is the only one now; waiting for every server")
        await settle(ctx.refresh_seconds)
        await job.save(stage="cleanup")

    async def cleanup(job: Checkpoint, lease: Lease) -> None:
        target = int(job.state["target"])
        removed = 0
        for name in ("identities", "transactions"):
            removed += await ctx.store.tenant(tenant_id, name).delete_many({"v": ne(target)})
        await audit.record(ctx.store, tenant_id, actor=ctx.actor, action="key.reindex",
                           details={"index_version": target,
                                    "previous": int(job.state.get("previous", 0)),
                                    "old_entries_removed": removed,
                                    **{k: v for k, v in ctx.counters.items()}})
        ctx.say(f"done: blind indexes use index key v{target}; {removed} old entries removed")
        await job.save(stage="done", finished_at=time.time())

    stages = {"read": stage_read, "write": stage_write, "customers": backfill_customers,
              "files": backfill_files, "settle": stage_settle, "cleanup": cleanup}
    return await _run(ctx, reindex_job_id(tenant_id), stages, first)


@dataclass
class _Backfill:
    """Recomputes one record's blind indexes under the target version (write stage)."""

    ctx: JobContext
    tenant_id: str
    target: int
    cipher: TenantCipher
    customers: CustomerRepository
    files: FileRepository

    @classmethod
    async def build(cls, ctx: JobContext, tenant_id: str, target: int) -> _Backfill:
        secrets = await read_secrets(ctx.store, ctx.keys, tenant_id)
        if secrets.index_next != target or secrets.index_stage != "write":
            raise KeyOperationError("the tenant is not in the reindex write stage; rerun")
        cipher = TenantCipher.from_secrets(tenant_id, secrets)
        return cls(ctx, tenant_id, target, cipher,
                   CustomerRepository(ctx.store, tenant_id, cipher),
                   FileRepository(ctx.store, tenant_id, cipher))

    def _coll(self, name: str) -> Collection:
        return self.ctx.store.tenant(self.tenant_id, name)

    async def customer(self, doc: Doc) -> bool:
        record = await self.customers.load(str(doc["_id"]))
        if record is None:
            return False
        identities = self._coll("identities")
        for key in set(record.identities.values()):
            # Every claim in this stage inserts the old version too, and an unlink deletes
            # every version before it saves the record: without an old row the identity was
            # unlinked (since the load above, or by an unlink cut before its save), and a
            # new row would make it reach the customer again. Checked before the insert
            # and again after it (an unlink may land in between).
            target_ix = self.cipher.blind_index("identity", key, self.target)
            if not await self._still_linked(key, target_ix, record.id):
                continue
            account = key.partition("|")[0]
            # A duplicate was claimed in the write stage already, by the same customer.
            with contextlib.suppress(DuplicateKeyError):
                await identities.insert_one({
                    "_id": target_ix, "customer_id": record.id, "v": self.target,
                    "account_ix": self.cipher.blind_index("account", account, self.target),
                    "created_at": time.time()})
            if not await self._still_linked(key, target_ix, record.id):
                await identities.delete_one({"_id": target_ix, "customer_id": record.id})
        await self._transactions(record.id, record.cipher)
        email, phone = record.fields.get("email_address"), record.fields.get("mobile_number")
        await self._coll("customers").update_one({"_id": record.id}, set={
            "email_ix": "" if email is None else self.cipher.email_index(email),
            "phone_ix": "" if phone is None else self.cipher.phone_index(phone),
            "ix_v": self.target})
        if await self._coll("customers").find_one({"_id": record.id}) is None:
            # Erased while we worked: drop what we just inserted for it.
            await identities.delete_many({"customer_id": record.id})
            await self._coll("transactions").delete_many({"customer_id": record.id})
        return True

    async def _still_linked(self, key: str, target_ix: str, customer_id: str) -> bool:
        """Whether the identity still points at the customer under an older version."""
        older = [ix for ix in self.cipher.blind_indexes("identity", key) if ix != target_ix]
        return not older or bool(await self._coll("identities").count(
            {"_id": in_(older), "customer_id": customer_id}))

    async def _transactions(self, customer_id: str, cipher: Any) -> None:
        transactions = self._coll("transactions")
        for doc in await transactions.find({"customer_id": customer_id, "v": ne(self.target)},
                                           limit=10_000):
            sealed = doc.get("tid")
            if not isinstance(sealed, bytes):
                self.ctx.counters["transactions_unindexable"] = (
                    self.ctx.counters.get("transactions_unindexable", 0) + 1)
                continue  # bound before ids were kept sealed: cannot be recomputed
            tid = cipher.open_text("transaction_id", sealed)
            with contextlib.suppress(DuplicateKeyError):
                await transactions.insert_one({
                    "_id": self.cipher.blind_index("transaction", tid, self.target),
                    "customer_id": customer_id, "v": self.target, "tid": sealed})

    async def file(self, doc: Doc) -> bool:
        if doc.get("ix_v") == self.target:
            return False
        file_id = str(doc["_id"])
        changes: dict[str, Any] = {"ix_v": self.target}
        sealed_owner = doc.get("owner_key")
        if doc.get("owner") and isinstance(sealed_owner, bytes):
            cipher = self.cipher.open_record("files", file_id, doc["key"])
            key = cipher.open_text("owner", sealed_owner)
            changes["owner"] = self.cipher.blind_index("identity", key, self.target)
            changes["owner_account"] = self.cipher.blind_index(
                "account", key.partition("|")[0], self.target)
        elif doc.get("owner"):
            # Stored before owners were sealed: only its customer can reach it from now on.
            changes.update(owner="", owner_account="")
        data = await self.files.read(file_id)
        if data is None:
            return False
        changes["digest"] = self.cipher.digest("file", data, self.target)
        await self._coll("files").update_one({"_id": file_id}, set=changes)
        return True


# --- platform master key rotation ---


async def rotate_master(ctx: JobContext) -> Doc:
    """Re-wrap every live tenant's secrets under the newest master key version."""
    tenants = ctx.store.platform("tenants")
    version = ctx.keys.current_version

    async def first(job: Checkpoint) -> None:
        await job.save(kind="rotate-master", stage="rewrap", target=version, cursor="",
                       passes=0, started_at=time.time(), counters={})
        ctx.say(f"re-wrapping every tenant's secrets under master key v{version}")

    async def rewrap(job: Checkpoint, lease: Lease) -> None:
        if int(job.state["target"]) != version:
            # The key file gained another version since the run started: aim at the newest.
            await job.save(target=version)

        async def handle(doc: Doc) -> bool:
            if doc.get("status") not in ("active", "suspended"):
                return False  # offboarded: its secrets were destroyed
            if WrappedKey.from_doc(doc["secrets"]).version == version:
                return False
            for _ in range(3):
                if await rewrap_record(ctx.store, ctx.keys, doc):
                    return True
                doc = await live_record(ctx.store, str(doc["_id"]))
            return False  # changing right now; the verify stage sends us round again

        await _walk(ctx, job, lease, tenants, "tenants", handle)
        await job.save(stage="verify", cursor="")

    async def verify(job: Checkpoint, lease: Lease) -> None:
        left = await _tenants_under_other_versions(ctx.store, version)
        if not left:
            ctx.say("waiting until every server has reloaded the re-wrapped tenants")
            await settle(ctx.refresh_seconds)
            await audit.record(ctx.store, None, actor=ctx.actor, action="key.rotate_master",
                               details={"master_version": version,
                                        "rewrapped": ctx.counters.get("tenants", 0)})
            ctx.say(f"done: every tenant's secrets are wrapped by master key v{version}")
            await job.save(stage="done", finished_at=time.time())
            return
        passes = int(job.state.get("passes", 0)) + 1
        if passes >= MAX_PASSES:
            raise KeyOperationError(f"tenants still under older master keys: {left}; rerun")
        await job.save(stage="rewrap", cursor="", passes=passes)

    return await _run(ctx, "rotate-master:*", {"rewrap": rewrap, "verify": verify}, first)


async def _tenants_under_other_versions(store: Store, version: int) -> list[str]:
    docs = await store.platform("tenants").find({"status": in_(["active", "suspended"])})
    return sorted(str(d["_id"]) for d in docs
                  if WrappedKey.from_doc(d["secrets"]).version != version)


async def master_versions_in_use(store: Store) -> dict[int, list[str]]:
    """Master key version -> the live tenants whose secrets it wraps."""
    used: dict[int, list[str]] = {}
    docs = await store.platform("tenants").find({"status": in_(["active", "suspended"])})
    for doc in docs:
        used.setdefault(WrappedKey.from_doc(doc["secrets"]).version, []).append(str(doc["_id"]))
    return used
