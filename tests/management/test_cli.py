"""``kyc-host token create/list/revoke`` and ``kyc-host audit verify`` as an operator runs them
(``python -m kyc_host`` in a subprocess) against the store a running server uses.

Each process pays ~2 s of imports, so independent invocations run concurrently."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from mgmt_helpers import Api, OpenApiChecker, checker_fixture  # noqa: F401 - fixtures

from conftest import MakeServer, make_tenant_doc
from kyc_host import audit
from kyc_host.management.tenants import offboard_tenant
from kyc_host.settings import PlatformSettings
from sep12.sep12_helpers import Wallet


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def cli(settings: PlatformSettings, cwd: Path, *args: str) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_HOST_")}
    store = ["--storage-url", settings.storage_url,
             "--master-key-file", str(settings.master_key_file), "--dev"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kyc_host", *args, *store, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def test_operator_bootstraps_with_the_cli(make_server: MakeServer,
                                                settings: PlatformSettings, tmp_path: Path,
                                                checker: OpenApiChecker) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]))
    api = Api(srv, checker)

    made = await cli(settings, tmp_path, "token", "create", "--operator", "--json")
    assert made.returncode == 0, made.stderr
    operator = json.loads(made.stdout)
    assert operator["kind"] == "operator"
    assert operator["scopes"] == ["operator"]
    onboarded = await api.call("POST", "/api/v1/tenants", token=operator["token"],
                               body=make_tenant_doc("t2", ["b.test"]))
    assert onboarded.status == 201

    text, *bad = await asyncio.gather(
        cli(settings, tmp_path, "token", "create", "--tenant", "t2", "--scopes",
            "audit:read,tokens:write", "--expires-in", "30", "--note", "ops"),
        # Bad usage: exit 2 with one line naming the problem.
        cli(settings, tmp_path, "token", "create", "--tenant", "nope", "--scopes", "audit:read"),
        cli(settings, tmp_path, "token", "create", "--tenant", "t2", "--scopes", "operator"))
    assert text.returncode == 0, text.stderr
    assert "shown only once" in text.stdout
    assert [(r.returncode, r.stderr.strip().splitlines()[-1]) for r in bad] == [
        (2, "kyc-host: no tenant 'nope'"),
        (2, "kyc-host: scope 'operator' is for operator tokens only")]
    tenant_token = next(line.split()[-1] for line in text.stdout.splitlines()
                        if line.strip().startswith("token:"))
    who = await api.call("GET", "/api/v1/whoami", token=tenant_token)
    assert who.body["tenant"] == "t2"
    assert who.body["scopes"] == ["audit:read", "tokens:write"]
    assert who.body["expires_at"] is not None

    listed, operators, revoked, unknown = await asyncio.gather(
        cli(settings, tmp_path, "token", "list", "--tenant", "t2"),
        cli(settings, tmp_path, "token", "list", "--json"),
        cli(settings, tmp_path, "token", "revoke", who.body["prefix"]),
        cli(settings, tmp_path, "token", "revoke", "ffffffffff"))
    assert listed.returncode == 0
    assert who.body["prefix"] in listed.stdout
    assert tenant_token not in listed.stdout
    assert "ops" in listed.stdout
    assert [t["prefix"] for t in json.loads(operators.stdout)] == [operator["prefix"]]
    assert revoked.returncode == 0, revoked.stderr
    assert unknown.returncode == 1
    assert "no token" in unknown.stderr

    srv.services.token_cache.forget(prefix=who.body["prefix"])  # skip the 10 s cache here
    assert (await api.call("GET", "/api/v1/whoami", token=tenant_token)).status == 401
    tokens = await api.call("GET", "/api/v1/tenants/t2/tokens", token=operator["token"])
    assert tokens.body["tokens"][0]["revoked_at"] is not None
    # The CLI's own actions are in the logs, with actor "cli".
    log = await api.call("GET", "/api/v1/tenants/t2/audit", token=operator["token"])
    assert [(e["action"], e["actor"]) for e in log.body["entries"]] == [
        ("tenant.create", f"token:{operator['prefix']}"), ("token.create", "cli"),
        ("token.revoke", "cli")]
    platform = await api.call("GET", "/api/v1/audit", token=operator["token"])
    assert [e["action"] for e in platform.body["entries"]] == ["token.create", "tenant.create"]


async def test_audit_verify_exit_codes(make_server: MakeServer, settings: PlatformSettings,
                                       tmp_path: Path) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]))
    store = srv.services.store
    for i in range(4):
        await audit.record(store, "t1", actor="system", action="test.step", request_id=str(i))
    ok, unknown = await asyncio.gather(
        cli(settings, tmp_path, "audit", "verify", "--tenant", "t1"),
        cli(settings, tmp_path, "audit", "verify", "--tenant", "nope"))
    assert ok.returncode == 0
    assert "4 entries" in ok.stdout
    assert "intact" in ok.stdout
    assert unknown.returncode == 2
    assert "no tenant" in unknown.stderr

    await store.tenant("t1", "audit").delete_one({"seq": 3})
    gone, as_json = await asyncio.gather(
        cli(settings, tmp_path, "audit", "verify", "--tenant", "t1"),
        cli(settings, tmp_path, "audit", "verify", "--tenant", "t1", "--json"))
    assert gone.returncode == 1
    assert "seq 3" in gone.stdout
    assert "missing" in gone.stdout
    assert json.loads(as_json.stdout)["first_bad_seq"] == 3


async def test_tenant_delete_offboards_one_tenant(make_server: MakeServer,
                                                 settings: PlatformSettings,
                                                 tmp_path: Path) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]))
    customer = await Wallet(srv, "a.test", "t1").create()
    neighbour = Wallet(srv, "b.test", "t2")
    await neighbour.create()

    unconfirmed, unknown = await asyncio.gather(
        cli(settings, tmp_path, "tenant", "delete", "t1"),
        cli(settings, tmp_path, "tenant", "delete", "nope", "--yes"))
    assert unconfirmed.returncode == 2
    assert "--yes" in unconfirmed.stderr
    assert unknown.returncode == 2
    assert "no tenant 'nope'" in unknown.stderr
    customers = srv.services.store.tenant("t1", "customers")
    assert await customers.find_one({"_id": customer}) is not None  # nothing happened yet

    done = await cli(settings, tmp_path, "tenant", "delete", "t1", "--yes")
    assert done.returncode == 0, done.stderr
    assert "t1: deleted" in done.stdout
    assert await customers.find_one({"_id": customer}) is None
    await srv.services.registry.refresh()
    assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 404
    assert (await neighbour.get()).status == 200  # the other tenant keeps its customer
    entries, _ = await audit.entries(srv.services.store, None, action="tenant.delete")
    assert [(e["actor"], e["details"]["tenant"]) for e in entries] == [("cli", "t1")]


async def test_deleted_and_unknown_tenants_are_the_same_usage_error(
        make_server: MakeServer, settings: PlatformSettings, tmp_path: Path) -> None:
    """A second ``tenant delete`` finds no tenant, like an id that never existed (and like the
    API's second DELETE): exit 2 with one line, nothing printed as deleted, no second audit
    entry. ``tenant suspend|resume`` of such an id is the same exit 2 as every other command."""
    srv = await make_server(make_tenant_doc("t1", ["a.test"]))
    first = await cli(settings, tmp_path, "tenant", "delete", "t1", "--yes")
    assert first.returncode == 0, first.stderr
    results = await asyncio.gather(
        cli(settings, tmp_path, "tenant", "delete", "t1", "--yes"),
        cli(settings, tmp_path, "tenant", "delete", "nope", "--yes"),
        cli(settings, tmp_path, "tenant", "suspend", "t1"),
        cli(settings, tmp_path, "tenant", "resume", "nope"))
    assert [(r.returncode, r.stdout, r.stderr.strip().splitlines()) for r in results] == [
        (2, "", ["kyc-host: no tenant 't1'"]), (2, "", ["kyc-host: no tenant 'nope'"]),
        (2, "", ["kyc-host: no tenant 't1'"]), (2, "", ["kyc-host: no tenant 'nope'"])]
    entries, _ = await audit.entries(srv.services.store, None, action="tenant.delete")
    assert [(e["actor"], e["details"]["tenant"]) for e in entries] == [("cli", "t1")]


async def test_an_interrupted_offboarding_is_finished_and_audited_once(
        make_server: MakeServer) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]))
    services = srv.services
    # A run cut after the record was marked deleted: hosts not freed, nothing audited yet.
    await services.store.platform("tenants").update_one({"_id": "t1"},
                                                        set={"status": "deleted"})
    assert await offboard_tenant(services, "t1", "cli") is not None  # finishes the run
    assert await services.store.platform("tenant_hosts").find_one({"_id": "a.test"}) is None
    assert await offboard_tenant(services, "t1", "cli") is None  # now there is no tenant
    entries, _ = await audit.entries(services.store, None, action="tenant.delete")
    assert [e["details"]["tenant"] for e in entries] == ["t1"]
