"""Health endpoints of the admin listener. Never routed on the public listener."""

from __future__ import annotations

from kyc_host.errors import ServiceUnavailable
from kyc_host.web.base import BaseHandler


class AdminHandler(BaseHandler):
    resolves_tenant = False


class HealthzHandler(AdminHandler):
    """Liveness: the process is up and its event loop answers."""

    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadyzHandler(AdminHandler):
    """Readiness: the store answers and the process is not shutting down."""

    async def get(self) -> None:
        if self.services.draining:
            raise ServiceUnavailable("shutting down")
        await self.services.store.ping()
        registry = self.services.registry
        self.write_json({"status": "ready", "tenants": len(registry),
                         "served": len(registry.served()),
                         "backend": self.services.store.backend_name})


class MetricsHandler(AdminHandler):
    """Prometheus exposition of this process (of all workers with ``--workers N``).

    Unauthenticated, like /healthz: the admin listener must only be reachable by operators.
    """

    def get(self) -> None:
        metrics = self.services.metrics
        metrics.tenants.set(len(self.services.registry))
        self.set_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.finish(metrics.render())


routes = [(r"/healthz", HealthzHandler), (r"/readyz", ReadyzHandler),
          (r"/metrics", MetricsHandler)]
