"""Key rotation triggers on the admin listener: ``POST /api/v1/tenants/{id}/keys/{operation}``
and ``GET /api/v1/tenants/{id}/keys``, over real HTTP on both backends.

rotate-kek and reindex run in the server's background while wallets keep reading their
customers; rotate-jwt and rotate-signing answer inline. Every answer is checked against the
OpenAPI document (``Api.call``)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from mgmt_helpers import (  # noqa: F401 - fixtures
    Api,
    MakeToken,
    OpenApiChecker,
    Reply,
    checker_fixture,
    make_token_for_fixture,
)
from stellar_sdk import Keypair

from conftest import MakeServer, RunningServer
from kyc_host.crypto.jobs import JobBusy
from kyc_host.crypto.operations import job_context
from kyc_host.crypto.rotation import reindex, rotate_kek
from kyc_host.sep.sep10_tokens import issue_token
from sep12.sep12_helpers import ALICE, Wallet, kyc_doc, png_of_size, tenant_of

#: Small, so the jobs' waits between stages (2 x refresh + 1 s) stay short.
REFRESH_SECONDS = 0.05
#: A bound against a hung job, not a timing assertion.
JOB_DEADLINE_SECONDS = 120.0


@dataclass
class KeysEnv:
    srv: RunningServer
    api: Api
    operator: str
    t1: str
    make_token: MakeToken


@pytest.fixture
async def env(make_server: MakeServer, checker: OpenApiChecker,
              make_token_for: Callable[[RunningServer], MakeToken]) -> KeysEnv:
    srv = await make_server(kyc_doc("t1", ["a.test"]), kyc_doc("t2", ["b.test"]),
                            tenant_refresh_seconds=REFRESH_SECONDS)
    make = make_token_for(srv)
    return KeysEnv(srv, Api(srv, checker), await make(None, ["operator"]), await make("t1"),
                   make)


async def status(env: KeysEnv, tenant: str) -> dict[str, Any]:
    reply = await env.api.call("GET", f"/api/v1/tenants/{tenant}/keys", token=env.operator)
    assert reply.status == 200, reply.body
    assert isinstance(reply.body, dict)
    return reply.body


async def trigger(env: KeysEnv, tenant: str, operation: str,
                  token: str | None = None) -> Reply:
    return await env.api.call("POST", f"/api/v1/tenants/{tenant}/keys/{operation}",
                              token=token or env.operator)


async def wait_done(env: KeysEnv, tenant: str, operation: str) -> dict[str, Any]:
    """Poll the status route until the job is done and no run holds it; returns its view."""
    seen_running = False
    deadline = time.monotonic() + JOB_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        job = (await status(env, tenant))["jobs"][operation]
        if job is not None:
            assert job["last_error"] is None, job
            seen_running = seen_running or job["running"]
            if job["done"] and not job["running"]:
                assert seen_running  # the status route showed the run while it worked
                return dict(job)
        await asyncio.sleep(0.1)
    raise AssertionError(f"{operation} of {tenant} did not finish")


@dataclass
class Readers:
    """Wallets reading their own customer over and over while a job runs."""

    wallets: dict[str, Wallet]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    failures: list[str] = field(default_factory=list)
    reads: int = 0

    async def run(self) -> None:
        deadline = time.monotonic() + JOB_DEADLINE_SECONDS
        while not self.stop.is_set() and time.monotonic() < deadline:
            for customer_id, wallet in self.wallets.items():
                await self.check(customer_id, wallet)
            await asyncio.sleep(0.02)

    async def check(self, customer_id: str, wallet: Wallet) -> None:
        reply = await wallet.get()
        self.reads += 1
        if reply.status != 200 or reply.json.get("id") != customer_id:
            self.failures.append(f"GET {reply.status} {reply.body[:80]!r}")
        files = await wallet.files(customer_id=customer_id)
        if files.status != 200 or len(files.json["files"]) != 1:
            self.failures.append(f"files {files.status} {files.body[:80]!r}")


async def make_customers(srv: RunningServer, tenant: str, host: str,
                         count: int) -> dict[str, Wallet]:
    wallets: dict[str, Wallet] = {}
    for i in range(count):
        wallet = Wallet(srv, host, tenant)
        customer_id = await wallet.create({**ALICE, "email_address": f"k{i}@example.org"})
        reply = await wallet.put_multipart([("photo_id_front", png_of_size(800, i), "p.png")])
        assert reply.status == 202, reply.body
        wallets[customer_id] = wallet
    return wallets


async def audit_actions(env: KeysEnv, tenant: str) -> list[tuple[str, str]]:
    reply = await env.api.call("GET", f"/api/v1/tenants/{tenant}/audit?limit=200",
                               token=env.operator)
    assert reply.status == 200
    return [(e["action"], e["actor"]) for e in reply.body["entries"]]


def actor_of(token: str) -> str:
    return "token:" + token.split("_")[1]


async def test_rotate_kek_and_reindex_via_api_while_customers_read(env: KeysEnv) -> None:
    srv = env.srv
    wallets = await make_customers(srv, "t1", "a.test", 5)
    t2_wallets = await make_customers(srv, "t2", "b.test", 1)
    t2_before = await status(env, "t2")
    readers = Readers({**wallets, **t2_wallets})
    reading = asyncio.create_task(readers.run())
    try:
        for operation, job_id in (("rotate-kek", "rotate:t1"), ("reindex", "reindex:t1")):
            reply = await trigger(env, "t1", operation)
            assert reply.status == 202, reply.body
            assert reply.headers["Location"] == "/api/v1/tenants/t1/keys"
            assert reply.body == {"operation": operation, "tenant": "t1", "job": job_id,
                                  "status_url": "/api/v1/tenants/t1/keys"}
            # A second trigger while the first run works: 409, nothing started twice.
            again = await trigger(env, "t1", operation)
            assert again.status == 409
            assert "already running" in again.error
            # The CLI's run (in-process here) is refused by the same lease.
            run = rotate_kek if operation == "rotate-kek" else reindex
            with pytest.raises(JobBusy):
                await run(job_context(srv.services, actor="cli", progress=False), "t1")
            job = await wait_done(env, "t1", operation)
            assert job["id"] == job_id
            assert job["target_version"] == 2
            assert job["counters"].get("customers") == len(wallets)
            assert job["finished_at"] is not None
    finally:
        readers.stop.set()
        await reading
    assert readers.failures == []
    assert readers.reads > len(readers.wallets)
    after = await status(env, "t1")
    assert (after["kek_version"], after["kek_versions"]) == (2, [2])
    assert (after["index_version"], after["index_next"], after["index_stage"]) == (2, None, None)
    assert after["jobs"]["rotate-kek"]["stage"] == "done"
    for customer_id, wallet in wallets.items():  # every customer still reads after
        reply = await wallet.get()
        assert (reply.status, reply.json["id"]) == (200, customer_id)
    # Audited like the CLI path, naming the token that triggered it.
    actions = await audit_actions(env, "t1")
    actor = actor_of(env.operator)
    for action in ("key.job_start", "key.rotate_kek", "key.reindex"):
        assert (action, actor) in actions, (action, actions)
    # The other tenant was never touched.
    assert await status(env, "t2") == t2_before
    assert all(a[0] not in ("key.rotate_kek", "key.reindex")
               for a in await audit_actions(env, "t2"))


def token_of(srv: RunningServer, tenant_id: str, sub: str) -> str:
    tenant = tenant_of(srv, tenant_id)
    return issue_token(tenant, sub=sub, jti=uuid.uuid4().hex,
                       home_domain=tenant.home_domains[0])


async def kyc_status(srv: RunningServer, host: str, bearer: str) -> int:
    reply = await srv.fetch(host, "/kyc/customer", headers={"Authorization": f"Bearer {bearer}"})
    return reply.code


async def jwks_kids(srv: RunningServer, host: str) -> list[str]:
    reply = await srv.fetch(host, "/.well-known/jwks.json")
    return sorted(k["kid"] for k in json.loads(reply.body)["keys"])


async def test_rotate_jwt_via_api_keeps_old_tokens_and_publishes_the_new_kid(
        env: KeysEnv) -> None:
    srv = env.srv
    account = Keypair.random().public_key
    old_token = token_of(srv, "t1", account)
    [old_kid] = await jwks_kids(srv, "a.test")
    t2_kids = await jwks_kids(srv, "b.test")
    reply = await trigger(env, "t1", "rotate-jwt")
    assert reply.status == 200, reply.body
    new_kid = reply.body["kid"]
    assert (reply.body["operation"], reply.body["jwt_generation"]) == ("rotate-jwt", 2)
    assert reply.body["previous_kid"] == old_kid != new_kid
    # Served at once by this process: jwks has both, old tokens still pass, new ones too.
    assert await jwks_kids(srv, "a.test") == sorted([old_kid, new_kid])
    assert await kyc_status(srv, "a.test", old_token) == 200
    new_token = token_of(srv, "t1", account)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert await kyc_status(srv, "a.test", new_token) == 200
    keys = await status(env, "t1")
    assert [(k["kid"], k["current"]) for k in keys["jwt_keys"]] == [(old_kid, False),
                                                                    (new_kid, True)]
    assert keys["jwt_generation"] == 2
    # Nothing secret in the status: no seed (S...), no raw key bytes.
    text = str(keys)
    assert tenant_of(srv, "t1").secrets.signing_seed not in text
    assert "seed" not in text
    assert "secret" not in text
    assert ("key.rotate_jwt", actor_of(env.operator)) in await audit_actions(env, "t1")
    # t2 kept its key; its tokens are not accepted by t1 and vice versa.
    assert await jwks_kids(srv, "b.test") == t2_kids
    assert await kyc_status(srv, "b.test", new_token) == 401


async def test_rotate_signing_via_api_and_env_managed_key_is_refused(
        make_server: MakeServer, checker: OpenApiChecker,
        make_token_for: Callable[[RunningServer], MakeToken],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KYC_T3_SIGNING_SEED", Keypair.random().secret)
    srv = await make_server(kyc_doc("t1", ["a.test"]),
                            kyc_doc("t3", ["c.test"], signing_key_env="KYC_T3_SIGNING_SEED"),
                            tenant_refresh_seconds=REFRESH_SECONDS)
    make = make_token_for(srv)
    env = KeysEnv(srv, Api(srv, checker), await make(None, ["operator"]), await make("t1"),
                  make)
    before = tenant_of(srv, "t1").secrets.signing_keypair.public_key
    reply = await trigger(env, "t1", "rotate-signing")
    assert reply.status == 200, reply.body
    after = reply.body["signing_key"]
    assert reply.body["previous_signing_key"] == before != after
    toml = (await srv.fetch("a.test", "/.well-known/stellar.toml")).body.decode()
    assert f'SIGNING_KEY = "{after}"' in toml
    keys = await status(env, "t1")
    assert [(k["public_key"], k["current"]) for k in keys["signing_keys"]] == [
        (before, False), (after, True)]
    # A key from the environment is rotated there: 409 naming the variable, nothing changed.
    t3_before = await status(env, "t3")
    assert t3_before["signing_key_env"] == "KYC_T3_SIGNING_SEED"
    refused = await trigger(env, "t3", "rotate-signing")
    assert refused.status == 409
    assert "KYC_T3_SIGNING_SEED" in refused.error
    assert await status(env, "t3") == t3_before
    assert all(a[0] != "key.rotate_signing" for a in await audit_actions(env, "t3"))


async def test_key_routes_are_operator_only_and_never_cross_tenants(env: KeysEnv) -> None:
    t2_token = await env.make_token("t2")
    before = {t: await status(env, t) for t in ("t1", "t2")}
    for tenant, token, expected in (("t1", env.t1, 403), ("t2", env.t1, 404),
                                    ("t1", t2_token, 404)):
        for operation in ("rotate-kek", "reindex", "rotate-jwt", "rotate-signing", "nope"):
            reply = await trigger(env, tenant, operation, token=token)
            assert reply.status == expected, (tenant, operation, reply.body)
        reply = await env.api.call("GET", f"/api/v1/tenants/{tenant}/keys", token=token)
        assert reply.status == expected
    # Operator tokens need the scope of each route.
    reader = await env.make_token(None, ["tenants:read"])
    assert (await trigger(env, "t1", "rotate-jwt", token=reader)).status == 403
    writer = await env.make_token(None, ["keys:write"])
    reply = await env.api.call("GET", "/api/v1/tenants/t1/keys", token=writer)
    assert reply.status == 403
    # Unknown operation and unknown tenant: 404 naming what was not found.
    unknown = await trigger(env, "t1", "rotate-everything")
    assert unknown.status == 404
    assert "rotate-everything" in unknown.error
    assert "rotate-kek" in unknown.error
    for path in ("/api/v1/tenants/nope/keys/rotate-jwt", "/api/v1/tenants/nope/keys"):
        method = "POST" if path.endswith("jwt") else "GET"
        reply = await env.api.call(method, path, token=env.operator)
        assert (reply.status, reply.error) == (404, "tenant not found")
    assert {t: await status(env, t) for t in ("t1", "t2")} == before
    for tenant in ("t1", "t2"):
        assert all(not a[0].startswith("key.") for a in await audit_actions(env, tenant))
