"""Building one :class:`Sep12Service` per tenant version: repositories, plugin, runner.

The service is built on a tenant's first SEP-12 request and kept on ``tenant.cache``, so a
changed tenant (a new ``Tenant`` object) gets a fresh one with its new plugin and settings.
A plugin that cannot be loaded makes that tenant's SEP-12 answer 503 (logged with the
reason) and nobody else's; the failure is remembered until the tenant is applied again.
"""

from __future__ import annotations

import logging

from kyc_host.callbacks.outbox import Outbox, OutboxObserver
from kyc_host.crypto.records import TenantCipher
from kyc_host.errors import ServiceUnavailable
from kyc_host.hooks.context import CustomersView, TenantContext, TenantHttp, tenant_log
from kyc_host.hooks.contract import CustomerHooks
from kyc_host.hooks.isolation import IsolatedRunner, WorkerPool, WorkerSpec, pool_for
from kyc_host.hooks.loader import PluginError, load_plugin_class
from kyc_host.hooks.runner import HookRunner
from kyc_host.metrics import Metrics
from kyc_host.net.safe_http import SafeHttpClient
from kyc_host.retention.erasure import Erasures
from kyc_host.sep.sep12_service import Sep12Service
from kyc_host.settings import PlatformSettings
from kyc_host.store.base import Store
from kyc_host.store.customers import CustomerRepository
from kyc_host.store.files import FileRepository
from kyc_host.tenancy.registry import Tenant

log = logging.getLogger(__name__)


def build_service(tenant: Tenant, store: Store, settings: PlatformSettings,
                  http: SafeHttpClient | None = None,
                  hooks: CustomerHooks | None = None) -> Sep12Service:
    """Wire a tenant's repositories, plugin, context and runner. Raises PluginError.

    ``hooks`` replaces the plugin named in the tenant config (the plugin test kit uses it).
    """
    config = tenant.config
    cipher = TenantCipher.from_secrets(tenant.id, tenant.secrets)
    customers = CustomerRepository(store, tenant.id, cipher)
    files = FileRepository(store, tenant.id, cipher)
    ctx = TenantContext(tenant.id, config, CustomersView(customers, files),
                        tenant_log(tenant.id, config.plugin),
                        None if http is None else TenantHttp(http, tenant.id))
    runner: HookRunner
    if hooks is None and tenant.isolated:
        # Untrusted: the plugin is never imported here; its hooks run in worker processes.
        runner = IsolatedRunner(ctx, config.limits.hook_timeout_seconds,
                                _worker_pool(tenant, store, settings, http is not None))
    else:
        if hooks is None:
            hooks = _plugin_instance(config.plugin, settings)
        runner = HookRunner(hooks, ctx, config.limits.hook_timeout_seconds)
    service = Sep12Service(config, customers, files, runner, dev_mode=settings.dev_mode,
                           erasures=Erasures(store, tenant.id, cipher, config.retention))
    # Every save of a customer writes the events of its status change (callbacks/outbox.py).
    customers.observer = OutboxObserver(tenant.id, config, Outbox(store, tenant.id),
                                        service.callback_body, cipher.digest)
    return service


def _worker_pool(tenant: Tenant, store: Store, settings: PlatformSettings,
                 http: bool) -> WorkerPool:
    """The tenant version's worker pool, owned by this server's store (closed on stop)."""
    isolation = tenant.config.plugin_isolation
    spec = WorkerSpec(tenant.id, str(tenant.config.plugin), settings.plugins_dir,
                      tenant.document, isolation.memory_mib * 1024 * 1024, http)
    return pool_for(store, spec, isolation.workers)


def _plugin_instance(name: str | None, settings: PlatformSettings) -> CustomerHooks:
    if name is None:
        return CustomerHooks()
    hooks_class = load_plugin_class(name, settings.plugins_dir)
    try:
        return hooks_class()
    except Exception as exc:
        raise PluginError(f"plugin {name!r}: creating Hooks() raised "
                          f"{type(exc).__name__}") from exc


def service_for(tenant: Tenant, store: Store, settings: PlatformSettings,
                http: SafeHttpClient | None = None,
                metrics: Metrics | None = None) -> Sep12Service:
    """The tenant's service, built once per tenant version (``tenant.cache``).

    ``metrics`` (the server's) gets its hook calls counted; the server's callers pass it.
    """
    service = tenant.cache.get("sep12")
    if isinstance(service, Sep12Service):
        if metrics is not None:
            service.runner.bind_metrics(metrics)
        return service
    failure = tenant.cache.get("sep12_error")
    if failure is None:
        try:
            service = tenant.cache["sep12"] = build_service(tenant, store, settings, http)
            if metrics is not None:
                service.runner.bind_metrics(metrics)
            return service
        except PluginError as exc:
            # Remembered for this tenant version: fixing the plugin means re-applying it.
            failure = tenant.cache["sep12_error"] = str(exc)
            log.error("tenant %s: %s", tenant.id, failure, extra={"tenant": tenant.id})
    raise ServiceUnavailable("the KYC service of this anchor is unavailable",
                             log_detail=str(failure))
