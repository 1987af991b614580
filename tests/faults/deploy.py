"""A real ``kyc-host serve`` deployment for the fault tests (kill -9, restarts). Index:

- :class:`Deployment`: a working directory with a settings file and tenant files. ``start``
  runs ``python -m kyc_host serve`` (``--workers N`` when asked) in a process group of its
  own, so ``kill_all`` can SIGKILL the supervisor and every worker at the same instant (what
  the OOM killer or ``docker kill`` does); ``kill_worker`` kills one worker only.
- :func:`connect`: this test process's own view of the deployment: the same settings and
  store (to mint wallet tokens with the tenants' keys, as ``sep10_tokens.issue_token`` does
  in the server, and to read records back) and an HTTP client bound to the deployment's
  ports, as a :class:`conftest.RunningServer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from tornado.httpclient import AsyncHTTPClient

from conftest import RunningServer, free_port
from kyc_host.app import Server, build_services
from kyc_host.metrics import MULTIPROC_ENV
from kyc_host.settings import load_settings

START_DEADLINE = 30.0
#: How long the processes of a killed group may take to disappear.
EXIT_DEADLINE = 10.0


class Deployment:
    """A working directory with a settings file and tenant files; runs ``serve``."""

    def __init__(self, root: Path, storage_url: str, tenant_docs: Sequence[Mapping[str, Any]],
                 settings: Mapping[str, Any] | None = None, workers: int = 1) -> None:
        self.root = root
        self.workers = workers
        self.public_port, self.admin_port = free_port(), free_port()
        self.config = root / "kyc-host.toml"
        self.config.write_text(tomli_w.dumps({
            "storage_url": storage_url, "master_key_file": str(root / "master.key"),
            "tenants_dir": str(root / "tenants"), "dev_mode": True, **(settings or {}),
            "public_listen": f"127.0.0.1:{self.public_port}",
            "admin_listen": f"127.0.0.1:{self.admin_port}"}))
        (root / "tenants").mkdir()
        for doc in tenant_docs:
            (root / "tenants" / f"{doc['id']}.toml").write_text(tomli_w.dumps(dict(doc)))
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_HOST_")}
        env.pop(MULTIPROC_ENV, None)
        flags: list[str] = []
        if self.workers > 1:
            flags = ["--workers", str(self.workers)]
            # Metric files of this run only (not a new directory under /tmp per start).
            self.starts += 1
            metrics = self.root / f"metrics-{self.starts}"
            metrics.mkdir()
            env[MULTIPROC_ENV] = str(metrics)
        with (self.root / "serve.log").open("ab") as log:  # the child keeps its own copy
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kyc_host", "serve", "--config", str(self.config),
                 *flags],
                cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)  # its own process group: see kill_all

    def log(self) -> str:
        path = self.root / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def ready(self) -> None:
        """Wait until /readyz answers 200 (and, with workers, until all of them run)."""
        client = AsyncHTTPClient(force_instance=True)
        end = time.monotonic() + START_DEADLINE
        try:
            while time.monotonic() < end:
                assert self.process is not None
                if self.process.poll() is not None:
                    pytest.fail(f"serve exited: {self.log()}")
                try:
                    reply = await client.fetch(f"http://127.0.0.1:{self.admin_port}/readyz",
                                               raise_error=False, request_timeout=2)
                    if reply.code == 200 and (self.workers <= 1
                                              or len(self.serving_workers()) == self.workers):
                        return
                except OSError:
                    pass
                await asyncio.sleep(0.05)
        finally:
            client.close()
        pytest.fail("serve did not become ready")

    def stop(self, signum: int) -> int:
        """Send ``signum`` to the serve process (the supervisor, with workers); its exit code."""
        assert self.process is not None
        self.process.send_signal(signum)
        return self.process.wait(30)

    def worker_pids(self) -> list[int]:
        """The worker processes of a ``--workers N`` supervisor (its children)."""
        assert self.process is not None
        pid = self.process.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def serving_workers(self) -> set[int]:
        """The workers that have logged "serving": their signal handlers are in place (one
        still starting ends by the default action of SIGTERM, without draining)."""
        serving = {int(pid) for pid in re.findall(r'"msg": "serving .*?, pid (\d+)', self.log())}
        return serving & set(self.worker_pids())

    def kill_worker(self, pid: int) -> None:
        """SIGKILL one worker; its supervisor starts a new one."""
        assert pid in self.worker_pids()
        os.kill(pid, signal.SIGKILL)

    def kill_all(self) -> None:
        """SIGKILL every process of the deployment at once, and wait until all are gone
        (sockets closed), so a restart cannot share its port with a dying worker."""
        assert self.process is not None
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(EXIT_DEADLINE)
        end = time.monotonic() + EXIT_DEADLINE
        while _group_alive(pgid):
            if time.monotonic() > end:
                pytest.fail(f"processes of group {pgid} outlived SIGKILL")
            time.sleep(0.02)

    def kill_if_running(self) -> None:
        if self.process is not None and (self.process.poll() is None
                                         or _group_alive(self.process.pid)):
            self.kill_all()


def _group_alive(pgid: int) -> bool:
    """Whether a live (not zombie) process of process group ``pgid`` remains."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after "(comm)": state, ppid, pgrp, ... (comm may contain spaces).
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state not in ("Z", "X"):
            return True
    return False


@contextlib.asynccontextmanager
async def connect(deployment: Deployment, max_clients: int = 10) -> AsyncIterator[RunningServer]:
    """The deployment as seen from this test process (its store opened here, its server
    reached over HTTP). ``.services.registry`` holds the tenants as ``serve`` applied them."""
    settings = load_settings(deployment.config, environ={})
    services = await build_services(settings, apply_tenant_files=False)
    client = RunningServer(services, Server(services), deployment.public_port,
                           deployment.admin_port,
                           AsyncHTTPClient(force_instance=True, max_clients=max_clients))
    try:
        yield client
    finally:
        client.client.close()
        await services.store.close()
