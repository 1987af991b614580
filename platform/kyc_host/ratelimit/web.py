"""Rate limits as handlers use them: ``await limit(handler, "auth_per_ip")``.

Refusals raise :class:`~kyc_host.ratelimit.limiter.RateLimited`; the base handler renders
it as 429 ``{"error": "too many requests: limits.<name> ..."}`` with ``Retry-After`` and
counts it in ``kyc_rate_limited{tenant, limit}`` (as it does the quotas' 429s). The
platform setting ``rate_limits = false`` turns all of them off (for operators who limit at
their edge, and for load tests that send everything from one address).
"""

from __future__ import annotations

from kyc_host.ratelimit.client_ip import client_ip
from kyc_host.ratelimit.config import Rate
from kyc_host.ratelimit.limiter import event_key
from kyc_host.web.base import BaseHandler

FAILED_LOGINS = "failed_logins_per_ip"


def client_address(handler: BaseHandler) -> str:
    """The client IP of this request (proxy headers only from ``trusted_proxies``)."""
    cached: str | None = handler.__dict__.get("_client_ip")
    if cached is None:
        request = handler.request
        cached = client_ip(request.remote_ip or "", request.headers,
                           handler.services.settings.trusted_proxies)
        handler.__dict__["_client_ip"] = cached
    return cached


def _subject(handler: BaseHandler, limit: str, subject: str | None) -> str:
    if limit.endswith("_per_ip"):
        return client_address(handler)
    if subject is None:  # pragma: no cover - a handler bug, not a client's
        raise RuntimeError(f"{limit} needs a subject")
    return subject


async def limit(handler: BaseHandler, name: str, subject: str | None = None) -> None:
    """Count this request against the tenant's limit ``name`` (``*_per_ip`` limits key on
    the client IP, the others on ``subject``); raises RateLimited when it is used up."""
    tenant, services = handler.tenant, handler.services
    rate = tenant.config.limits.rates.get(name)
    if rate is None or not services.settings.rate_limits:
        return
    key = event_key(tenant.secrets.index_key, name, _subject(handler, name, subject))
    await services.limiter.hit(services.store, tenant.id, name, rate, key)


async def check_failed_logins(handler: BaseHandler) -> None:
    """Refuse a login attempt from a client that used up its failed logins (no write)."""
    if (found := _failed_logins(handler)) is not None:
        rate, key = found
        services = handler.services
        await services.limiter.check_failures(services.store, handler.tenant.id, FAILED_LOGINS,
                                              rate, key)


async def record_failed_login(handler: BaseHandler) -> None:
    """Count one failed login of this client."""
    if (found := _failed_logins(handler)) is not None:
        rate, key = found
        services = handler.services
        await services.limiter.record_failure(services.store, handler.tenant.id, rate, key)


def _failed_logins(handler: BaseHandler) -> tuple[Rate, str] | None:
    """The tenant's failed-login rate and this client's key for it (None: not limited)."""
    tenant = handler.tenant
    rate = tenant.config.limits.rates.get(FAILED_LOGINS)
    if rate is None or not handler.services.settings.rate_limits:
        return None
    return rate, event_key(tenant.secrets.index_key, FAILED_LOGINS, client_address(handler))
