"""Secret hygiene at tenant apply (reliability-plan A3), on both backends and through every
write path (TenantService.apply, POST /api/v1/tenants, ``kyc-host tenant apply``):

- a SEP-10 signing seed given through ``signing_key_env`` that another tenant already uses
  is refused, naming that tenant (in one batch, against stored tenants, on create and update);
- a webhook ``secret_env`` / ``previous_secret_env`` that is set but shorter than
  MIN_SECRET_BYTES is refused (an unset one is allowed: delivery waits for it).

Refusals write nothing and never show a seed or secret.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from stellar_sdk import Keypair

from conftest import MakeServer, api_document, make_tenant_doc
from kyc_host.callbacks.config import MIN_SECRET_BYTES
from kyc_host.crypto.master import LocalKeyProvider, load_key_provider
from kyc_host.errors import ConfigError
from kyc_host.management.auth import create_token
from kyc_host.management.openapi import management_document
from kyc_host.settings import PlatformSettings
from kyc_host.store import open_store
from kyc_host.store.base import Store
from kyc_host.tenancy.secrets import unwrap_secrets
from kyc_host.tenancy.service import TenantService
from management.mgmt_helpers import Api, OpenApiChecker

SEED_A, SEED_B = "T_HYGIENE_SEED_A", "T_HYGIENE_SEED_B"
WEBHOOK_ENV, WEBHOOK_OLD_ENV = "T_HYGIENE_WEBHOOK", "T_HYGIENE_WEBHOOK_OLD"


@pytest.fixture
async def raw_store(backend: str) -> AsyncIterator[Store]:
    store = open_store(backend)
    await store.start()
    yield store
    await store.close()


@pytest.fixture
def environ() -> dict[str, str]:
    return {}


@pytest.fixture
def service(raw_store: Store, tmp_path: Path, environ: dict[str, str]) -> TenantService:
    keys: LocalKeyProvider = load_key_provider(tmp_path / "master.key", "UNSET_MASTER_KEY_ENV",
                                               dev_mode=True, environ={})
    return TenantService(raw_store, keys, environ)


async def state(service: TenantService) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    return (await service.tenants.find({}, sort=[("_id", 1)]),
            await service.hosts.find({}, sort=[("_id", 1)]))


async def refused(service: TenantService, *docs: dict[str, Any]) -> str:
    """Apply ``docs``; it must fail with ConfigError and write nothing. Returns the message."""
    before = await state(service)
    with pytest.raises(ConfigError) as info:
        await service.apply([api_document(d) for d in docs])
    assert await state(service) == before
    return str(info.value)


def webhook(secret_env: str = WEBHOOK_ENV, **extra: str) -> dict[str, Any]:
    return {"url": "https://backend.anchor.example/kyc-events",
            "events": ["customer.submitted"], "secret_env": secret_env, **extra}


# --- one signing key, one tenant -------------------------------------------------------------


async def test_a_signing_seed_another_tenant_uses_is_refused(
        service: TenantService, environ: dict[str, str]) -> None:
    seed = Keypair.random().secret
    environ[SEED_A] = environ[SEED_B] = seed
    t1 = make_tenant_doc("t1", ["a.test"], signing_key_env=SEED_A)
    t2 = make_tenant_doc("t2", ["b.test"], signing_key_env=SEED_B)

    message = await refused(service, t1, t2)  # in one batch
    assert "signing_key_env" in message
    assert SEED_B in message
    assert "'t1'" in message
    assert seed not in message

    assert [r.action for r in await service.apply([api_document(t1)])] == ["created"]
    message = await refused(service, t2)  # against the stored tenant
    assert "'t1'" in message
    assert SEED_B in message
    assert seed not in message
    # The owner itself re-applies fine, and keeps the key once the variable is gone.
    assert [r.action for r in await service.apply([api_document(t1)])] == ["unchanged"]
    del environ[SEED_A]
    assert "'t1'" in await refused(service, t2)

    # Update path: an existing tenant may not switch to t1's key either.
    plain = make_tenant_doc("t2", ["b.test"])
    assert [r.action for r in await service.apply([api_document(plain)])] == ["created"]
    assert "'t1'" in await refused(service, t2)
    # A different seed is fine.
    environ[SEED_B] = Keypair.random().secret
    assert [r.action for r in await service.apply([api_document(t2)])] == ["updated"]
    seeds = {r["_id"]: unwrap_secrets(service.keys, r["_id"], r["secrets"]).signing_seed
             for r in await service.tenants.find({})}
    assert seeds == {"t1": seed, "t2": environ[SEED_B]}


async def test_a_tenant_moving_to_a_new_seed_frees_its_old_one(
        service: TenantService, environ: dict[str, str]) -> None:
    """In one batch, t1 takes a new seed and t2 takes t1's old one: allowed, since after the
    apply each key has one tenant."""
    old, new = Keypair.random().secret, Keypair.random().secret
    environ[SEED_A] = old
    t1 = make_tenant_doc("t1", ["a.test"], signing_key_env=SEED_A)
    await service.apply([api_document(t1)])
    environ[SEED_A], environ[SEED_B] = new, old
    t2 = make_tenant_doc("t2", ["b.test"], signing_key_env=SEED_B)
    assert [r.action for r in await service.apply([api_document(t1), api_document(t2)])] == [
        "updated", "created"]


# --- webhook secrets ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["secret_env", "previous_secret_env"])
async def test_a_short_webhook_secret_is_refused_at_apply(
        service: TenantService, environ: dict[str, str], key: str) -> None:
    environ[WEBHOOK_ENV] = environ[WEBHOOK_OLD_ENV] = "s" * MIN_SECRET_BYTES
    short = "x" * (MIN_SECRET_BYTES - 1)
    environ[WEBHOOK_ENV if key == "secret_env" else WEBHOOK_OLD_ENV] = short
    doc = make_tenant_doc("t1", ["a.test"], webhooks=[
        webhook(previous_secret_env=WEBHOOK_OLD_ENV)])
    message = await refused(service, doc)
    assert f"webhooks[0].{key}" in message
    assert f"at least {MIN_SECRET_BYTES}" in message
    assert short not in message


async def test_webhook_secrets_of_the_minimum_size_or_unset_are_accepted(
        service: TenantService, environ: dict[str, str]) -> None:
    environ[WEBHOOK_ENV] = "s" * MIN_SECRET_BYTES
    docs = [make_tenant_doc("t1", ["a.test"], webhooks=[webhook()]),
            make_tenant_doc("t2", ["b.test"], webhooks=[webhook("T_HYGIENE_NOT_SET")])]
    assert [r.action for r in await service.apply([api_document(d) for d in docs])] == [
        "created", "created"]


# --- the management API and the CLI ------------------------------------------------------------


async def test_the_management_api_refuses_a_shared_seed_and_a_short_secret(
        make_server: MakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = Keypair.random().secret
    monkeypatch.setenv(SEED_A, seed)
    monkeypatch.setenv(SEED_B, seed)
    monkeypatch.setenv(WEBHOOK_ENV, "short")
    srv = await make_server(make_tenant_doc("t1", ["a.test"], signing_key_env=SEED_A))
    api = Api(srv, OpenApiChecker(management_document()))
    operator = (await create_token(srv.services.store, tenant_id=None, scopes=["operator"],
                                   created_by="test")).token
    for doc, named in ((make_tenant_doc("t2", ["b.test"], signing_key_env=SEED_B), "'t1'"),
                       (make_tenant_doc("t2", ["b.test"], webhooks=[webhook()]),
                        "webhooks[0].secret_env")):
        reply = await api.call("POST", "/api/v1/tenants", token=operator, body=doc)
        assert reply.status == 400, reply.body
        assert named in reply.error
        assert seed not in reply.error
        assert await srv.services.store.platform("tenants").find_one({"_id": "t2"}) is None
    reply = await api.call("PUT", "/api/v1/tenants/t1", token=operator, body=make_tenant_doc(
        "t1", ["a.test"], signing_key_env=SEED_A, webhooks=[webhook()]))
    assert reply.status == 400
    assert "webhooks[0].secret_env" in reply.error


async def test_the_cli_refuses_a_shared_seed(make_server: MakeServer,
                                             monkeypatch: pytest.MonkeyPatch,
                                             settings: PlatformSettings, tmp_path: Path) -> None:
    seed = Keypair.random().secret
    monkeypatch.setenv(SEED_A, seed)
    srv = await make_server(make_tenant_doc("t1", ["a.test"], signing_key_env=SEED_A))
    path = tmp_path / "t2.toml"
    path.write_text(tomli_w.dumps(make_tenant_doc("t2", ["b.test"], signing_key_env=SEED_B)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_HOST_")}
    env[SEED_B] = seed
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kyc_host", "tenant", "apply", str(path),
        "--storage-url", settings.storage_url, "--master-key-file",
        str(settings.master_key_file), "--dev", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, (out, err)
    line = err.decode().strip().splitlines()[-1]
    assert line.startswith(f"kyc-host: {path}: signing_key_env: "), line
    assert "'t1'" in line
    assert seed not in err.decode()
    assert await srv.services.store.platform("tenants").find_one({"_id": "t2"}) is None
