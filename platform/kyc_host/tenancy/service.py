"""Applying tenant documents to the store: the one write path for files and the API.

The store is the source of truth at run time. Each tenant has one manager: a tenant applied
from a file is file-managed (the API may not change it), a tenant created through the API is
API-managed (a file with the same id is refused). Hosts are claimed in ``tenant_hosts`` (one
document per host, keyed by the host), so two tenants can never hold the same host even when
two processes apply at once.

Every change gives the tenant record a new random ``rev`` and a fresh ``updated_at``; each
process polls for recently updated records (see registry.py) and so serves the change within
seconds. (A global counter would need an atomic increment, which FerretDB v1 lacks.)
"""

from __future__ import annotations

import dataclasses
import logging
import time
import tomllib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stellar_sdk import Keypair

from kyc_host.callbacks.config import check_webhook_secrets
from kyc_host.crypto.master import KeyProvider
from kyc_host.crypto.rotation import tenant_job_documents
from kyc_host.errors import ConfigError
from kyc_host.store.base import DuplicateKeyError, Store, gt, gte, in_, nin
from kyc_host.tenancy.schema import TenantConfig, parse_tenant
from kyc_host.tenancy.secrets import generate_secrets, seed_from_env, unwrap_secrets, wrap_secrets

log = logging.getLogger(__name__)
#: Records read per query by :meth:`TenantService.records` (bounds the query's size).
_BATCH = 500


@dataclass(frozen=True, slots=True)
class TenantDocument:
    """A validated tenant document and who manages it ("file:<path>" or "api")."""

    config: TenantConfig
    raw: Mapping[str, Any]
    manager: str

    @property
    def source(self) -> str:
        return self.manager.removeprefix("file:")


@dataclass(frozen=True, slots=True)
class ApplyResult:
    tenant_id: str
    action: str  # created | updated | unchanged
    #: The file that managed the tenant until this apply, when another file took it over
    #: (a moved file is allowed; an accidental second file for one id should be seen).
    moved_from: str | None = None


def read_tenant_files(path: Path) -> list[TenantDocument]:
    """Parse one file or every ``*.toml`` of a directory; all must be valid (else ConfigError)."""
    files = sorted(path.glob("*.toml")) if path.is_dir() else [path]
    if not path.exists():
        raise ConfigError(str(path), "", "no such file or directory")
    docs = [_read_one(f) for f in files]
    seen: dict[str, str] = {}
    for doc in docs:
        other = seen.setdefault(doc.config.id, doc.source)
        if other != doc.source:
            raise ConfigError(doc.source, "id", f"also defined in {other}", doc.config.id)
    return docs


def _read_one(path: Path) -> TenantDocument:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc.strerror}") from None
    return TenantDocument(parse_tenant(raw, str(path)), raw, f"file:{path}")


class TenantService:
    def __init__(self, store: Store, keys: KeyProvider,
                 environ: Mapping[str, str] | None = None) -> None:
        self.store = store
        self.keys = keys
        self.environ = environ if environ is not None else {}
        self.tenants = store.platform("tenants")
        self.hosts = store.platform("tenant_hosts")

    async def apply(self, docs: Sequence[TenantDocument]) -> list[ApplyResult]:
        """Apply documents together: every check runs before the first write."""
        _check_batch(docs)
        existing = {d.config.id: await self.tenants.find_one({"_id": d.config.id}) for d in docs}
        for doc in docs:
            await self._check(doc, existing[doc.config.id])
        await self._check_signing_keys(docs)
        return [await self._write(doc, existing[doc.config.id]) for doc in docs]

    async def _check(self, doc: TenantDocument, current: Mapping[str, Any] | None) -> None:
        cfg = doc.config
        if (current is not None and current.get("status") == "deleted"
                and not current.get("offboard_finished")):
            # Its offboarding is still waiting for other processes' late writes (or was cut
            # short): the id's data is not dropped for the last time yet.
            raise ConfigError(doc.source, "id", "tenant is still being offboarded; apply it "
                              "once `kyc-host tenant delete ID --yes` has finished (run it "
                              "again if it was interrupted)", cfg.id)
        if current is not None and current.get("status") != "deleted":
            kind, new_kind = current["manager"].split(":")[0], doc.manager.split(":")[0]
            if kind != new_kind:
                owner = ("the management API" if kind == "api"
                         else current["manager"].removeprefix("file:"))
                raise ConfigError(doc.source, "id",
                                  f"tenant is managed by {owner}; change it there", cfg.id)
        taken = await self.hosts.find({"_id": in_(list(cfg.hosts))})
        for claim in taken:
            if claim["tenant"] != cfg.id:
                raise ConfigError(doc.source, "hosts",
                                  f"host is already served by tenant {claim['tenant']!r}",
                                  claim["_id"])
        env_seed = seed_from_env(cfg.signing_key_env, self.environ, doc.source)
        new = current is None or current.get("status") == "deleted"
        if new and cfg.signing_key_env and env_seed is None:
            raise ConfigError(doc.source, "signing_key_env",
                              f"environment variable {cfg.signing_key_env} is not set")
        check_webhook_secrets(cfg.webhooks, self.environ, doc.source)

    async def _check_signing_keys(self, docs: Sequence[TenantDocument]) -> None:
        """Refuse a signing seed from the environment that another tenant also uses
        (reliability-plan A3): one SEP-10 key would sign both tenants' challenges, so a
        challenge of one would verify at the other.

        Only environment seeds need the check (generated seeds are random). Compared with the
        batch and with every live tenant's current and still-valid previous keys, as they
        will be after this apply. Not exclusive against a concurrent apply of another process.
        """
        wanted: dict[str, TenantDocument] = {}  # public key -> the document taking it
        for doc in docs:
            seed = seed_from_env(doc.config.signing_key_env, self.environ, doc.source)
            if seed is None:
                continue
            other = wanted.setdefault(Keypair.from_secret(seed).public_key, doc)
            if other.config.id != doc.config.id:
                raise _shared_key(doc, other.config.id)
        if not wanted:
            return
        now = time.time()
        for record in await self.list_all():
            secrets = unwrap_secrets(self.keys, record["_id"], record["secrets"])
            keys = {Keypair.from_secret(p.seed).public_key
                    for p in secrets.signing_previous if p.until > now}
            if not any(d.config.id == record["_id"] for d in wanted.values()):
                keys.add(secrets.signing_keypair.public_key)  # kept: no new seed replaces it
            for public in keys:
                taker = wanted.get(public)
                if taker is not None and taker.config.id != record["_id"]:
                    raise _shared_key(taker, record["_id"])

    async def _write(self, doc: TenantDocument, current: Mapping[str, Any] | None) -> ApplyResult:
        cfg = doc.config
        env_seed = seed_from_env(cfg.signing_key_env, self.environ, doc.source)
        alive = current is not None and current.get("status") != "deleted"
        if alive and current is not None:
            secrets = unwrap_secrets(self.keys, cfg.id, current["secrets"])
            if current["config"] == dict(doc.raw) and current["manager"] == doc.manager and (
                    env_seed is None or env_seed == secrets.signing_seed):
                return ApplyResult(cfg.id, "unchanged")
            if env_seed is not None and env_seed != secrets.signing_seed:
                secrets = dataclasses.replace(secrets, signing_seed=env_seed)
        else:
            secrets = generate_secrets(env_seed)
            await self.store.prepare_tenant(cfg.id)
        await self._claim_hosts(cfg, doc.source)
        held = bool(alive and current and current.get("suspended_by_operator"))
        now = time.time()
        record = {
            "_id": cfg.id,
            "config": dict(doc.raw),
            "manager": doc.manager,
            # An operator's suspension (set_status) outlives edits of the document itself;
            # only an explicit resume lifts it.
            "status": "suspended" if cfg.status == "suspended" or held else "active",
            "suspended_by_operator": held,
            "secrets": wrap_secrets(self.keys, cfg.id, secrets),
            "created_at": current["created_at"] if alive and current else now,
            "updated_at": now,
            "rev": uuid.uuid4().hex,
        }
        await self.tenants.replace_one({"_id": cfg.id}, record, upsert=True)
        await self.hosts.delete_many({"tenant": cfg.id, "_id": nin(list(cfg.hosts))})
        action = "updated" if alive else "created"
        moved_from = (str(current["manager"]) if alive and current is not None
                      and current["manager"] != doc.manager else None)
        log.info("tenant %s %s", cfg.id, action, extra={"tenant": cfg.id})
        return ApplyResult(cfg.id, action, moved_from)

    async def _claim_hosts(self, cfg: TenantConfig, source: str) -> None:
        for host in cfg.hosts:
            try:
                await self.hosts.insert_one({"_id": host, "tenant": cfg.id})
            except DuplicateKeyError:
                claim = await self.hosts.find_one({"_id": host})
                if claim is not None and claim["tenant"] != cfg.id:
                    raise ConfigError(source, "hosts",
                                      f"host is already served by tenant {claim['tenant']!r}",
                                      host) from None

    async def set_status(self, tenant_id: str, status: str) -> bool:
        matched = await self.tenants.update_one(
            {"_id": tenant_id, "status": in_(["active", "suspended"])},
            set={"status": status, "suspended_by_operator": status == "suspended",
                 "updated_at": time.time(), "rev": uuid.uuid4().hex})
        return matched == 1

    async def list_all(self) -> list[dict[str, Any]]:
        docs = await self.tenants.find({"status": in_(["active", "suspended"])},
                                       sort=[("_id", 1)])
        return docs

    async def all_records(self) -> list[dict[str, Any]]:
        return await self.tenants.find({})

    async def revisions_since(self, timestamp: float | None) -> list[dict[str, Any]]:
        """``_id``, ``rev`` and ``status`` of the records updated at or after ``timestamp``
        (None: of every record): what the registry's poll needs to tell which records
        changed, without reading (and decoding) whole records, config and wrapped secrets,
        every second."""
        query = {} if timestamp is None else {"updated_at": gte(timestamp)}
        return await self.tenants.find(query, fields=["rev", "status"])

    async def records(self, tenant_ids: Sequence[str]) -> list[dict[str, Any]]:
        """The whole records of ``tenant_ids`` (any status), in batches of bounded size."""
        found: list[dict[str, Any]] = []
        ids = list(tenant_ids)
        for start in range(0, len(ids), _BATCH):
            found += await self.tenants.find({"_id": in_(ids[start:start + _BATCH])})
        return found

    async def page(self, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Live tenants in id order, those after ``after`` (the management API's list)."""
        flt: dict[str, Any] = {"status": in_(["active", "suspended"])}
        if after:
            flt["_id"] = gt(after)
        return await self.tenants.find(flt, sort=[("_id", 1)], limit=limit)

    async def get(self, tenant_id: str) -> dict[str, Any] | None:
        """The record of a live (active or suspended) tenant; None if unknown or deleted."""
        return await self.tenants.find_one(
            {"_id": tenant_id, "status": in_(["active", "suspended"])})

    async def offboard(self, tenant_id: str) -> dict[str, Any] | None:
        """Offboard a tenant; returns the record as it was, None if there was no such tenant.

        Order matters for a crash midway: first the record is marked ``deleted`` with a new
        ``rev`` (every process drops the tenant within seconds) and its wrapped ``secrets``
        are overwritten -- the tenant's key-encryption key, index key and signing seed exist
        nowhere else, so every ciphertext of the tenant becomes unreadable (crypto-shredding);
        then its hosts are freed and its data dropped (:meth:`drop_data`). Calling it again on
        a deleted tenant finishes an interrupted run; once :meth:`offboard_finished` has
        marked the run done, the tenant is gone and this returns None, as for an id that never
        existed. Other processes may still write for the tenant until they notice the
        deletion: :meth:`drop_late_writes`, a settle interval later, removes that.
        """
        current = await self.tenants.find_one({"_id": tenant_id})
        if current is None or current.get("offboard_finished"):
            return None
        if current.get("status") != "deleted":
            now = time.time()
            await self.tenants.update_one(
                {"_id": tenant_id},
                set={"status": "deleted", "secrets": {"destroyed_at": now}, "deleted_at": now,
                     "updated_at": now, "rev": uuid.uuid4().hex})
            log.info("tenant %s offboarded", tenant_id, extra={"tenant": tenant_id})
        await self.hosts.delete_many({"tenant": tenant_id})
        await self.drop_data(tenant_id)
        return current

    async def drop_data(self, tenant_id: str) -> None:
        """Remove every document of the tenant: its own collections (``Store.drop_tenant``)
        and the platform-wide documents keyed by its id -- the checkpoints and leases of its
        key jobs (``key_jobs``) and its callback wake-up marker (``outbox_wake``). A key job's
        checkpoint left behind would be resumed by a tenant applied later under the same id
        (a rotation cut short by the offboarding then failed on every run, the purge job's
        automatic one included). ``tenant_hosts`` and ``token_index`` are cleared by
        :meth:`offboard` and ``management.auth.forget_tenant``; ``tenants`` keeps the
        deleted record and ``platform_audit`` the proof of deletion."""
        await self.store.drop_tenant(tenant_id)
        await self.store.platform("key_jobs").delete_many(
            {"_id": in_(tenant_job_documents(tenant_id))})
        await self.store.platform("outbox_wake").delete_one({"_id": tenant_id})

    async def drop_late_writes(self, tenant_id: str) -> bool:
        """Drop an offboarded tenant's data once more, a settle interval
        (``crypto.tenant_keys.settle``) after :meth:`offboard` dropped it; True if it did.

        Other processes serve the tenant until their registry notices the deletion (within
        ``tenant_refresh_seconds``), and what they had under way keeps writing after the first
        drop: a wallet's PUT, the purge job's review-queue checkpoint, a key job's checkpoint,
        a callback wake-up marker. On MongoDB such a write even recreates the tenant's
        database (without indexes), and a tenant applied later under the same id would
        inherit the rows. Only while the record is still deleted and the run not finished:
        if the id was applied again meanwhile, the data is the new tenant's and stays.
        """
        current = await self.tenants.find_one({"_id": tenant_id})
        if (current is None or current.get("status") != "deleted"
                or current.get("offboard_finished")):
            return False
        await self.drop_data(tenant_id)
        return True

    async def offboard_finished(self, tenant_id: str) -> None:
        """Mark an offboarding complete (data dropped, deletion audited): a later
        :meth:`offboard` of the id finds no tenant. The record's ``rev`` and ``updated_at``
        stay, so no process sees a change; applying the id again replaces the record."""
        await self.tenants.update_one({"_id": tenant_id, "status": "deleted"},
                                      set={"offboard_finished": True})


def _shared_key(doc: TenantDocument, owner: str) -> ConfigError:
    return ConfigError(doc.source, "signing_key_env",
                       f"environment variable {doc.config.signing_key_env} holds the signing key "
                       f"of tenant {owner!r}; each tenant needs its own SEP-10 signing key")


def _check_batch(docs: Sequence[TenantDocument]) -> None:
    owners: dict[str, str] = {}
    for doc in docs:
        for host in doc.config.hosts:
            other = owners.setdefault(host, doc.config.id)
            if other != doc.config.id:
                raise ConfigError(doc.source, "hosts", f"host is also claimed by tenant {other!r}",
                                  host)

