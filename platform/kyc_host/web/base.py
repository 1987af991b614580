"""The base of every handler: request ids, tenant resolution by Host, JSON errors.

Errors are raised, never returned; :meth:`BaseHandler.write_error` renders every one of them
as ``{"error": "..."}``. The text of an unexpected exception never reaches the client.
"""

from __future__ import annotations

import json
import logging
import os
from types import TracebackType
from typing import Any

from tornado.web import HTTPError, RequestHandler

from kyc_host.errors import (
    ApiError,
    LimitExceeded,
    MisdirectedRequest,
    NotFound,
    ServiceUnavailable,
)
from kyc_host.logs import bind_request
from kyc_host.services import Services
from kyc_host.store import bounded
from kyc_host.store.base import StoreUnavailable
from kyc_host.tenancy.registry import Tenant

log = logging.getLogger("kyc_host.web")
access_log = logging.getLogger("kyc_host.access")
#: The methods that are a metric label of their own; any other is counted as "other".
LABELLED_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_GENERIC = {400: "bad request", 404: "not found", 405: "method not allowed",
            413: "request body too large", 500: "internal server error"}


class BaseHandler(RequestHandler):
    """Shared behaviour of public and admin handlers (the admin ones skip tenant lookup)."""

    #: Public handlers resolve a tenant from the Host header in ``prepare``.
    resolves_tenant = True
    #: Public handlers that browsers call cross-origin set this to the allowed methods.
    cors_methods: str | None = None

    _tenant: Tenant | None = None
    _counted = False
    #: Not counted in its tenant's requests in flight (web/turns.py) while it waits on its
    #: client (an upload's body on its way): :meth:`waiting_on_client`.
    _turn_paused = False

    @property
    def services(self) -> Services:
        services: Services = self.application.settings["services"]
        return services

    @property
    def tenant(self) -> Tenant:
        if self._tenant is None:  # pragma: no cover - only reachable from a handler bug
            raise RuntimeError("handler has no tenant")
        return self._tenant

    @property
    def request_id(self) -> str:
        """16 hex digits made here, returned as ``X-Request-Id`` and on every log line of the
        request. A client's own ``X-Request-Id`` is ignored: it would let a caller choose what
        correlates log lines (or put a huge value into each of them)."""
        rid: str = self.__dict__.setdefault("_request_id", os.urandom(8).hex())
        return rid

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Request-Id", self.request_id)
        if self.cors_methods:
            self.set_header("Access-Control-Allow-Origin", "*")

    def prepare(self) -> None:
        self.services.inflight.enter()
        self._counted = True
        # Every line logged while serving this request carries its id (and tenant, once
        # known): reliability-plan B8. prepare() runs in the request's own task.
        bind_request(self.request_id, None)
        # The request's store work waits 4 s in all, at most; a wallet request's MongoDB
        # operations take request_store_seconds in all, at most (admin requests: 4 s each).
        budget = self.services.settings.request_store_seconds
        bounded.start_request(store_seconds=budget if self.resolves_tenant and budget else None)
        if self.resolves_tenant:
            self._shed_if_overloaded()
            self._tenant = self._resolve_tenant()
            bind_request(self.request_id, self._tenant.id)
            self.services.turns.started(self._tenant.id)

    def _shed_if_overloaded(self) -> None:
        """503 + Retry-After while this process's loop is behind by more than
        ``overload_lag_seconds`` (looplag.py; reliability-plan L2). Wallet routes only: the
        admin listener (metrics, readiness, operators) is always served. The answer costs a
        fraction of serving the request, so an overloaded process works off its backlog
        instead of letting every client run into its timeout."""
        limit = self.services.settings.overload_lag_seconds
        probe = self.services.loop_lag
        if limit and probe is not None and probe.current_lag() > limit:
            self.services.metrics.requests_shed.inc()
            raise ServiceUnavailable("server overloaded; retry later", retry_after=1)

    def _resolve_tenant(self) -> Tenant:
        tenant = self.services.registry.for_host(self.request.host_name)
        if tenant is None:
            # No default tenant, ever: an unknown Host must not reach anyone's data.
            raise NotFound("unknown host")
        if not self.services.registry.serves(tenant.id):
            # serve_tenants: another group of processes serves this tenant. Its data is not
            # secret from this process (the admin API reaches every tenant); the answer
            # tells the operator the load balancer's routing is wrong.
            raise MisdirectedRequest("this host is not served here (misrouted request)",
                                     log_detail=f"tenant {tenant.id} is not in serve_tenants")
        if not tenant.active:
            raise ServiceUnavailable("this service is suspended", retry_after=3600)
        return tenant

    def options(self, *args: str) -> None:
        """CORS preflight for browser wallets (SEP-1/10 require CORS; SEP-12 needs it too)."""
        if not self.cors_methods:
            raise HTTPError(405)
        self.set_header("Access-Control-Allow-Methods", self.cors_methods + ", OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.set_header("Access-Control-Max-Age", "86400")
        self.set_status(204)
        self.clear_header("Content-Type")

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(body, separators=(",", ":")))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, StoreUnavailable):
            tenant_id = self._tenant.id if self._tenant else ""
            self.services.metrics.store_errors.labels(tenant_id).inc()
            exc = ServiceUnavailable(log_detail=str(exc))
        if isinstance(exc, LimitExceeded) and self._tenant is not None:
            self.services.metrics.rate_limited.labels(self._tenant.id, exc.limit).inc()
        if isinstance(exc, ApiError):
            status_code, message = exc.status, exc.message
            for name, value in exc.headers.items():
                self.set_header(name, value)
        else:
            message = _GENERIC.get(status_code, self._reason.lower())
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({"error": message}))

    def log_exception(self, typ: type[BaseException] | None, value: BaseException | None,
                      tb: TracebackType | None) -> None:
        extra = {"tenant": self._tenant.id if self._tenant else None,
                 "request_id": self.request_id}
        if isinstance(value, ApiError | StoreUnavailable | HTTPError):
            detail = getattr(value, "log_detail", None) or str(value)
            level = logging.WARNING if isinstance(value, StoreUnavailable) else logging.INFO
            log.log(level, "%s %s: %s", self.request.method, self.request.path,
                    f"{type(value).__name__}: {detail}", extra=extra)
        else:
            log.error("unhandled error in %s %s", self.request.method, self.request.path,
                      exc_info=value, extra=extra)

    def on_finish(self) -> None:
        self._uncount()

    def on_connection_close(self) -> None:
        self._uncount()
        # Chain up: for @stream_request_body handlers this ends the wait for a body that
        # will never arrive (Tornado's RequestHandler.on_connection_close).
        super().on_connection_close()

    def waiting_on_client(self) -> None:
        """From now until :meth:`back_from_client`, this request waits on its client (an
        upload's body on its way, or waiting for its turn to be read) and does not count in
        its tenant's requests in flight that make a tenant busy (web/turns.py): it costs the
        loop nothing, and a tenant whose wallets send slowly (phones on poor networks) must
        not have its other requests held back for it."""
        if self._counted and self._tenant is not None and not self._turn_paused:
            self._turn_paused = True
            self.services.turns.ended(self._tenant.id)

    def back_from_client(self) -> None:
        """The request has what it waited for from its client: it counts again."""
        if self._turn_paused:
            self._turn_paused = False
            if self._counted and self._tenant is not None:
                self.services.turns.resumed(self._tenant.id)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.services.inflight.leave()
            if self._tenant is not None and not self._turn_paused:
                self.services.turns.ended(self._tenant.id)


class NotFoundHandler(BaseHandler):
    """Every unknown path: 404 JSON (after tenant resolution on the public listener)."""

    def prepare(self) -> None:
        super().prepare()
        raise NotFound("not found")


class AdminNotFoundHandler(NotFoundHandler):
    resolves_tenant = False


def log_request(handler: RequestHandler) -> None:
    """Access log (without query strings: they may carry account ids and memos) and metrics.

    Tornado calls this once per finished request, whatever the outcome, so it is the one
    place that counts requests. The route label is the handler class name, never the path.
    """
    request = handler.request
    tenant = getattr(handler, "_tenant", None)
    tenant_id = tenant.id if tenant else None
    status = handler.get_status()
    seconds = request.request_time()
    access_log.info(
        "%s %s %d", request.method, request.path, status,
        extra={"tenant": tenant_id, "request_id": getattr(handler, "request_id", None),
               "ms": round(1000 * seconds, 2)})
    services: Services | None = handler.application.settings.get("services")
    if services is None:
        return
    metrics, route = services.metrics, type(handler).__name__
    # Tornado passes any method token through (and answers it 405): as a label, each new one
    # a client made up would add series for good.
    method = request.method if request.method in LABELLED_METHODS else "other"
    metrics.requests.labels(tenant_id or "", route, method, str(status)).inc()
    metrics.latency.labels(route, method).observe(seconds)
    if route == "AuthHandler" and method == "POST" and tenant_id:
        result = "issued" if status == 200 else "error" if status >= 500 else "rejected"
        metrics.logins.labels(tenant_id, result).inc()
