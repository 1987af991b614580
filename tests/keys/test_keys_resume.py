"""Key jobs are resumable: a run that dies midway is finished by running it again.

In-process, a batch hook "kills" the run after N batches (the lease a kill -9 would leave
behind is then planted by hand); as a real process, ``kyc-host keys rotate`` is killed with
SIGKILL while it works and the same command is run again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import MakeServer, RunningServer
from keys.keys_helpers import job_context
from keys.test_keys_rotation import all_readable, make_customers
from kyc_host.crypto.jobs import JobBusy
from kyc_host.crypto.rotation import reindex, rotate_kek
from kyc_host.crypto.tenant_keys import read_secrets
from sep12.sep12_helpers import two_kyc_tenants


class Killed(Exception):
    pass


def kill_after(batches: int, pass_name: str) -> object:
    seen = {"n": 0}

    def hook(name: str, done: int) -> None:
        if name == pass_name:
            seen["n"] += 1
            if seen["n"] >= batches:
                raise Killed(f"killed in {name} after {done} records")

    return hook


async def plant_dead_lease(srv: RunningServer, job_id: str) -> None:
    """The lease a SIGKILLed run leaves: this host, a pid that no longer exists."""
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    await srv.services.store.platform("key_jobs").insert_one(
        {"_id": f"{job_id}:lease", "owner": "dead", "host": socket.gethostname(),
         "pid": dead.pid, "until": time.time() + 3600})


async def test_killed_rotation_and_reindex_resume(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallets = await make_customers(srv, 8)
    jobs = srv.services.store.platform("key_jobs")
    with pytest.raises(Killed):
        await rotate_kek(job_context(srv, batch=2, on_batch=kill_after(2, "customers")), "t1")
    state = await jobs.find_one({"_id": "rotate:t1"})
    assert state is not None
    assert state["stage"] == "rewrap"
    assert state["cursor"] != ""
    # Half-way: both KEKs held, records under either are readable.
    await all_readable(srv, "t1", list(wallets))
    await plant_dead_lease(srv, "rotate:t1")
    done = await rotate_kek(job_context(srv, batch=2), "t1")
    assert done["stage"] == "done"
    secrets = await read_secrets(srv.services.store, srv.services.keys, "t1")
    assert sorted(secrets.data_keks) == [2]
    await all_readable(srv, "t1", list(wallets))

    with pytest.raises(Killed):
        await reindex(job_context(srv, batch=2, on_batch=kill_after(1, "customers")), "t1")
    state = await jobs.find_one({"_id": "reindex:t1"})
    assert state is not None
    assert state["stage"] == "customers"
    for customer_id, wallet in wallets.items():  # mid-reindex lookups still work
        assert (await wallet.get()).json["id"] == customer_id
    await plant_dead_lease(srv, "reindex:t1")
    await reindex(job_context(srv, batch=2), "t1")
    secrets = await read_secrets(srv.services.store, srv.services.keys, "t1")
    assert (sorted(secrets.index_keys), secrets.index_next) == ([2], None)
    await asyncio.sleep(0.5)  # the server picks up the settled index key
    for customer_id, wallet in wallets.items():
        assert (await wallet.get()).json["id"] == customer_id


async def test_a_live_lease_is_respected(make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    await srv.services.store.platform("key_jobs").insert_one(
        {"_id": "rotate:t1:lease", "owner": "elsewhere", "host": "another-host", "pid": 1,
         "until": time.time() + 3600})
    with pytest.raises(JobBusy):
        await rotate_kek(job_context(srv), "t1")
    secrets = await read_secrets(srv.services.store, srv.services.keys, "t1")
    assert sorted(secrets.data_keks) == [1]  # nothing happened


def cli(srv: RunningServer, *argv: str) -> list[str]:
    settings = srv.services.settings
    return [sys.executable, "-m", "kyc_host", *argv, "--storage-url", settings.storage_url,
            "--master-key-file", str(settings.master_key_file)]


async def test_cli_rotation_killed_with_sigkill_is_finished_by_a_rerun(
        make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallets = await make_customers(srv, 6)
    jobs = srv.services.store.platform("key_jobs")
    env = {**os.environ, "KYC_HOST_TENANT_REFRESH_SECONDS": "2"}
    first = await asyncio.create_subprocess_exec(
        *cli(srv, "keys", "rotate", "--tenant", "t1"), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill it while it waits for the servers
            state = await jobs.find_one({"_id": "rotate:t1"})
            if state is not None and state["stage"] in ("activate", "rewrap"):
                break
            await asyncio.sleep(0.05)
        assert first.returncode is None, "the rotation finished before it could be killed"
        first.send_signal(signal.SIGKILL)
        await first.wait()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    state = await jobs.find_one({"_id": "rotate:t1"})
    assert state is not None
    assert state["stage"] != "done"
    rerun = await asyncio.to_thread(subprocess.run, cli(srv, "keys", "rotate", "--tenant", "t1"),
                                    env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming at stage" in rerun.stderr
    assert "ETA" in rerun.stderr  # the progress bar
    secrets = await read_secrets(srv.services.store, srv.services.keys, "t1")
    assert sorted(secrets.data_keks) == [2]
    await asyncio.sleep(0.5)
    await all_readable(srv, "t1", list(wallets))
    for customer_id, wallet in wallets.items():
        assert (await wallet.get()).json["id"] == customer_id
