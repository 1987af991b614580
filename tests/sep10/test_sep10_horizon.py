"""The Horizon reader on its own, against the local Horizon stand-in: what counts as "account
does not exist", what counts as "Horizon is unavailable", and what is an unreadable answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sep10_helpers import HorizonStub, horizon_fixture  # noqa: F401
from stellar_sdk import Keypair

from conftest import free_port
from kyc_host.net import AccountSigners, HorizonBadAnswer, HorizonClient, HorizonUnavailable
from kyc_host.net import horizon as horizon_module


@pytest.fixture(name="client")
async def client_fixture() -> AsyncIterator[HorizonClient]:
    client = HorizonClient(timeout=0.5, per_horizon_limit=2)
    yield client
    client.close()


async def test_existing_account(horizon: HorizonStub, client: HorizonClient) -> None:
    account, other = Keypair.random().public_key, Keypair.random().public_key
    horizon.set_account(account, {account: 1, other: 2}, med=3)
    horizon.state.accounts[account]["signers"].append(
        {"key": "XBU2RRGLXH3E5CQHTD3ODLDF2BWDCYUSSBLLZ5GNW7JXHDIYKXZWGTOG", "weight": 1,
         "type": "sha256_hash"})
    record = await client.account(horizon.url, account)
    assert record == AccountSigners(account, ((account, 1), (other, 2)), 3)


async def test_missing_account_is_none(horizon: HorizonStub, client: HorizonClient) -> None:
    assert await client.account(horizon.url, Keypair.random().public_key) is None


@pytest.mark.parametrize("mode", ["error", "hang"])
async def test_unavailable(horizon: HorizonStub, client: HorizonClient, mode: str) -> None:
    horizon.state.mode = mode
    with pytest.raises(HorizonUnavailable):
        await client.account(horizon.url, Keypair.random().public_key)


async def test_unreachable(client: HorizonClient) -> None:
    with pytest.raises(HorizonUnavailable):
        await client.account(f"http://127.0.0.1:{free_port()}", Keypair.random().public_key)


@pytest.mark.parametrize("record", [
    {"signers": [], "thresholds": {}},
    {"signers": [{"key": "GNOPE", "weight": 1, "type": "ed25519_public_key"}],
     "thresholds": {"med_threshold": 1}},
    {"signers": [{"key": "x", "weight": 300}], "thresholds": {"med_threshold": 1}},
    {"signers": "nope", "thresholds": {"med_threshold": 1}},
    {"signers": [], "thresholds": {"med_threshold": True}},
    {"account_id": "GOTHER", "signers": [], "thresholds": {"med_threshold": 0}},
])
async def test_unreadable_answer(horizon: HorizonStub, client: HorizonClient,
                                 record: dict[str, object]) -> None:
    account = Keypair.random().public_key
    horizon.state.accounts[account] = record
    with pytest.raises(HorizonBadAnswer):
        await client.account(horizon.url, account)


async def test_idle_connections_to_a_horizon_no_longer_used_are_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A Horizon no lookup goes to any more (its tenant moved to another, or was offboarded)
    kept its idle keep-alive connections open for good; they are closed once idle for
    IDLE_SECONDS, with no lookup needed. A connection used since stays open."""
    monkeypatch.setattr(horizon_module, "IDLE_SECONDS", 3.0)
    old, new = HorizonStub(), HorizonStub()
    client = HorizonClient(timeout=2, per_horizon_limit=4)
    try:
        await asyncio.gather(*(client.account(old.url, Keypair.random().public_key)
                               for _ in range(3)))
        assert len(old.http._connections) == 3  # kept alive
        await asyncio.sleep(1.5)  # half way: 1.5 s of margin either side
        await client.account(new.url, Keypair.random().public_key)
        in_use = set(new.http._connections)
        assert len(in_use) == 1
        for _ in range(160):  # no lookup meanwhile
            if not old.http._connections:
                break
            await asyncio.sleep(0.05)
        assert len(old.http._connections) == 0
        assert set(new.http._connections) == in_use  # idle for 1.5 s: not yet
    finally:
        client.close()
        await old.close()
        await new.close()
