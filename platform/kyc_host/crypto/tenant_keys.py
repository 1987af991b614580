"""Changing a tenant's key material in the store, and waiting until every process has it.

A tenant's secrets are one blob wrapped by the master key inside the tenant record
(tenancy/secrets.py). A key operation reads it, changes it and writes it back with a new
``rev`` and ``updated_at``, so every process replaces its Tenant (and so its keys) within
``tenant_refresh_seconds`` (tenancy/registry.py). Rotations move in stages and call
:func:`settle` between two stages: after it, no live process still runs the stage before the
last, which is what makes the key stages safe (crypto/records.py).

Writes are conditional on the ``rev`` read (retried on a change), and the result is read
back: on FerretDB v1 a conditional update is not atomic, so an operator's ``tenant apply``
racing a rotation could in theory overwrite the new secrets; reading back turns that into a
clear error before any data was written under a key that could be lost.

JWT and SEP-10 signing keys rotate here too, each with an overlap window (sep10_tokens.py
and sep10_challenge.py keep verifying with the previous key until it retires).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from stellar_sdk import Keypair

from kyc_host.crypto.master import KeyProvider
from kyc_host.store.base import Store
from kyc_host.tenancy.secrets import (
    PreviousJwtKey,
    PreviousSigningKey,
    TenantSecrets,
    unwrap_secrets,
    wrap_secrets,
)

#: Extra seconds beyond the refresh interval before a stage counts as seen everywhere
#: (a poll in progress, a slow store answer).
SETTLE_MARGIN_SECONDS = 1.0
#: How long after a switch a token or challenge may still be minted by a process that has
#: not seen it yet; added to the overlap windows.
PROPAGATION_GRACE_SECONDS = 60.0
_ATTEMPTS = 20


class KeyOperationError(Exception):
    """A key operation cannot run (unknown tenant, managed key, lost write); one line."""


def settle_seconds(refresh_seconds: float) -> float:
    """How long to wait after a tenant write until every live process serves it."""
    return 2 * refresh_seconds + SETTLE_MARGIN_SECONDS


async def settle(refresh_seconds: float) -> None:
    await asyncio.sleep(settle_seconds(refresh_seconds))


async def live_record(store: Store, tenant_id: str) -> dict[str, Any]:
    record = await store.platform("tenants").find_one({"_id": tenant_id})
    if record is None or record.get("status") not in ("active", "suspended"):
        raise KeyOperationError(f"no tenant {tenant_id!r}")
    return record


async def read_secrets(store: Store, keys: KeyProvider, tenant_id: str) -> TenantSecrets:
    record = await live_record(store, tenant_id)
    return unwrap_secrets(keys, tenant_id, record["secrets"])


async def update_secrets(store: Store, keys: KeyProvider, tenant_id: str,
                         change: Callable[[TenantSecrets], TenantSecrets | None]) -> TenantSecrets:
    """Apply ``change`` to the tenant's secrets (None: nothing to change) and publish them.

    Returns the secrets as stored afterwards. Raises KeyOperationError if the write did not
    stick (another writer replaced the record in between, ``_ATTEMPTS`` times in a row).
    """
    tenants = store.platform("tenants")
    for _ in range(_ATTEMPTS):
        record = await live_record(store, tenant_id)
        current = unwrap_secrets(keys, tenant_id, record["secrets"])
        changed = change(current)
        if changed is None:
            return current
        new_rev = uuid.uuid4().hex
        matched = await tenants.update_one(
            {"_id": tenant_id, "rev": record["rev"]},
            set={"secrets": wrap_secrets(keys, tenant_id, changed), "rev": new_rev,
                 "updated_at": time.time()})
        if matched:
            stored = await live_record(store, tenant_id)
            if stored["rev"] == new_rev:
                return changed
        await asyncio.sleep(0.05)
    raise KeyOperationError(f"tenant {tenant_id!r} kept changing while its keys were being "
                            "updated; retry when no `tenant apply` is running")


async def rewrap_record(store: Store, keys: KeyProvider, record: dict[str, Any]) -> bool:
    """Re-wrap one tenant's secrets under the newest master key version, unchanged inside.

    ``rev`` changes so every process reloads the tenant: one that still held the old
    wrapped blob (secrets are unwrapped lazily) would otherwise fail once the old master
    version leaves the key file. Returns False if the record changed in between (the
    caller retries it later).
    """
    tenant_id = str(record["_id"])
    secrets = unwrap_secrets(keys, tenant_id, record["secrets"])
    matched = await store.platform("tenants").update_one(
        {"_id": tenant_id, "rev": record["rev"]},
        set={"secrets": wrap_secrets(keys, tenant_id, secrets), "rev": uuid.uuid4().hex,
             "updated_at": time.time()})
    return matched == 1


# --- JWT and SEP-10 signing keys (overlap windows) ---


def rotated_jwt(secrets: TenantSecrets, lifetime_seconds: int,
                now: float | None = None) -> TenantSecrets:
    """New JWT keys (both algorithms); the current ones verify until every token they
    signed has expired. Previous keys already past their window are dropped."""
    at = time.time() if now is None else now
    keep = tuple(p for p in secrets.jwt_previous if p.until > at)
    retiring = PreviousJwtKey(secrets.jwt_generation, secrets.jwt_ed25519_seed,
                              secrets.jwt_hs256_secret,
                              at + lifetime_seconds + PROPAGATION_GRACE_SECONDS)
    return dataclasses.replace(
        secrets, jwt_ed25519_seed=os.urandom(32), jwt_hs256_secret=os.urandom(32),
        jwt_generation=secrets.jwt_generation + 1, jwt_previous=(*keep, retiring))


def rotated_signing(secrets: TenantSecrets, challenge_seconds: int,
                    now: float | None = None) -> TenantSecrets:
    """A new SEP-10 signing seed; challenges signed by the old one verify until they expire."""
    at = time.time() if now is None else now
    keep = tuple(p for p in secrets.signing_previous if p.until > at)
    retiring = PreviousSigningKey(secrets.signing_seed,
                                  at + challenge_seconds + PROPAGATION_GRACE_SECONDS)
    return dataclasses.replace(secrets, signing_seed=Keypair.random().secret,
                               signing_previous=(*keep, retiring))
