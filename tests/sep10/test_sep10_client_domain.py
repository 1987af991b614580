"""client_domain (sep-digest §8 item 11; reliability-plan A5/A6): the wallet's stellar.toml is
read through the platform's safe HTTP client, its SIGNING_KEY must sign, and the tenant's
required / allow / deny settings apply."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sep10_helpers import (  # noqa: F401
    HorizonStub,
    Wallet,
    WalletSite,
    claims,
    decode,
    horizon_fixture,
    json_body,
    sign,
    srv_fixture,
    start_auth_server,
    tenant_of,
    wallet_fixture,
)
from stellar_sdk import Keypair
from stellar_sdk.sep.stellar_web_authentication import build_challenge_transaction

from conftest import MakeServer, RunningServer, free_port
from kyc_host.net import SafeHttpClient


@pytest.fixture
async def site() -> AsyncIterator[WalletSite]:
    server = WalletSite()
    yield server
    await server.close()


def point_wallet_domains(srv: RunningServer, site: WalletSite) -> None:
    """Dev-mode override: these names are served by local test servers."""
    srv.services.http = SafeHttpClient(dev_mode=True, static_hosts={
        "wallet.test": ("127.0.0.1", site.port),
        "app.wallet.test": ("127.0.0.1", site.port),
        "down.test": ("127.0.0.1", free_port()),  # nothing listens there
    })


async def test_client_domain_login(srv: RunningServer, wallet: Wallet, site: WalletSite) -> None:
    point_wallet_domains(srv, site)
    client = Keypair.random()
    xdr = await wallet.challenge("a.test", account=client.public_key, client_domain="wallet.test")
    ops = decode(xdr).transaction.operations
    assert [(op.data_name, op.data_value, op.source.account_id) for op in ops[2:]] == [
        ("client_domain", b"wallet.test", site.keypair.public_key)]
    response = await wallet.post("a.test", sign(xdr, client))
    assert response.code == 400
    assert "client_domain" in json_body(response)["error"]
    response = await wallet.post("a.test", sign(xdr, client, site.keypair))
    assert response.code == 200, response.body
    assert claims(json_body(response)["token"])["client_domain"] == "wallet.test"
    # The wallet key alone is not the account.
    xdr = await wallet.challenge("a.test", account=client.public_key, client_domain="wallet.test")
    assert (await wallet.post("a.test", sign(xdr, site.keypair))).code == 400


async def test_key_is_cached_per_tenant(srv: RunningServer, wallet: Wallet,
                                        site: WalletSite) -> None:
    point_wallet_domains(srv, site)
    client = Keypair.random().public_key
    for _ in range(3):
        await wallet.challenge("a.test", account=client, client_domain="wallet.test")
    assert site.state.requests == 1
    await wallet.challenge("b.test", account=client, client_domain="wallet.test")
    assert site.state.requests == 2


@pytest.mark.parametrize(("body", "status"), [
    (b'NETWORK_PASSPHRASE = "x"\n', 200),          # no SIGNING_KEY
    (b'SIGNING_KEY = "GNOTAKEY"\n', 200),           # not a G address
    (b"SIGNING_KEY = [1, 2\n", 200),                # not TOML
    (b"\xff\xfe", 200),                             # not UTF-8
    (b"", 404),
    (b"", 500),
    (b'SIGNING_KEY = "' + b"G" * 200_000 + b'"', 200),  # over 100 KB
])
async def test_unusable_wallet_toml_is_400(srv: RunningServer, wallet: Wallet, site: WalletSite,
                                           body: bytes, status: int) -> None:
    point_wallet_domains(srv, site)
    site.state.body, site.state.status = body, status
    response = await wallet.get("a.test", account=Keypair.random().public_key,
                                client_domain="wallet.test")
    assert response.code == 400, response.body
    assert "stellar.toml" in json_body(response)["error"]
    assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_unreachable_client_domain_is_400(srv: RunningServer, wallet: Wallet,
                                                site: WalletSite) -> None:
    point_wallet_domains(srv, site)
    response = await wallet.get("a.test", account=Keypair.random().public_key,
                                client_domain="down.test")
    assert response.code == 400
    assert "could not be fetched" in json_body(response)["error"]


async def test_wallet_toml_with_the_anchors_key_is_refused(srv: RunningServer, wallet: Wallet,
                                                           site: WalletSite) -> None:
    point_wallet_domains(srv, site)
    server_key = tenant_of(srv, "t1").secrets.signing_keypair.public_key
    site.state.body = f'SIGNING_KEY = "{server_key}"\n'.encode()
    response = await wallet.get("a.test", account=Keypair.random().public_key,
                                client_domain="wallet.test")
    assert response.code == 400
    assert "anchor's key" in json_body(response)["error"]


async def test_client_domain_syntax(srv: RunningServer, wallet: Wallet, site: WalletSite) -> None:
    point_wallet_domains(srv, site)
    client = Keypair.random().public_key
    for value in ("", "wallet", "wallet.test:443", "wallet.test/x", "user@wallet.test",
                  "https://wallet.test", "127.0.0.1", "[::1]", "wallet.test%00", "wället.test",
                  "-wallet.test", "wallet..test", "a" * 60 + ".test", "wallet.test."):
        response = await wallet.get("a.test", account=client, client_domain=value)
        assert response.code == 400, value
    assert site.state.requests == 0


async def test_tenant_policy(make_server: MakeServer, horizon: HorizonStub,
                             site: WalletSite) -> None:
    srv = await start_auth_server(make_server, horizon, sep10={
        "client_domain_required": True, "client_domain_allow": ["wallet.test", "other.test"],
        "client_domain_deny": ["bad.wallet.test"]})
    point_wallet_domains(srv, site)
    wallet = Wallet(srv)
    client = Keypair.random()
    response = await wallet.get("a.test", account=client.public_key)
    assert response.code == 400
    assert "required" in json_body(response)["error"]
    for denied in ("bad.wallet.test", "x.bad.wallet.test", "elsewhere.test"):
        response = await wallet.get("a.test", account=client.public_key, client_domain=denied)
        assert response.code == 403, denied
    token = await wallet.token("a.test", client, site.keypair, account=client.public_key,
                               client_domain="app.wallet.test")
    assert claims(token)["client_domain"] == "app.wallet.test"
    # A challenge without client_domain (signed with T1's key, so only the policy can stop
    # it) is refused at POST too.
    server = tenant_of(srv, "t1").secrets.signing_keypair
    bare = build_challenge_transaction(server.secret, client.public_key, "a.test", "a.test",
                                       "Test SDF Network ; September 2015")
    response = await wallet.post("a.test", sign(bare, client))
    assert response.code == 400
    assert "required" in json_body(response)["error"]
    # Other tenants are not affected by T1's policy.
    assert (await wallet.get("b.test", account=client.public_key)).code == 200
