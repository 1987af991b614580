"""reliability-plan F10 (1): the master key is not available to this process.

Two ways it happens with the key-file provider: the file goes away while serving (the keys
already loaded stay in memory, so nothing changes for anyone), or another host re-wraps a
tenant under a master key version this process has not loaded yet. Then that tenant's routes
answer 503 JSON with Retry-After -- never a 500, never plaintext written -- the other tenant
is untouched, and the tenant recovers by itself once the key file holds the version.
"""

from __future__ import annotations

from pathlib import Path

from callbacks.cb_helpers import eventually
from conftest import MakeServer, RunningServer
from keys.keys_helpers import Snapshot, snapshot
from kyc_host.crypto.aead import new_key
from kyc_host.crypto.master import LocalKeyProvider, format_key_line, parse_key_lines
from kyc_host.crypto.tenant_keys import live_record, rewrap_record
from kyc_host.tenancy.registry import KEYS_UNAVAILABLE
from sep12.sep12_helpers import ALICE, Reply, Wallet, two_kyc_tenants


def _held_keys(key_file: Path) -> dict[int, bytes]:
    return parse_key_lines(key_file.read_text(), str(key_file))


def _append_key(key_file: Path, version: int, key: bytes) -> None:
    with key_file.open("a") as fh:
        fh.write(format_key_line(version, key) + "\n")


def _remove(key_file: Path) -> None:
    key_file.unlink()


def _tenant_data(copy: Snapshot, tenant_id: str) -> Snapshot:
    return {key: docs for key, docs in copy.items() if key[0] == tenant_id}


async def _wallets(srv: RunningServer) -> tuple[Wallet, Wallet]:
    first, second = Wallet(srv, "a.test", "t1"), Wallet(srv, "b.test", "t2")
    await first.create()
    await second.create()
    return first, second


async def test_a_tenant_wrapped_by_an_unloaded_master_version_answers_503_until_it_is_loaded(
        make_server: MakeServer) -> None:
    srv = await two_kyc_tenants(make_server)
    wallet, other = await _wallets(srv)
    key_file: Path = srv.services.settings.master_key_file
    held = _held_keys(key_file)
    version = max(held) + 1
    newer = new_key()
    # "Another host" added master version n+1 and re-wrapped t1 with it; this process's key
    # file does not have it yet.
    elsewhere = LocalKeyProvider({**held, version: newer})
    assert await rewrap_record(srv.services.store, elsewhere,
                               await live_record(srv.services.store, "t1"))
    rev = (await live_record(srv.services.store, "t1"))["rev"]
    await eventually(lambda: srv.services.registry.get("t1").rev == rev,  # type: ignore[union-attr]
                     what="t1 reloaded")
    before = _tenant_data(await snapshot(srv), "t1")

    replies = [await wallet.get(), await wallet.put({**ALICE, "first_name": "Plain"})]
    for path in ("/.well-known/stellar.toml", f"/auth?account={wallet.account}"):
        raw = await srv.fetch("a.test", path)
        replies.append(Reply(raw.code, raw.body or b"", dict(raw.headers)))
    for reply in replies:
        assert reply.status == 503, reply.body
        assert reply.json == {"error": KEYS_UNAVAILABLE}
        assert reply.headers["Retry-After"] == "30"
    # Nothing was written for the refused PUT; the other tenant is served as before.
    assert _tenant_data(await snapshot(srv), "t1") == before
    assert (await other.get()).status == 200
    assert (await srv.fetch("b.test", "/.well-known/stellar.toml")).code == 200

    # The key file gains the version (as `keys add-master-version` does on this host): the
    # refresh poll reloads it and t1 is served again without a restart.
    _append_key(key_file, version, newer)

    async def served() -> bool:
        return (await wallet.get()).status == 200

    await eventually(served, what="t1 served again")
    assert (await wallet.get()).json["status"] in ("NEEDS_INFO", "PROCESSING", "ACCEPTED")


async def test_a_key_file_removed_while_serving_changes_nothing(
        make_server: MakeServer) -> None:
    """The loaded keys stay in memory: losing the file must not take the service down.
    (A start without the key file is refused outside dev mode: tests/foundation.)"""
    srv = await two_kyc_tenants(make_server)
    wallet, other = await _wallets(srv)
    key_file: Path = srv.services.settings.master_key_file
    keys = srv.services.keys
    assert isinstance(keys, LocalKeyProvider)
    _remove(key_file)
    assert keys.reload_if_changed() is False  # logged, loaded keys kept
    new_customer = Wallet(srv, "a.test", "t1")
    assert (await new_customer.put(ALICE)).status == 202
    for each in (wallet, other, new_customer):
        reply = await each.get()
        assert reply.status == 200
        assert reply.json["id"]
