"""The in-process view of the tenants in the store: exact host -> Tenant.

Each process loads every tenant once at start and then polls for records updated in the last
``WINDOW_SECONDS`` (one indexed query that usually returns nothing), replacing any whose
``rev`` differs from the loaded one. So a tenant applied by any process or host is served
everywhere within ``tenant_refresh_seconds``. The window (rather than "since my last poll")
tolerates writes that commit a little after their ``updated_at`` and modest clock skew
between hosts.

A window cannot see what changed before it began. So a poll compares the heads of *every*
record instead when the last successful poll began more than half a window ago (the store
was unreachable from this process for a while, the loop or the machine stalled, or
``tenant_refresh_seconds`` is long), and in any case every :data:`FULL_CHECK_SECONDS` (a
clock that stepped forward, or a host whose clock runs ahead of this one's). Without it, a
tenant suspended while the store was unreachable from one process for over 30 s stayed
active there until it restarted.

There is no default tenant: an unknown host resolves to None and the handler answers 404.
Secrets are unwrapped lazily, on a tenant's first request, so start-up with thousands of
tenants stays fast and idle tenants cost little memory.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any

from kyc_host.crypto.master import KeyProvider, KeyUnavailable
from kyc_host.errors import ConfigError, ServiceUnavailable
from kyc_host.hooks.isolation import retire_pool
from kyc_host.settings import PlatformSettings
from kyc_host.store.base import StoreError
from kyc_host.tenancy.schema import TenantConfig, parse_tenant
from kyc_host.tenancy.secrets import TenantSecrets, unwrap_secrets
from kyc_host.tenancy.service import TenantService

log = logging.getLogger(__name__)

WINDOW_SECONDS = 30.0
#: Longest time between two polls that compare every record's head (see the module doc).
FULL_CHECK_SECONDS = 300.0
#: Answer while a tenant's secrets cannot be unwrapped (reliability-plan F10).
KEYS_UNAVAILABLE = "this service's keys are unavailable; retry later"


def origin_for(host: str, settings: PlatformSettings) -> str:
    """The public origin of a tenant host.

    In dev mode ``*.localhost`` is served over plain http on the public listener's port, so
    the demo works without TLS; everything else is https behind the operator's proxy.
    """
    if settings.dev_mode and (host == "localhost" or host.endswith(".localhost")):
        port = settings.public_listen.port
        return f"http://{host}" if port == 80 else f"http://{host}:{port}"
    return f"https://{host}"


class Tenant:
    """One tenant as the request path sees it: config, derived URLs, lazily unwrapped keys."""

    def __init__(self, record: Mapping[str, Any], config: TenantConfig, keys: KeyProvider,
                 settings: PlatformSettings) -> None:
        self.config = config
        self.id = config.id
        self.status: str = record["status"]
        self.rev: str = record["rev"]
        self.manager: str = record["manager"]
        self._wrapped_secrets: Mapping[str, object] = record["secrets"]
        #: The tenant document as stored (what ``config`` was parsed from); an untrusted
        #: plugin's worker process parses its own copy (hooks/isolation.py).
        self.document: Mapping[str, Any] = record.get("config", {})
        self._keys = keys
        self.origin = origin_for(config.hosts[0], settings)
        #: Values derived from this tenant version (rendered toml, parsed keys); a changed
        #: tenant is a new Tenant object, so nothing here can go stale.
        self.cache: dict[str, Any] = {}

    @property
    def home_domains(self) -> tuple[str, ...]:
        """Domains a SEP-10 challenge may be for; the first is the default."""
        return (self.config.home_domain,)

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def isolated(self) -> bool:
        """Whether the plugin runs in worker processes (``[plugin_isolation]``, untrusted)."""
        return self.config.plugin is not None and self.config.plugin_isolation.untrusted

    @cached_property
    def secrets(self) -> TenantSecrets:
        """The unwrapped secrets; 503 while the master key that wrapped them is not held.

        That happens when another host re-wrapped the tenant with a master key version this
        process has not loaded yet (its key file is re-read on every refresh poll), or when
        the key provider cannot be reached. Nothing is cached on failure, so the tenant
        recovers without a restart; every route of this tenant answers 503 until then (its
        signing key is wrapped by the same master key), and other tenants are unaffected.
        Secrets that do not authenticate under a held key (tampering) fail closed with a
        generic 500 instead: retrying would not help.
        """
        try:
            return unwrap_secrets(self._keys, self.id, self._wrapped_secrets)
        except KeyUnavailable as exc:
            raise ServiceUnavailable(KEYS_UNAVAILABLE, retry_after=30,
                                     log_detail=f"tenant {self.id}: {exc}") from None

    @property
    def web_auth_endpoint(self) -> str:
        return f"{self.origin}/auth"

    @property
    def kyc_server(self) -> str:
        return f"{self.origin}/kyc"

    @property
    def web_auth_domain(self) -> str:
        """Host (with port when non-default) of WEB_AUTH_ENDPOINT, as SEP-10 requires."""
        return self.origin.split("://", 1)[1]

    def __repr__(self) -> str:
        return f"Tenant({self.id!r}, rev={self.rev[:8]}, status={self.status!r})"


class TenantRegistry:
    def __init__(self, service: TenantService, keys: KeyProvider,
                 settings: PlatformSettings) -> None:
        self._service = service
        self._keys = keys
        self._settings = settings
        self._by_id: dict[str, Tenant] = {}
        self._by_host: dict[str, Tenant] = {}
        self._loaded = False
        # time.monotonic() at the start of the last successful poll, and of the last one that
        # compared every record's head.
        self._polled_at = self._full_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._served = re.compile("|".join(
            re.escape(p).replace(r"\*", "[a-z0-9-]*").replace(r"\?", "[a-z0-9-]")
            for p in settings.serve_tenants))

    def serves(self, tenant_id: str) -> bool:
        """Whether this process serves ``tenant_id`` (setting ``serve_tenants``): answers its
        wallets and delivers its callbacks and purges. Every process holds every tenant, so
        the management API and the CLI reach all of them from any process."""
        return self._served.fullmatch(tenant_id) is not None

    def served(self) -> list[Tenant]:
        return [t for t in self._by_id.values() if self.serves(t.id)]

    def for_host(self, host: str) -> Tenant | None:
        """Exact, case-insensitive match; one trailing dot is ignored ("a.test." = "a.test")."""
        return self._by_host.get(host.lower().removesuffix("."))

    def get(self, tenant_id: str) -> Tenant | None:
        return self._by_id.get(tenant_id)

    def __iter__(self) -> Iterator[Tenant]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    async def refresh(self) -> int:
        """Load every tenant the first time, then recent changes; returns how many changed.

        A poll first reads only ``_id``/``rev``/``status`` of the records in the window and
        then the whole records of those that differ from the loaded ones: after a bulk apply
        of N tenants the window holds N records for 30 s, and reading and decoding all of
        them every second cost a 1,000-tenant process 5-17% of its CPU (BENCHMARKS.md).
        """
        started = time.monotonic()
        full = started - self._polled_at > WINDOW_SECONDS / 2 or (
            started - self._full_at >= FULL_CHECK_SECONDS)
        if not self._loaded:
            records = await self._service.all_records()
            self._loaded = True
        else:
            since = None if full else time.time() - WINDOW_SECONDS
            heads = await self._service.revisions_since(since)
            stale = [str(head["_id"]) for head in heads if self._differs(head)]
            records = await self._service.records(stale) if stale else []
        self._polled_at = started
        if full:
            self._full_at = started
        changed = 0
        for record in records:
            current = self._by_id.get(str(record["_id"]))
            if current is None and record["status"] == "deleted":
                continue
            if current is None or current.rev != record["rev"]:
                self._replace(record)
                changed += 1
        return changed

    def _differs(self, head: Mapping[str, Any]) -> bool:
        """Whether the record ``head`` describes is not the loaded version (a deleted
        tenant that is not loaded is not news)."""
        current = self._by_id.get(str(head["_id"]))
        if current is None:
            return head.get("status") != "deleted"
        return current.rev != head.get("rev")

    def _replace(self, record: Mapping[str, Any]) -> None:
        tenant_id = str(record["_id"])
        old = self._by_id.pop(tenant_id, None)
        if old is not None:
            for host in old.config.hosts:
                if self._by_host.get(host) is old:
                    del self._by_host[host]
        tenant = self._load(tenant_id, record)
        if old is not None and not (tenant is not None and tenant.active and tenant.isolated):
            # No new version will build a worker pool that retires the old one
            # (sep/sep12_tenant.py): its idle workers would stay until the server stops.
            retire_pool(self._service.store, tenant_id)

    def _load(self, tenant_id: str, record: Mapping[str, Any]) -> Tenant | None:
        if record["status"] == "deleted":
            return None
        try:
            config = parse_tenant(record["config"], f"store tenant {tenant_id!r}")
        except ConfigError as exc:
            log.error("tenant %s not loaded: %s", tenant_id, exc, extra={"tenant": tenant_id})
            return None
        tenant = Tenant(record, config, self._keys, self._settings)
        self._by_id[tenant_id] = tenant
        for host in config.hosts:
            self._by_host[host] = tenant
        return tenant

    def start(self) -> None:
        """Start polling the store in the background (call from the running loop)."""
        self._task = asyncio.create_task(self._poll(), name="tenant-refresh")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._settings.tenant_refresh_seconds)
            # A master key version added to the key file must be here before any tenant's
            # secrets are re-wrapped with it (``kyc-host keys rotate-master``).
            reload_keys = getattr(self._keys, "reload_if_changed", None)
            if reload_keys is not None:
                reload_keys()
            try:
                await self.refresh()
            except StoreError as exc:
                log.warning("tenant refresh failed: %s", exc)
