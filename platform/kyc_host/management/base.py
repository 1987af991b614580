"""The base of every management-API handler: bearer auth in ``prepare``, scopes as decorators.

Order of checks, the same on every route (reliability-plan A12, API1/API5):

1. ``prepare`` authenticates: no, malformed, unknown, expired or revoked token -> 401.
2. ``@require(scope)`` checks the tenant of the resource first: a tenant token naming another
   tenant (or one that does not exist) -> 404, the same answer as for an unknown tenant, so
   tenants cannot probe each other; then the scope -> 403.

Handlers live only on the admin listener (``resolves_tenant = False``); no tenant Host ever
routes here.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from kyc_host import audit
from kyc_host.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from kyc_host.logs import bind_request
from kyc_host.management.auth import Principal, authenticate
from kyc_host.web.admin import AdminHandler

P = ParamSpec("P")
H = TypeVar("H", bound="ManagementHandler")
MAX_BODY_BYTES = 1024 * 1024
TENANT_NOT_FOUND = "tenant not found"


class ManagementHandler(AdminHandler):
    """Authenticated management handler; ``self.principal`` is set before any method runs."""

    _principal: Principal | None = None

    # Tornado awaits a coroutine ``prepare``; the base class's is synchronous.
    async def prepare(self) -> None:  # type: ignore[override]
        super().prepare()
        headers = self.request.headers.get_list("Authorization")
        if len(headers) != 1:
            raise Unauthorized("authentication required: send Authorization: Bearer <token>",
                               headers={"WWW-Authenticate": "Bearer"})
        scheme, _, token = headers[0].partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("malformed Authorization header: expected Bearer <token>",
                               headers={"WWW-Authenticate": "Bearer"})
        self._principal = await authenticate(self.services.store, token.strip(),
                                             self.services.token_cache)

    def decode_argument(self, value: bytes, name: str | None = None) -> str:
        """Path and query arguments must be UTF-8: 400 naming the argument otherwise (Tornado's
        own 400 would not name it). Runs before authentication: it is about the request's
        form, and says nothing about any tenant."""
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{name or 'a path segment'} is not valid UTF-8") from None

    @property
    def principal(self) -> Principal:
        if self._principal is None:  # pragma: no cover - prepare always sets it or raises
            raise Unauthorized("authentication required")
        return self._principal

    def authorize(self, scope: str, tenant_id: str | None = None, *,
                  operator_only: bool = False) -> None:
        """Raise 404 for a tenant this token cannot reach, 403 for a missing scope."""
        principal = self.principal
        if tenant_id is not None and not principal.can_reach(tenant_id):
            raise NotFound(TENANT_NOT_FOUND,
                           log_detail=f"token {principal.prefix} of another tenant")
        if operator_only and not principal.is_operator:
            raise Forbidden("this route needs an operator token")
        if not principal.has(scope):
            raise Forbidden(f"this token lacks the {scope} scope")
        if tenant_id is not None:
            bind_request(self.request_id, tenant_id)  # the rest of its lines name the tenant

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object; 400/413 naming the problem otherwise."""
        body = self.request.body
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"request body larger than {MAX_BODY_BYTES} bytes")
        if not body.strip():
            raise BadRequest("a JSON object is required as the request body")
        try:
            value = json.loads(body)
        except (ValueError, RecursionError):
            raise BadRequest("request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise BadRequest("request body must be a JSON object")
        return value

    def query(self, name: str) -> str | None:
        """One query argument; 400 if it is repeated (ambiguous)."""
        values = self.get_query_arguments(name)
        if len(values) > 1:
            raise BadRequest(f"query parameter {name} given more than once")
        return values[0] if values else None

    async def audit(self, tenant_id: str | None, action: str, *,
                    customer_id: str | None = None, fields: tuple[str, ...] = (),
                    details: Mapping[str, Any] | None = None) -> None:
        """Record an action of this caller in ``tenant_id``'s log (None: the platform log)."""
        await audit.record(self.services.store, tenant_id, actor=self.principal.actor,
                           action=action, customer_id=customer_id, fields=fields,
                           request_id=self.request_id, details=details)


def require(
    scope: str, *, operator_only: bool = False
) -> Callable[[Callable[Concatenate[H, P], Awaitable[None]]],
              Callable[Concatenate[H, P], Awaitable[None]]]:
    """Decorate a handler method: check the resource's tenant (path arg ``tenant_id``) and
    ``scope`` before the method runs (see the module docstring for the order)."""

    def decorate(
        method: Callable[Concatenate[H, P], Awaitable[None]],
    ) -> Callable[Concatenate[H, P], Awaitable[None]]:
        async def wrapper(self: H, /, *args: P.args, **kwargs: P.kwargs) -> None:
            tenant_id = kwargs.get("tenant_id")
            self.authorize(scope, tenant_id if isinstance(tenant_id, str) else None,
                           operator_only=operator_only)
            await method(self, *args, **kwargs)

        functools.update_wrapper(wrapper, method)
        wrapper.required_scope = scope  # type: ignore[attr-defined]
        return wrapper

    return decorate


def clamp_limit(raw: str | None, default: int = 50, maximum: int = 200) -> int:
    """A page size from the query: default when absent, clamped to 1..maximum; 400 if not a
    number."""
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest("limit must be a whole number") from None
    return max(1, min(maximum, value))
