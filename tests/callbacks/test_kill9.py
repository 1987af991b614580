"""reliability-plan F5 with real processes: ``kyc-host serve`` is killed with SIGKILL twice
and stopped with SIGTERM once while its callbacks are being retried against a failing
receiver; once the receiver recovers, every event is delivered (at least once, same id)."""

from __future__ import annotations

import signal
from pathlib import Path

from callbacks.cb_helpers import FAST, Receiver, complete, customer_with_callback, eventually
from conftest import RunningServer, make_tenant_doc
from faults.deploy import Deployment
from kyc_host.app import Server, build_services
from kyc_host.settings import load_settings
from sep12.sep12_helpers import Wallet

CUSTOMERS_PER_TENANT = 20


def _deployment(root: Path, storage_url: str) -> Deployment:
    """Two tenants; the test backoff is short (FAST), so allow attempts for the whole scenario."""
    return Deployment(root, storage_url, [
        make_tenant_doc(tenant_id, [host], callbacks={"max_attempts": 200})
        for tenant_id, host in (("t1", "a.test"), ("t2", "b.test"))], settings=FAST)


async def test_kill9_twice_and_sigterm_during_retries_then_all_delivered(
        backend: str, tmp_path: Path, receiver: Receiver) -> None:
    deployment = _deployment(tmp_path, backend)
    deployment.start()
    try:
        await deployment.ready()
        await _scenario(deployment, receiver)
    finally:
        deployment.kill_if_running()


async def _scenario(deployment: Deployment, receiver: Receiver) -> None:
    # This test process opens the same store to mint wallet tokens with the tenants' keys
    # (sep10_tokens.issue_token), then talks to the server over real HTTP.
    settings = load_settings(deployment.config, environ={})
    services = await build_services(settings, apply_tenant_files=False)
    client = RunningServer(services, Server(services), deployment.public_port,
                           deployment.admin_port)
    try:
        sinks = {}
        for tenant_id in ("t1", "t2"):
            key = services.registry.get(tenant_id)
            assert key is not None
            sinks[tenant_id] = receiver.sink(
                f"/{tenant_id}", public_key=key.secrets.signing_keypair.public_key,
                status=503, delay=0.1)
        customers: dict[str, str] = {}
        for tenant_id, host in (("t1", "a.test"), ("t2", "b.test")):
            for _ in range(CUSTOMERS_PER_TENANT):
                wallet = Wallet(client, host, tenant_id)
                customer_id = await customer_with_callback(wallet, receiver.url(f"/{tenant_id}"))
                customers[customer_id] = tenant_id
                await complete(wallet)

        def attempts() -> int:
            return sum(len(s.hits) for s in sinks.values())

        for signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
            seen = attempts()
            await eventually(lambda seen=seen: attempts() >= seen + 10, what="more attempts")
            code = deployment.stop(signum)
            assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 0)
            deployment.start()
            await deployment.ready()
        for sink in sinks.values():
            sink.status, sink.delay = 200, 0.0

        def delivered() -> set[str]:
            return {h.json["id"] for s in sinks.values() for h in s.delivered()}

        await eventually(lambda: delivered() == set(customers), within=60,
                         what="every event")
        for tenant_id, sink in sinks.items():
            assert all(h.verified for h in sink.hits)  # the receiver refuses other keys
            for hit in sink.delivered():
                assert customers[hit.json["id"]] == tenant_id
        # Duplicates are possible only for attempts cut by a kill, and share their event id.
        ids = [h.event_id for s in sinks.values() for h in s.delivered()]
        assert len(set(ids)) == len(customers)
        assert deployment.stop(signal.SIGTERM) == 0
        assert "Traceback" not in (deployment.root / "serve.log").read_text()
    finally:
        client.client.close()
        await services.store.close()
