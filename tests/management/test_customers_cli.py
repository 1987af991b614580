"""``kyc-host customer decide|list`` as an operator's script runs them (``python -m kyc_host`` in
a subprocess) against the store a running server uses: output, exit codes 0/1/2, and the
wallet seeing the decision."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from review_helpers import ALICE, KycWallet

from conftest import MakeServer, make_tenant_doc
from kyc_host import audit
from kyc_host.settings import PlatformSettings


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


async def test_customer_decide_and_list(make_server: MakeServer, settings: PlatformSettings,
                                        tmp_path: Path) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]))
    alice = KycWallet(srv, "a.test", "t1")
    ann = KycWallet(srv, "a.test", "t1")
    alice_id = await alice.put(ALICE)
    ann_id = await ann.put({"first_name": "Ann", "email_address": "ann@example.com"})
    unknown_id = "00000000-0000-4000-8000-000000000000"

    def decide(*extra: str) -> list[str]:
        return ["customer", "decide", "--tenant", "t1", *extra]

    accepted, *refused = await asyncio.gather(
        cli(settings, tmp_path, *decide(alice_id, "--status", "accepted")),
        cli(settings, tmp_path, *decide(ann_id, "--status", "ACCEPTED")),
        cli(settings, tmp_path, *decide(unknown_id, "--status", "ACCEPTED")),
        cli(settings, tmp_path, "customer", "decide", "--tenant", "nope", alice_id,
            "--status", "ACCEPTED"),
        cli(settings, tmp_path, *decide(alice_id, "--status", "APPROVED")),
        cli(settings, tmp_path, *decide(alice_id, "--status", "NEEDS_INFO", "--field",
                                        "email_address")),
        cli(settings, tmp_path, *decide(alice_id, "--status", "REJECTED")))
    assert accepted.returncode == 0, accepted.stderr
    assert accepted.stdout.splitlines()[0] == (
        f"customer {alice_id} (individual): PROCESSING -> ACCEPTED")
    assert [(r.returncode, r.stderr.strip().splitlines()[-1]) for r in refused] == [
        (1, "kyc-host: cannot accept: required fields are missing: last_name"),
        (1, "kyc-host: customer not found"),
        (2, "kyc-host: no tenant 'nope'"),
        (2, "kyc-host: status: required, one of ACCEPTED, PROCESSING, NEEDS_INFO, REJECTED"),
        (2, "kyc-host: --field 'email_address': expected name=STATUS or name=STATUS:error"),
        (2, "kyc-host: message: required when status is REJECTED (SEP-12: the wallet shows "
            "why)")]
    assert (await alice.get())["status"] == "ACCEPTED"
    assert (await ann.get())["status"] == "NEEDS_INFO"

    more = await cli(settings, tmp_path, *decide(
        ann_id, "--status", "NEEDS_INFO", "--field",
        "email_address=rejected:That mailbox does not exist.", "--json"))
    assert more.returncode == 0, more.stderr
    assert json.loads(more.stdout)["decision"]["fields"] == {
        "email_address": {"status": "REJECTED", "error": "That mailbox does not exist."}}
    seen = await ann.get()
    assert seen["provided_fields"]["email_address"]["error"] == "That mailbox does not exist."
    assert {"email_address", "last_name"} <= set(seen["fields"])

    listed, accepted_only, bad_status, no_tenant = await asyncio.gather(
        cli(settings, tmp_path, "customer", "list", "--tenant", "t1"),
        cli(settings, tmp_path, "customer", "list", "--tenant", "t1", "--status", "accepted",
            "--json"),
        cli(settings, tmp_path, "customer", "list", "--tenant", "t1", "--status", "NOPE"),
        cli(settings, tmp_path, "customer", "list", "--tenant", "nope"))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(f"{ann_id}  ")
    assert "individual:NEEDS_INFO" in lines[0]
    assert lines[1].startswith(f"{alice_id}  ")
    assert "individual:ACCEPTED" in lines[1]
    assert "Alice" not in listed.stdout
    assert [c["id"] for c in json.loads(accepted_only.stdout)["customers"]] == [alice_id]
    assert (bad_status.returncode, no_tenant.returncode) == (2, 2)

    entries, _ = await audit.entries(srv.services.store, "t1", action="customer.decision")
    assert [(e["customer_id"], e["actor"], e["details"]["status"]) for e in entries] == [
        (alice_id, "cli", "ACCEPTED"), (ann_id, "cli", "NEEDS_INFO")]
    assert (await audit.verify(srv.services.store, "t1")).ok
