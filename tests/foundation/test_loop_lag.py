"""Event-loop lag metric (reliability-plan F8/L5 "no event-loop stall > 100 ms"; looplag.py).

``make_server`` runs the server in the test's own event loop, so a ``time.sleep`` in the
test blocks the server's loop exactly like a blocking handler or plugin would. The stall is
then read back from the admin listener's ``/metrics`` over HTTP. Only lower bounds that the
sleep guarantees are asserted (a 0.5 s stall delays the 0.1 s probe by at least 0.4 s); how
small the lag is on an idle loop depends on machine load, so it is not asserted.
"""

from __future__ import annotations

import asyncio
import time

from prometheus_client.parser import text_string_to_metric_families
from tornado.netutil import bind_sockets

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.app import Server, build_services
from kyc_host.looplag import LoopLagProbe
from kyc_host.metrics import Metrics
from kyc_host.settings import PlatformSettings

STALL_SECONDS = 0.5


def block_the_loop(seconds: float) -> None:
    """What a blocking handler or plugin does to the loop it runs on."""
    time.sleep(seconds)


def lag_samples(text: str) -> dict[str, float]:
    """``{"count": .., "le=0.1": .., ..., "max": ..}`` from a Prometheus exposition."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kyc_event_loop_lag_seconds_bucket":
                found[f"le={float(sample.labels['le'])}"] = sample.value
            elif sample.name == "kyc_event_loop_lag_seconds_count":
                found["count"] = sample.value
            elif sample.name == "kyc_event_loop_lag_max_seconds":
                found["max"] = sample.value
    return found


async def scrape(srv: RunningServer) -> dict[str, float]:
    reply = await srv.fetch("localhost", "/metrics", admin=True)
    assert reply.code == 200
    return lag_samples(reply.body.decode())


async def probed(srv: RunningServer, at_least: float) -> dict[str, float]:
    """Scrape until the probe has taken ``at_least`` samples (bounded, never a timing)."""
    for _ in range(100):
        samples = await scrape(srv)
        if samples.get("count", 0) >= at_least:
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"the loop-lag probe took no samples: {samples}")


async def test_a_blocked_loop_shows_in_the_histogram_and_the_max(make_server: MakeServer) -> None:
    srv = await make_server(make_tenant_doc("t1", ["a.test"]), make_tenant_doc("t2", ["b.test"]))
    before = await probed(srv, 3)
    # Histogram buckets are cumulative and include 0.1 s (the stall limit of F8 / L5).
    assert set(before) >= {"count", "max", "le=0.001", "le=0.1", "le=1.0", "le=inf"}
    assert before["le=inf"] == before["count"]
    block_the_loop(STALL_SECONDS)  # the server's loop: it runs in this test's loop
    after = await probed(srv, before["count"] + 1)
    assert after["count"] - after["le=0.1"] >= before["count"] - before["le=0.1"] + 1
    assert after["count"] - after["le=0.25"] >= 1
    assert after["max"] >= STALL_SECONDS - 0.1 - 1e-3
    assert srv.server.loop_lag is not None
    assert after["max"] == srv.server.loop_lag.max_lag
    # Serving goes on: the max is since the process started, a later scrape keeps it.
    assert (await srv.fetch("a.test", "/.well-known/stellar.toml")).code == 200
    assert (await scrape(srv))["max"] == after["max"]


async def test_each_server_has_its_own_probe_and_stops_it(settings: PlatformSettings) -> None:
    """The probe starts with Server.start and is cancelled by Server.stop (no timer left
    on the loop for a stopped server); two servers in one process do not share values."""
    servers = []
    for _ in range(2):
        services = await build_services(settings, apply_tenant_files=False)
        server = Server(services)
        server.start(bind_sockets(0, "127.0.0.1"), bind_sockets(0, "127.0.0.1"))
        servers.append(server)
    first, second = servers
    assert first.loop_lag is not None
    assert second.loop_lag is not None
    assert first.loop_lag.running
    assert second.loop_lag.running
    await first.stop(1.0)
    assert not first.loop_lag.running
    assert second.loop_lag.running
    stopped_count = _count(first.services.metrics)
    await asyncio.sleep(0.35)
    assert _count(first.services.metrics) == stopped_count
    assert _count(second.services.metrics) > 0
    await second.stop(1.0)
    assert not second.loop_lag.running


async def test_probe_records_every_tick_and_stop_is_idempotent() -> None:
    metrics = Metrics()
    probe = LoopLagProbe(metrics, interval=0.01)
    probe.start()
    pending = probe._handle
    probe.start()  # a second start does not add a second timer
    assert probe._handle is pending
    for _ in range(200):
        if _count(metrics) >= 5:
            break
        await asyncio.sleep(0.01)
    block_the_loop(0.2)
    await asyncio.sleep(0.05)
    probe.stop()
    probe.stop()
    assert not probe.running
    assert probe.max_lag >= 0.2 - 0.01 - 1e-3
    count = _count(metrics)
    await asyncio.sleep(0.05)
    assert _count(metrics) == count >= 6


def _count(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("kyc_event_loop_lag_seconds_count")
    return value or 0.0
