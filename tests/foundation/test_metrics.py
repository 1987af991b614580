"""Prometheus metrics on the admin listener (issue 9 item 3)."""

from __future__ import annotations

import re

from conftest import RunningServer


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " ") and not labels:
            return float(line.rsplit(" ", 1)[1])
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_requests_are_counted_by_tenant_route_and_status(two_tenants: RunningServer) -> None:
    for _ in range(3):
        assert (await two_tenants.fetch("a.test", "/.well-known/stellar.toml")).code == 200
    assert (await two_tenants.fetch("b.test", "/nope")).code == 404
    assert (await two_tenants.fetch("nobody.test", "/.well-known/stellar.toml")).code == 404
    reply = await two_tenants.fetch("localhost", "/metrics", admin=True)
    assert reply.code == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    text = reply.body.decode()
    assert sample(text, "kyc_http_requests_total", tenant="t1", route="StellarTomlHandler",
                  status="200") == 3
    assert sample(text, "kyc_http_requests_total", tenant="t2", route="NotFoundHandler",
                  status="404") == 1
    assert sample(text, "kyc_http_requests_total", tenant="", status="404") == 1
    assert sample(text, "kyc_http_requests_total", tenant="t2", route="StellarTomlHandler") == 0
    # Latency is per route over all tenants: t1's three plus the unknown host's one.
    assert sample(text, "kyc_http_request_duration_seconds_count",
                  route="StellarTomlHandler", method="GET") == 4
    assert sample(text, "kyc_tenants_loaded") == 2
    # Raw paths never become labels (they may carry account ids).
    assert "/.well-known" not in text


async def test_metrics_are_not_served_on_tenant_hosts(two_tenants: RunningServer) -> None:
    reply = await two_tenants.fetch("a.test", "/metrics")
    assert reply.code == 404
    assert b"kyc_http_requests" not in reply.body


async def test_made_up_methods_share_one_label(two_tenants: RunningServer) -> None:
    """Tornado answers any method token (405); labelled as sent, each one a client made up
    added 18 series (counter and latency histogram) for the life of the process."""
    for n in range(5):
        reply = await two_tenants.fetch("a.test", "/.well-known/stellar.toml", method=f"XM{n}")
        assert reply.code == 405
    assert (await two_tenants.fetch("b.test", "/.well-known/stellar.toml",
                                    method="BREW")).code == 405
    assert (await two_tenants.fetch("a.test", "/.well-known/stellar.toml")).code == 200
    text = (await two_tenants.fetch("localhost", "/metrics", admin=True)).body.decode()
    assert not re.search(r'method="(XM\d|BREW)"', text)
    # Refused before the tenant is looked up: counted without one.
    assert sample(text, "kyc_http_requests_total", tenant="", route="StellarTomlHandler",
                  method="other", status="405") == 6
    assert sample(text, "kyc_http_requests_total", tenant="t1", route="StellarTomlHandler",
                  method="GET", status="200") == 1
    assert sample(text, "kyc_http_request_duration_seconds_count",
                  route="StellarTomlHandler", method="other") == 6
