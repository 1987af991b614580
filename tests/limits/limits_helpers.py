"""Servers with small per-tenant limits, wallets that log in, and requests "from" an IP.

Rate limits are off in the shared ``settings`` fixture (other suites send thousands of
requests from 127.0.0.1); every server here turns them on. Requests from other client IPs
go through 127.0.0.1 as a trusted proxy with ``X-Forwarded-For`` when a test needs them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from stellar_sdk import Keypair
from tornado.httpclient import HTTPResponse

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.ratelimit import bodyrate
from kyc_host.settings import SETTINGS
from sep10.sep10_helpers import HorizonStub, sign
from sep12.sep12_helpers import INDIVIDUAL

LOOPBACK_PROXY = ("127.0.0.1/32",)


def limited_doc(tenant_id: str, host: str, horizon: HorizonStub | None = None,
                **limits: Any) -> dict[str, Any]:
    extra: dict[str, Any] = {"customer_types": {"individual": INDIVIDUAL}}
    if horizon is not None:
        extra["horizon_url"] = horizon.url
    return make_tenant_doc(tenant_id, [host], limits=limits, **extra)


async def limited_server(make_server: MakeServer, *docs: Mapping[str, Any],
                         proxies: tuple[str, ...] = ()) -> RunningServer:
    parse = next(s.parse for s in SETTINGS if s.key == "trusted_proxies")
    return await make_server(*docs, rate_limits=True, trusted_proxies=parse(list(proxies)))


def from_ip(ip: str | None, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    out = dict(headers or {})
    if ip is not None:
        out["X-Forwarded-For"] = ip
    return out


async def get_auth(srv: RunningServer, host: str, account: str, *, ip: str | None = None,
                   headers: Mapping[str, str] | None = None, **params: str) -> HTTPResponse:
    query = "&".join(f"{k}={v}" for k, v in {"account": account, **params}.items())
    return await srv.fetch(host, f"/auth?{query}", headers=from_ip(ip, headers))


async def post_auth(srv: RunningServer, host: str, transaction: str, *,
                    ip: str | None = None) -> HTTPResponse:
    return await srv.fetch(host, "/auth", method="POST",
                           body=json.dumps({"transaction": transaction}),
                           headers=from_ip(ip, {"Content-Type": "application/json"}))


async def login(srv: RunningServer, host: str, keypair: Keypair, *,
                ip: str | None = None) -> HTTPResponse:
    """GET a challenge and POST it signed (the account does not exist: master key signs)."""
    challenge = await get_auth(srv, host, keypair.public_key, ip=ip)
    assert challenge.code == 200, challenge.body
    xdr = json.loads(challenge.body)["transaction"]
    return await post_auth(srv, host, sign(xdr, keypair), ip=ip)


def assert_limited(response: HTTPResponse | Any, limit: str) -> None:
    """429, a whole-seconds Retry-After, and a JSON error naming ``limits.<limit>``."""
    status = getattr(response, "code", None) or getattr(response, "status", None)
    assert status == 429, (status, response.body)
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    body = json.loads(response.body)
    assert set(body) == {"error"}
    assert f"limits.{limit}" in body["error"], body


def refused_count(srv: RunningServer, tenant: str, limit: str) -> float:
    value = srv.services.metrics.registry.get_sample_value(
        "kyc_rate_limited_total", {"tenant": tenant, "limit": limit})
    return value or 0.0


@pytest.fixture
def silent_uploads_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Admitted uploads that send no body keep their place until the body timer: the test
    holds the line or the memory with them on purpose. The server otherwise cuts such an
    upload from a sixth of the body timeout on (ratelimit/bodyrate.py, tested in
    test_body_rate.py); here that check comes only after the body timer."""
    monkeypatch.setattr(bodyrate, "GRACE_SHARE", 2.0)
