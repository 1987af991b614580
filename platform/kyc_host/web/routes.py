"""Route assembly: each feature module ends with its own ``routes`` list."""

from __future__ import annotations

from typing import Any

from kyc_host.callbacks import api as callbacks_api
from kyc_host.management import audit_api, customers, keys_api, openapi, tenants, tokens
from kyc_host.sep import sep1, sep10, sep12
from kyc_host.web import admin


def public_routes() -> list[Any]:
    return [*sep1.routes, *sep10.routes, *sep12.routes]


def admin_routes() -> list[Any]:
    return [*admin.routes, *tenants.routes, *tokens.routes, *audit_api.routes,
            *customers.routes, *callbacks_api.routes, *keys_api.routes,
            *openapi.routes]
