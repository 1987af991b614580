"""What a plugin may use: :class:`TenantContext`, built once per tenant version.

The context is the plugin's whole view of the platform, scoped to its own tenant: the
tenant's id and read-only config, its ``plugin_settings``, a customers view bound to the
tenant's own collections, a logger that tags every line with the tenant id, and the
platform's outbound HTTP client (SSRF-safe, with time and size caps) when one is
configured. It holds no secrets and no store handle, so a plugin cannot name another
tenant's data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from kyc_host.hooks.contract import CustomerData, FileRef
from kyc_host.net.safe_http import DEFAULT_MAX_BYTES, MAX_TIMEOUT, SafeHttpClient, SafeResponse
from kyc_host.sep.sep12_types import Decision
from kyc_host.store.customers import CustomerRecord, CustomerRepository
from kyc_host.store.files import FileInfo, FileRepository
from kyc_host.tenancy.schema import TenantConfig


class TenantHttp:
    """The platform's SSRF-safe client (``kyc_host.net.safe_http``) for one tenant's plugin.

    https only, public addresses only, no redirects, capped time and size; the tenant's
    requests share their own concurrency slots, so a plugin waiting on a slow vendor cannot
    starve another tenant's outbound calls. Raises ``kyc_host.net.safe_http.FetchError``.
    """

    def __init__(self, client: SafeHttpClient, tenant_id: str) -> None:
        self._client = client
        self._key = f"plugin:{tenant_id}"

    async def fetch(self, url: str, *, method: str = "GET", body: bytes | None = None,
                    headers: Mapping[str, str] | None = None,
                    max_bytes: int = DEFAULT_MAX_BYTES,
                    timeout: float = MAX_TIMEOUT) -> SafeResponse:  # noqa: ASYNC109
        return await self._client.fetch(url, method=method, body=body, headers=headers,
                                        max_bytes=max_bytes, timeout=timeout,
                                        limit_key=self._key)


class TenantLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger adapter that adds ``tenant`` and keeps the caller's own ``extra`` keys."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def tenant_log(tenant_id: str, plugin: str | None) -> TenantLog:
    name = f"kyc_host.plugins.{plugin}" if plugin else "kyc_host.hooks"
    return TenantLog(logging.getLogger(name), {"tenant": tenant_id})


def file_ref(info: FileInfo) -> FileRef:
    return FileRef(info.id, info.content_type, info.size)


def customer_data(record: CustomerRecord, files: Mapping[str, FileInfo]) -> CustomerData:
    """The read-only view of a record that hooks receive (``files`` by file id)."""
    return CustomerData(
        id=record.id,
        fields=dict(record.fields),
        files={name: file_ref(files[fid]) for name, fid in record.files.items() if fid in files},
        verified=frozenset(n for n, v in record.verifications.items() if v.verified),
    )


class CustomersView:
    """The tenant's customers as a plugin may use them (reads and review decisions)."""

    def __init__(self, customers: CustomerRepository, files: FileRepository) -> None:
        self._customers = customers
        self._files = files

    async def get(self, customer_id: str) -> CustomerData | None:
        record = await self._customers.load(customer_id)
        if record is None:
            return None
        infos = {f.id: f for f in await self._files.for_customer(customer_id)}
        return customer_data(record, infos)

    async def set_decision(self, customer_id: str, type_name: str,
                           decision: Decision | None) -> bool:
        """Store a decision later (e.g. when a vendor's verdict arrives); False if unknown."""
        return await self._customers.set_decision(customer_id, type_name, decision)

    async def file_contents(self, file_id: str) -> bytes | None:
        """A file's decrypted bytes, e.g. to send an ID photo to a verification vendor."""
        return await self._files.read(file_id)


@dataclass(frozen=True, slots=True)
class TenantContext:
    """Handed to every hook call. One per tenant version; treat it as read-only."""

    tenant_id: str
    config: TenantConfig
    customers: CustomersView
    log: TenantLog
    http: TenantHttp | None = None

    @property
    def settings(self) -> Mapping[str, Any]:
        """The tenant file's ``[plugin_settings]`` table (read-only)."""
        return self.config.plugin_settings
