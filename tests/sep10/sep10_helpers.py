"""Stand-ins for the services outside this machine that SEP-10 talks to, and a small wallet.

- :class:`HorizonStub`: a real Tornado HTTP server answering ``/accounts/<id>`` with the
  signers and thresholds a test configures, 404 for unknown accounts, or 500 / a hang.
- :class:`WalletSite`: a real HTTP server publishing a wallet's stellar.toml (client_domain).
- :class:`Wallet`: a client that uses only stellar-sdk's public helpers to log in.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from stellar_sdk import Keypair, TransactionEnvelope
from tornado.httpclient import HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from conftest import MakeServer, RunningServer, make_tenant_doc
from kyc_host.tenancy.registry import Tenant
from kyc_host.tenancy.schema import TESTNET

PASSPHRASE = TESTNET


class _Server:
    """A Tornado app on a free 127.0.0.1 port."""

    def __init__(self, app: Application) -> None:
        sockets = bind_sockets(0, "127.0.0.1")
        self.port = int(sockets[0].getsockname()[1])
        self.http = HTTPServer(app)
        self.http.add_sockets(sockets)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        self.http.stop()
        await self.http.close_all_connections()


@dataclass
class HorizonState:
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    mode: str = "ok"  # ok | error | hang
    requests: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


class _AccountHandler(RequestHandler):
    def initialize(self, state: HorizonState) -> None:
        self.state = state

    async def get(self, account_id: str) -> None:
        self.state.requests += 1
        if self.state.mode == "hang":
            await self.state.release.wait()
            return
        if self.state.mode == "error":
            self.set_status(500)
            self.finish({"status": 500})
            return
        record = self.state.accounts.get(account_id)
        if record is None:
            self.set_status(404)
            self.finish({"type": "https://stellar.org/horizon-errors/not_found", "status": 404})
            return
        self.finish(record)


class HorizonStub(_Server):
    def __init__(self) -> None:
        self.state = HorizonState()
        super().__init__(Application([(r"/accounts/([A-Z0-9]+)", _AccountHandler,
                                       {"state": self.state})]))

    def set_account(self, account_id: str, signers: Mapping[str, int], med: int,
                    low: int = 0, high: int = 0) -> None:
        """An existing account with these (key -> weight) signers and thresholds."""
        self.state.accounts[account_id] = {
            "id": account_id,
            "account_id": account_id,
            "sequence": "1",
            "thresholds": {"low_threshold": low, "med_threshold": med, "high_threshold": high},
            "signers": [{"key": k, "weight": w, "type": "ed25519_public_key"}
                        for k, w in signers.items()],
        }

    async def close(self) -> None:
        self.state.release.set()
        await super().close()


@dataclass
class WalletState:
    body: bytes = b""
    status: int = 200
    requests: int = 0


class _TomlHandler(RequestHandler):
    def initialize(self, state: WalletState) -> None:
        self.state = state

    def get(self) -> None:
        self.state.requests += 1
        self.set_status(self.state.status)
        self.set_header("Content-Type", "text/plain")
        self.finish(self.state.body)


class WalletSite(_Server):
    """A wallet's web site: ``/.well-known/stellar.toml`` with SIGNING_KEY = ``keypair``."""

    def __init__(self) -> None:
        self.keypair = Keypair.random()
        self.state = WalletState(body=f'SIGNING_KEY = "{self.keypair.public_key}"\n'.encode())
        super().__init__(Application([(r"/\.well-known/stellar\.toml", _TomlHandler,
                                       {"state": self.state})]))


def sign(xdr: str, *signers: Keypair) -> str:
    envelope = TransactionEnvelope.from_xdr(xdr, PASSPHRASE)
    for keypair in signers:
        envelope.sign(keypair)
    signed: str = envelope.to_xdr()
    return signed


def decode(xdr: str) -> TransactionEnvelope:
    return TransactionEnvelope.from_xdr(xdr, PASSPHRASE)


def json_body(response: HTTPResponse) -> Any:
    return json.loads(response.body)


@dataclass
class Wallet:
    """Talks to one running server like a wallet: GET challenge, sign, POST."""

    srv: RunningServer

    async def get(self, host: str, **params: str) -> HTTPResponse:
        query = f"?{urlencode(params)}" if params else ""
        return await self.srv.fetch(host, f"/auth{query}")

    async def challenge(self, host: str, **params: str) -> str:
        response = await self.get(host, **params)
        assert response.code == 200, response.body
        xdr: str = json_body(response)["transaction"]
        return xdr

    async def post(self, host: str, xdr: str, *, form: bool = False) -> HTTPResponse:
        if form:
            return await self.srv.fetch(
                host, "/auth", method="POST", body=urlencode({"transaction": xdr}),
                headers={"Content-Type": "application/x-www-form-urlencoded"})
        return await self.srv.fetch(host, "/auth", method="POST",
                                    body=json.dumps({"transaction": xdr}),
                                    headers={"Content-Type": "application/json"})

    async def login(self, host: str, *signers: Keypair, form: bool = False,
                    **params: str) -> HTTPResponse:
        xdr = await self.challenge(host, **params)
        return await self.post(host, sign(xdr, *signers), form=form)

    async def token(self, host: str, *signers: Keypair, **params: str) -> str:
        response = await self.login(host, *signers, **params)
        assert response.code == 200, response.body
        token: str = json_body(response)["token"]
        return token


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def tenant_of(srv: RunningServer, tenant_id: str) -> Tenant:
    tenant = srv.services.registry.get(tenant_id)
    assert tenant is not None
    return tenant


async def start_auth_server(make_server: MakeServer, horizon: HorizonStub,
                            **t1_overrides: Any) -> RunningServer:
    """T1 on a.test and T2 on b.test, both reading accounts from ``horizon``."""
    return await make_server(
        make_tenant_doc("t1", ["a.test"], horizon_url=horizon.url, **t1_overrides),
        make_tenant_doc("t2", ["b.test"], horizon_url=horizon.url))


# --- fixtures: import the *_fixture functions into a test module to use them ---


@pytest.fixture(name="horizon")
async def horizon_fixture() -> AsyncIterator[HorizonStub]:
    stub = HorizonStub()
    yield stub
    await stub.close()


@pytest.fixture(name="srv")
async def srv_fixture(make_server: MakeServer, horizon: HorizonStub) -> RunningServer:
    return await start_auth_server(make_server, horizon)


@pytest.fixture(name="wallet")
def wallet_fixture(srv: RunningServer) -> Wallet:
    return Wallet(srv)
