"""JWT and SEP-10 signing key rotation with overlap windows, and master key versions."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator

import jwt
import pytest
from stellar_sdk import Keypair

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.crypto import commands
from kyc_host.crypto.master import LocalKeyProvider
from kyc_host.crypto.tenant_keys import update_secrets
from kyc_host.sep.sep10_tokens import issue_token
from kyc_host.tenancy.secrets import TenantSecrets
from sep10.sep10_helpers import HorizonStub, sign
from sep10.sep10_helpers import Wallet as AuthWallet
from sep12.sep12_helpers import tenant_of


@pytest.fixture
async def horizon() -> AsyncIterator[HorizonStub]:
    stub = HorizonStub()
    yield stub
    await stub.close()


async def servers(make_server: MakeServer, horizon: HorizonStub) -> RunningServer:
    return await make_server(
        make_tenant_doc("t1", ["a.test"], horizon_url=horizon.url),
        make_tenant_doc("t2", ["b.test"], horizon_url=horizon.url,
                        sep10={"jwt_algorithm": "HS256"}))


def token(srv: RunningServer, tenant_id: str, sub: str) -> str:
    tenant = tenant_of(srv, tenant_id)
    return issue_token(tenant, sub=sub, jti=uuid.uuid4().hex, home_domain=tenant.home_domains[0])


async def customer_status(srv: RunningServer, host: str, bearer: str) -> int:
    response = await srv.fetch(host, "/kyc/customer",
                               headers={"Authorization": f"Bearer {bearer}"})
    return response.code


async def jwks_kids(srv: RunningServer, host: str) -> list[str]:
    response = await srv.fetch(host, "/.well-known/jwks.json")
    return [k["kid"] for k in json.loads(response.body)["keys"]]


async def expire_previous(srv: RunningServer, tenant_id: str) -> None:
    """Jump past the overlap windows (as if the old tokens and challenges had expired)."""
    past = time.time() - 1

    def change(s: TenantSecrets) -> TenantSecrets:
        return dataclasses.replace(
            s, jwt_previous=tuple(dataclasses.replace(p, until=past) for p in s.jwt_previous),
            signing_previous=tuple(dataclasses.replace(p, until=past)
                                   for p in s.signing_previous))

    await update_secrets(srv.services.store, srv.services.keys, tenant_id, change)
    await srv.services.registry.refresh()


async def test_jwt_rotation_keeps_old_tokens_valid_until_they_expire(
        make_server: MakeServer, horizon: HorizonStub) -> None:
    srv = await servers(make_server, horizon)
    account = Keypair.random().public_key
    old_eddsa, old_hs = token(srv, "t1", account), token(srv, "t2", account)
    [old_kid] = await jwks_kids(srv, "a.test")
    for tenant_id in ("t1", "t2"):
        code = await commands.keys_rotate_jwt(srv.services, argparse.Namespace(tenant=tenant_id))
        assert code == commands.OK
    await srv.services.registry.refresh()
    new_eddsa, new_hs = token(srv, "t1", account), token(srv, "t2", account)
    new_kid = jwt.get_unverified_header(new_eddsa)["kid"]
    assert new_kid != old_kid
    assert jwt.get_unverified_header(new_hs)["kid"] == "hs256-2"
    assert sorted(await jwks_kids(srv, "a.test")) == sorted([old_kid, new_kid])
    assert await jwks_kids(srv, "b.test") == []  # HS256: nothing public to publish
    for host, bearer in (("a.test", old_eddsa), ("a.test", new_eddsa), ("b.test", old_hs),
                         ("b.test", new_hs)):
        assert await customer_status(srv, host, bearer) == 200
    assert await customer_status(srv, "b.test", new_eddsa) == 401  # tenants stay apart
    await expire_previous(srv, "t1")
    await expire_previous(srv, "t2")
    assert await customer_status(srv, "a.test", old_eddsa) == 401
    assert await customer_status(srv, "b.test", old_hs) == 401
    assert await customer_status(srv, "a.test", new_eddsa) == 200
    assert await jwks_kids(srv, "a.test") == [new_kid]


async def test_signing_key_rotation_publishes_the_new_key_and_honours_old_challenges(
        make_server: MakeServer, horizon: HorizonStub) -> None:
    srv = await servers(make_server, horizon)
    wallet, client = AuthWallet(srv), Keypair.random()
    before = tenant_of(srv, "t1").secrets.signing_keypair.public_key
    pending = await wallet.challenge("a.test", account=client.public_key)
    stale = await wallet.challenge("a.test", account=client.public_key)
    code = await commands.keys_rotate_signing(srv.services, argparse.Namespace(tenant="t1"))
    assert code == commands.OK
    await srv.services.registry.refresh()
    after = tenant_of(srv, "t1").secrets.signing_keypair.public_key
    assert after != before
    toml = (await srv.fetch("a.test", "/.well-known/stellar.toml")).body.decode()
    assert f'SIGNING_KEY = "{after}"' in toml
    assert before not in toml
    # A challenge issued before the switch still gets its token...
    response = await wallet.post("a.test", sign(pending, client))
    assert response.code == 200, response.body
    # ...and new challenges are signed by the new key.
    token_now = await wallet.token("a.test", client, account=client.public_key)
    assert token_now
    # Once the overlap is over, an old challenge is refused (never a 500).
    await expire_previous(srv, "t1")
    response = await wallet.post("a.test", sign(stale, client))
    assert response.code == 400
    assert "invalid challenge" in json.loads(response.body)["error"]
    # Tenant 2 kept its key.
    toml2 = (await srv.fetch("b.test", "/.well-known/stellar.toml")).body.decode()
    assert tenant_of(srv, "t2").secrets.signing_keypair.public_key in toml2


async def test_removing_the_current_master_version_says_what_retires_it(
        make_server: MakeServer, horizon: HorizonStub,
        capsys: pytest.CaptureFixture[str]) -> None:
    """rotate-master re-wraps *under* the current version, so it never frees that one: the
    refusal says to add a newer version first; an older version in use only needs the
    rotation."""
    srv = await servers(make_server, horizon)
    services = srv.services
    keys = services.keys
    assert isinstance(keys, LocalKeyProvider)
    current = argparse.Namespace(version=1)
    assert await commands.keys_remove_master_version(services, current) == commands.FAILED
    [line] = capsys.readouterr().err.splitlines()
    assert "v1 is the current version" in line
    assert "`kyc-host keys add-master-version`, then `kyc-host keys rotate-master`" in line
    assert await commands.keys_add_master_version(services, argparse.Namespace()) == 0
    keys.reload_if_changed()
    capsys.readouterr()
    # v1 is older now: in use by both tenants, and the rotation alone frees it.
    assert await commands.keys_remove_master_version(services, current) == commands.FAILED
    [line] = capsys.readouterr().err.splitlines()
    assert "still wraps the secrets of 2 tenant(s)" in line
    assert "run `kyc-host keys rotate-master` (it re-wraps them under v2)" in line
    assert "add-master-version" not in line
    # v2, the new current version, wraps no tenant yet and is still refused.
    newest = argparse.Namespace(version=2)
    assert await commands.keys_remove_master_version(services, newest) == commands.FAILED
    assert "v2 is the current version" in capsys.readouterr().err
    assert keys.versions == (1, 2)


async def test_master_versions_add_rotate_remove(make_server: MakeServer,
                                                 horizon: HorizonStub,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    srv = await servers(make_server, horizon)
    services = srv.services
    keys = services.keys
    assert isinstance(keys, LocalKeyProvider)
    assert await commands.keys_add_master_version(services, argparse.Namespace()) == 0
    keys.reload_if_changed()
    assert keys.versions == (1, 2)
    # v1 still wraps both tenants: it cannot be removed yet.
    remove = argparse.Namespace(version=1)
    assert await commands.keys_remove_master_version(services, remove) == commands.FAILED
    assert "still wraps" in capsys.readouterr().err
    assert await commands.keys_rotate_master(services, argparse.Namespace(quiet=True)) == 0
    assert await commands.keys_remove_master_version(services, remove) == commands.OK
    keys.reload_if_changed()
    assert keys.versions == (2,)
    await services.registry.refresh()
    for tenant_id in ("t1", "t2"):
        record = await services.store.platform("tenants").find_one({"_id": tenant_id})
        assert record is not None
        assert record["secrets"]["version"] == 2
    # Both tenants still serve with only master key v2 loaded.
    account = Keypair.random().public_key
    assert await customer_status(srv, "a.test", token(srv, "t1", account)) == 200
    assert await customer_status(srv, "b.test", token(srv, "t2", account)) == 200
