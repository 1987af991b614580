"""Tenant key operations shared by ``kyc-host keys ...`` (crypto/commands.py) and the
management API (management/keys_api.py): one implementation, audited the same way.

- :func:`key_status`: versions in use, JWT ``kid``s, SEP-10 signing public keys, and the
  checkpoints of the tenant's key jobs -- never key material.
- :func:`rotate_jwt` / :func:`rotate_signing`: quick (one secrets write), done inline.
- :func:`start_job`: ``rotate-kek`` or ``reindex`` in the background of this process
  (crypto/background.py); they take minutes, so the caller only learns the job id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stellar_sdk import Keypair

from kyc_host import audit
from kyc_host.crypto.jobs import live_lease
from kyc_host.crypto.rotation import (
    JobContext,
    reindex,
    reindex_job_id,
    rotate_job_id,
    rotate_kek,
)
from kyc_host.crypto.tenant_keys import (
    KeyOperationError,
    live_record,
    read_secrets,
    rotated_jwt,
    rotated_signing,
    update_secrets,
)
from kyc_host.sep.sep10_tokens import hs256_kid, kid_for
from kyc_host.services import Services
from kyc_host.store.base import Doc
from kyc_host.tenancy.schema import TenantConfig, parse_tenant

#: Operations of ``POST /api/v1/tenants/{id}/keys/{operation}``; the first two are jobs.
JOB_OPERATIONS = ("rotate-kek", "reindex")
OPERATIONS = (*JOB_OPERATIONS, "rotate-jwt", "rotate-signing")
_JOB_IDS = {"rotate-kek": rotate_job_id, "reindex": reindex_job_id}
_RUNS = {"rotate-kek": rotate_kek, "reindex": reindex}


class SigningKeyManaged(KeyOperationError):
    """The tenant's SEP-10 signing key comes from an environment variable, not the store."""


async def _config(services: Services, tenant_id: str) -> TenantConfig:
    """The tenant's parsed document: this process's copy, else the stored one (a tenant
    created by another process a moment ago). Raises KeyOperationError if there is none."""
    tenant = services.registry.get(tenant_id)
    if tenant is not None:
        return tenant.config
    record = await live_record(services.store, tenant_id)
    return parse_tenant(record["config"], f"store tenant {tenant_id!r}")


def _jwt_kid(config: TenantConfig, seed: bytes, generation: int) -> str:
    """The ``kid`` tokens signed by this key carry (as sep10_tokens.issue_token sets it)."""
    if config.sep10.jwt_algorithm == "HS256":
        return hs256_kid(generation)
    return kid_for(Ed25519PrivateKey.from_private_bytes(seed).public_key())


# --- status ----------------------------------------------------------------------------------


async def key_status(services: Services, tenant_id: str) -> dict[str, Any]:
    """Key versions, public keys and job checkpoints of a tenant (no secret material).

    Raises KeyOperationError for an unknown or offboarded tenant."""
    secrets = await read_secrets(services.store, services.keys, tenant_id)
    config = await _config(services, tenant_id)
    jwt_keys = [{"kid": _jwt_kid(config, p.ed25519_seed, p.generation),
                 "generation": p.generation, "current": False,
                 "valid_until": audit.iso(p.until)} for p in secrets.jwt_previous]
    jwt_keys.append({"kid": _jwt_kid(config, secrets.jwt_ed25519_seed, secrets.jwt_generation),
                     "generation": secrets.jwt_generation, "current": True,
                     "valid_until": None})
    signing = [{"public_key": Keypair.from_secret(p.seed).public_key, "current": False,
                "valid_until": audit.iso(p.until)} for p in secrets.signing_previous]
    signing.append({"public_key": secrets.signing_keypair.public_key, "current": True,
                    "valid_until": None})
    return {
        "tenant": tenant_id,
        "kek_version": secrets.kek_version,
        "kek_versions": sorted(secrets.data_keks),
        "index_version": secrets.index_version,
        "index_next": secrets.index_next,
        "index_stage": secrets.index_stage,
        "jwt_algorithm": config.sep10.jwt_algorithm,
        "jwt_generation": secrets.jwt_generation,
        "jwt_previous": len(secrets.jwt_previous),
        "jwt_keys": jwt_keys,
        "signing_key": secrets.signing_keypair.public_key,
        "signing_key_env": config.signing_key_env or None,
        "signing_previous": len(secrets.signing_previous),
        "signing_keys": signing,
        "jobs": {op: await job_status(services, _JOB_IDS[op](tenant_id))
                 for op in JOB_OPERATIONS},
    }


async def job_status(services: Services, job_id: str) -> dict[str, Any] | None:
    """A key job's checkpoint as shown to operators; None if it never ran."""
    jobs = services.store.platform("key_jobs")
    state = await jobs.find_one({"_id": job_id})
    if state is None:
        return None
    running = await live_lease(jobs, job_id) is not None
    return _job_view(job_id, state, running)


def _job_view(job_id: str, state: Mapping[str, Any], running: bool) -> dict[str, Any]:
    def when(key: str) -> str | None:
        value = state.get(key)
        return audit.iso(float(value)) if isinstance(value, int | float) else None

    failed_at = state.get("failed_at")
    updated_at = state.get("updated_at")
    # A failure is current until the job makes progress again (every save moves updated_at).
    failed = (not running and isinstance(failed_at, int | float)
              and (not isinstance(updated_at, int | float) or failed_at >= updated_at))
    counters = state.get("counters")
    return {
        "id": job_id,
        "stage": str(state.get("stage", "")),
        "part": state.get("part") if state.get("stage") == "rewrap" else None,
        "target_version": state.get("target"),
        "passes": int(state.get("passes", 0) or 0),
        "counters": dict(counters) if isinstance(counters, Mapping) else {},
        "running": running,
        "done": state.get("stage") == "done",
        "started_at": when("started_at"),
        "updated_at": when("updated_at"),
        "finished_at": when("finished_at") if state.get("stage") == "done" else None,
        "last_error": str(state.get("last_error")) if failed else None,
    }


# --- quick rotations ------------------------------------------------------------------------


async def rotate_jwt(services: Services, tenant_id: str, *, actor: str,
                     request_id: str | None = None) -> dict[str, Any]:
    """New JWT keys for the tenant; the previous ones verify (and stay in jwks.json) until
    every token they signed has expired. Audited as ``key.rotate_jwt``."""
    config = await _config(services, tenant_id)
    secrets = await update_secrets(services.store, services.keys, tenant_id,
                                   lambda s: rotated_jwt(s, config.sep10.jwt_lifetime_seconds))
    retiring = secrets.jwt_previous[-1]
    until = audit.iso(retiring.until)
    await audit.record(services.store, tenant_id, actor=actor, action="key.rotate_jwt",
                       request_id=request_id,
                       details={"generation": secrets.jwt_generation,
                                "previous_valid_until": until})
    return {"operation": "rotate-jwt", "tenant": tenant_id,
            "jwt_generation": secrets.jwt_generation,
            "kid": _jwt_kid(config, secrets.jwt_ed25519_seed, secrets.jwt_generation),
            "previous_kid": _jwt_kid(config, retiring.ed25519_seed, retiring.generation),
            "previous_valid_until": until}


async def rotate_signing(services: Services, tenant_id: str, *, actor: str,
                         request_id: str | None = None) -> dict[str, Any]:
    """A new SEP-10 SIGNING_KEY; challenges signed by the old one verify until they expire.
    Audited as ``key.rotate_signing``. Raises SigningKeyManaged if the key comes from an
    environment variable (it is rotated there, then the tenant re-applied)."""
    config = await _config(services, tenant_id)
    if config.signing_key_env:
        raise SigningKeyManaged(
            f"tenant {tenant_id!r} takes its signing key from ${config.signing_key_env}; "
            "rotate it there and re-apply the tenant")
    timeout = config.sep10.challenge_timeout_seconds
    before = (await read_secrets(services.store, services.keys, tenant_id)).signing_keypair
    secrets = await update_secrets(services.store, services.keys, tenant_id,
                                   lambda s: rotated_signing(s, timeout))
    until = audit.iso(secrets.signing_previous[-1].until)
    await audit.record(services.store, tenant_id, actor=actor, action="key.rotate_signing",
                       request_id=request_id,
                       details={"signing_key": secrets.signing_keypair.public_key,
                                "previous": before.public_key,
                                "previous_valid_until": until})
    return {"operation": "rotate-signing", "tenant": tenant_id,
            "signing_key": secrets.signing_keypair.public_key,
            "previous_signing_key": before.public_key, "previous_valid_until": until}


# --- background jobs --------------------------------------------------------------------------


def job_context(services: Services, *, actor: str, progress: bool = True) -> JobContext:
    """A JobContext for this process's store and master keys, naming ``actor`` in the log."""
    return JobContext(services.store, services.keys,
                      services.settings.tenant_refresh_seconds, actor=actor,
                      progress=progress)


async def start_job(services: Services, operation: str, tenant_id: str, *,
                    actor: str) -> str:
    """Start ``rotate-kek`` or ``reindex`` for the tenant in the background; return the job
    id once the run holds the job's lease. Raises JobBusy if a run is working on it already
    (here, in another process or from the CLI). The job audits its result itself."""
    await live_record(services.store, tenant_id)  # KeyOperationError for an unknown tenant
    job_id = _JOB_IDS[operation](tenant_id)
    run = _RUNS[operation]

    async def job(ctx: JobContext) -> Doc:
        return await run(ctx, tenant_id)

    await services.key_jobs.start(job_id, job_context(services, actor=actor, progress=False),
                                  job)
    return job_id
