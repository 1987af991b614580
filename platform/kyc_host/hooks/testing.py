"""A test kit for plugin authors: run your hooks inside a real, in-process tenant.

The harness applies a tenant document to a fresh SQLite store in a temporary directory (the
real tenant service, key generation and encryption) and drives the platform's own SEP-12
service with your hooks, the same code path an HTTP request takes after authentication. So
a test exercises the platform's validation, ownership and status rules together with your
plugin, without a server or a network::

    from kyc_host.hooks.testing import PluginHarness
    from my_plugin import Hooks

    async def test_auto_accept() -> None:
        async with PluginHarness(Hooks(), plugin_settings={"auto_accept": True}) as kit:
            wallet = kit.wallet()
            customer_id = await kit.put(wallet, {"first_name": "Ada", "last_name": "Lovelace",
                                                 "email_address": "ada@example.com"})
            assert (await kit.get(wallet))["status"] == "ACCEPTED"

Requests refused by the platform or by a hook raise ``kyc_host.errors.ApiError`` with the
HTTP ``status`` and the public ``message`` a wallet would see.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from stellar_sdk import Keypair, MuxedAccount

from kyc_host.crypto.aead import new_key
from kyc_host.crypto.master import LocalKeyProvider
from kyc_host.hooks.context import TenantContext
from kyc_host.hooks.contract import CustomerHooks
from kyc_host.sep.sep10_tokens import Identity
from kyc_host.sep.sep12_body import Body
from kyc_host.sep.sep12_service import Sep12Service
from kyc_host.sep.sep12_tenant import build_service
from kyc_host.sep.sep12_types import Decision
from kyc_host.settings import load_settings, with_overrides
from kyc_host.store.customers import CustomerRepository
from kyc_host.store.sqlite import SqliteStore
from kyc_host.tenancy.registry import Tenant
from kyc_host.tenancy.schema import parse_tenant
from kyc_host.tenancy.service import TenantDocument, TenantService

DEFAULT_TENANT: Mapping[str, Any] = {
    "id": "plugin-test",
    "hosts": ["plugin-test.localhost"],
    "home_domain": "plugin-test.localhost",
    "network": "testnet",
    "customer_types": {
        "individual": {
            "required": ["first_name", "last_name", "email_address"],
            "optional": ["mobile_number", "photo_id_front", "birth_date"],
        },
    },
}


class PluginHarness:
    """An in-process tenant running ``hooks``. Use as ``async with``."""

    def __init__(self, hooks: CustomerHooks, *, tenant: Mapping[str, Any] | None = None,
                 plugin_settings: Mapping[str, Any] | None = None) -> None:
        self.hooks = hooks
        self.document = {**DEFAULT_TENANT, **(tenant or {})}
        if plugin_settings is not None:
            self.document["plugin_settings"] = dict(plugin_settings)
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._store: SqliteStore | None = None
        self._service: Sep12Service | None = None

    async def __aenter__(self) -> PluginHarness:
        self._tmp = tempfile.TemporaryDirectory(prefix="kyc-plugin-test-")
        directory = Path(self._tmp.name)
        self._store = SqliteStore(f"sqlite:///{directory / 'store.db'}")
        await self._store.start()
        keys = LocalKeyProvider({1: new_key()})
        config = parse_tenant(self.document, "plugin test kit")
        await TenantService(self._store, keys, dict(os.environ)).apply(
            [TenantDocument(config, self.document, "api")])
        record = await self._store.platform("tenants").find_one({"_id": config.id})
        if record is None:  # pragma: no cover - apply just wrote it
            raise RuntimeError("tenant was not stored")
        settings = with_overrides(load_settings(None, environ={}), dev_mode=True,
                                  plugins_dir=directory)
        tenant = Tenant(record, config, keys, settings)
        self._service = build_service(tenant, self._store, settings, hooks=self.hooks)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._store is not None:
            await self._store.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    @property
    def service(self) -> Sep12Service:
        if self._service is None:
            raise RuntimeError("use PluginHarness with 'async with'")
        return self._service

    @property
    def ctx(self) -> TenantContext:
        """The context your hooks receive."""
        return self.service.runner.ctx

    @property
    def customers(self) -> CustomerRepository:
        """The tenant's customer repository (decrypted records, decisions, codes)."""
        return self.service.customers

    @staticmethod
    def wallet(*, memo: int | None = None, muxed_id: int | None = None,
               client_domain: str | None = None) -> Identity:
        """A new wallet identity, as a verified SEP-10 token would give (``G``, ``G:m``, ``M``)."""
        account = Keypair.random().public_key
        muxed = None if muxed_id is None else MuxedAccount(account, muxed_id).account_muxed
        memo_text = str(muxed_id if muxed_id is not None else memo) if (
            muxed_id is not None or memo is not None) else None
        sub = muxed or (f"{account}:{memo_text}" if memo_text else account)
        return Identity(sub=sub, account=account, memo=memo_text, muxed=muxed,
                        client_domain=client_domain, jti=uuid.uuid4().hex, expires_at=2**31)

    async def put(self, wallet: Identity, data: Mapping[str, str], *,
                  files: Mapping[str, bytes] | None = None) -> str:
        """PUT /customer with these values (and binary fields); returns the customer id."""
        return await self.service.put_customer(wallet, Body(dict(data), dict(files or {})))

    async def get(self, wallet: Identity, **query: str) -> dict[str, Any]:
        """GET /customer with these query parameters; returns the response body."""
        return dict(await self.service.get_customer(wallet, query))

    async def delete(self, wallet: Identity, **body: str) -> None:
        await self.service.delete_customer(wallet, wallet.muxed or wallet.account,
                                           Body(dict(body)))

    async def verification_code(self, customer_id: str, field: str) -> str | None:
        """The code the platform issued for ``field`` (what your send hook delivered)."""
        return await self.customers.verification_code(customer_id, field)

    async def decide(self, customer_id: str, type_name: str, decision: Decision) -> None:
        """Store a review decision, as the management API will."""
        if not await self.customers.set_decision(customer_id, type_name, decision):
            raise LookupError("no such customer")
