"""``kyc-host keys ...``: master key versions, rotations, reindexing (cli.py wires them).

Each command takes the started Services and the parsed arguments and returns the exit code:
0 done; 1 the operation failed (another run holds the job, a key is still in use); 2 bad
usage (unknown tenant, master key from the environment). Progress bars and stage notes go to
stderr, results to stdout. Every key operation is audited (the tenant's log, or the platform
log for master keys).
"""

from __future__ import annotations

import argparse
import json
import sys

from kyc_host import audit
from kyc_host.crypto import operations
from kyc_host.crypto.jobs import JobBusy
from kyc_host.crypto.master import add_key_version, remove_key_version
from kyc_host.crypto.rotation import (
    JobContext,
    master_versions_in_use,
    reindex,
    rotate_kek,
    rotate_master,
)
from kyc_host.crypto.tenant_keys import KeyOperationError
from kyc_host.errors import ConfigError
from kyc_host.services import Services

OK, FAILED, USAGE = 0, 1, 2
CLI_ACTOR = "cli"


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _err(line: str) -> None:
    sys.stderr.write(f"kyc-host: {line}\n")


def job_context(services: Services, progress: bool = True) -> JobContext:
    return operations.job_context(services, actor=CLI_ACTOR, progress=progress)


async def _tenant_known(services: Services, tenant_id: str) -> bool:
    if await services.tenants.get(tenant_id) is None:
        _err(f"no tenant {tenant_id!r}")
        return False
    return True


async def _job(coro_name: str, services: Services, args: argparse.Namespace) -> int:
    ctx = job_context(services, progress=not getattr(args, "quiet", False))
    try:
        if coro_name == "rotate":
            await rotate_kek(ctx, args.tenant)
        elif coro_name == "reindex":
            await reindex(ctx, args.tenant)
        else:
            await rotate_master(ctx)
    except (JobBusy, KeyOperationError) as exc:
        _err(str(exc))
        return FAILED
    return OK


async def keys_rotate(services: Services, args: argparse.Namespace) -> int:
    if not await _tenant_known(services, args.tenant):
        return USAGE
    return await _job("rotate", services, args)


async def keys_reindex(services: Services, args: argparse.Namespace) -> int:
    if not await _tenant_known(services, args.tenant):
        return USAGE
    return await _job("reindex", services, args)


async def keys_rotate_master(services: Services, args: argparse.Namespace) -> int:
    return await _job("rotate-master", services, args)


async def keys_add_master_version(services: Services, args: argparse.Namespace) -> int:
    settings = services.settings
    if _from_env(services):
        _err(f"the master key comes from ${settings.master_key_env}: add a line "
             "'<next version>:<base64 32 bytes>' to it on every host, restart the servers, "
             "then run `kyc-host keys rotate-master`")
        return USAGE
    version = add_key_version(settings.master_key_file)
    await audit.record(services.store, None, actor=CLI_ACTOR, action="key.master_add",
                       details={"master_version": version})
    _out(f"added master key v{version} to {settings.master_key_file}")
    _out("Copy the file to every host (servers reload it within seconds), then run "
         "`kyc-host keys rotate-master`.")
    return OK


async def keys_remove_master_version(services: Services, args: argparse.Namespace) -> int:
    settings = services.settings
    if _from_env(services):
        _err(f"the master key comes from ${settings.master_key_env}; edit it there")
        return USAGE
    version: int = args.version
    if version == services.keys.current_version:
        # rotate-master re-wraps *under* the current version, so it cannot free this one: a
        # newer version has to become current first.
        _err(f"master key v{version} is the current version (it wraps every new secret) and "
             "cannot be removed; to retire it, run `kyc-host keys add-master-version`, then "
             f"`kyc-host keys rotate-master`, then remove v{version}")
        return FAILED
    users = (await master_versions_in_use(services.store)).get(version, [])
    if users:
        _err(f"master key v{version} still wraps the secrets of {len(users)} tenant(s) "
             f"({', '.join(users[:5])}); run `kyc-host keys rotate-master` (it re-wraps them "
             f"under v{services.keys.current_version}), then remove v{version}")
        return FAILED
    try:
        remove_key_version(settings.master_key_file, version)
    except ConfigError as exc:
        _err(str(exc))
        return FAILED
    await audit.record(services.store, None, actor=CLI_ACTOR, action="key.master_remove",
                       details={"master_version": version})
    _out(f"removed master key v{version} from {settings.master_key_file}")
    return OK


def _from_env(services: Services) -> bool:
    return getattr(services.keys, "source", None) is None


async def keys_rotate_jwt(services: Services, args: argparse.Namespace) -> int:
    if not await _tenant_known(services, args.tenant):
        return USAGE
    result = await operations.rotate_jwt(services, args.tenant, actor=CLI_ACTOR)
    _out(f"tenant {args.tenant}: new JWT key generation {result['jwt_generation']} (kid "
         f"{result['kid']}); the previous key verifies (and stays in jwks.json) until "
         f"{result['previous_valid_until']}")
    return OK


async def keys_rotate_signing(services: Services, args: argparse.Namespace) -> int:
    if not await _tenant_known(services, args.tenant):
        return USAGE
    try:
        result = await operations.rotate_signing(services, args.tenant, actor=CLI_ACTOR)
    except operations.SigningKeyManaged as exc:
        _err(str(exc))
        return USAGE
    _out(f"tenant {args.tenant}: SIGNING_KEY is now {result['signing_key']} "
         "(published in stellar.toml within seconds); challenges signed by "
         f"{result['previous_signing_key']} verify until {result['previous_valid_until']}")
    return OK


async def keys_status(services: Services, args: argparse.Namespace) -> int:
    """Key versions of a tenant (or master key versions in use), never key material."""
    if args.tenant is None:
        used = await master_versions_in_use(services.store)
        doc: dict[str, object] = {
            "master_current": services.keys.current_version,
            "master_in_use": {str(v): len(t) for v, t in sorted(used.items())}}
    else:
        if not await _tenant_known(services, args.tenant):
            return USAGE
        doc = await operations.key_status(services, args.tenant)
    _out(json.dumps(doc, indent=2))
    return OK
