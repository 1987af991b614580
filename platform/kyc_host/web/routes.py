"""Route assembly: each feature module ends with its own ``routes`` list."""

from __future__ import annotations

from typing import Any

from kyc_host.sep import sep1
from kyc_host.web import admin


def public_routes() -> list[Any]:
    return [*sep1.routes]


def admin_routes() -> list[Any]:
    return [*admin.routes]
