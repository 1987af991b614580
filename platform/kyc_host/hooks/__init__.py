"""Tenant plugins: the contract plugin authors code against.

A plugin is a module in the platform's plugins directory (or an installed distribution's
``kyc_host.plugins`` entry point) that defines ``Hooks``, a subclass of
:class:`CustomerHooks`; a tenant file selects it with ``plugin = "<module name>"`` and passes
it settings in ``[plugin_settings]``. See ``plugins/demo_anchor.py`` for a complete example
and :mod:`kyc_host.hooks.testing` to test one against a real in-process tenant.
"""

from __future__ import annotations

from kyc_host.hooks.context import CustomersView, TenantContext, TenantHttp
from kyc_host.hooks.contract import (
    DEFAULT_VERIFICATION_FIELDS,
    CallbackRequest,
    Caller,
    CheckCodeRequest,
    CustomerData,
    CustomerHooks,
    DeleteRequest,
    FileRef,
    GetRequest,
    HookRejected,
    PutRequest,
    SendCodeRequest,
    StatusResult,
)
from kyc_host.sep.sep12_types import CustomerStatus, Decision, FieldDecision, FieldStatus

__all__ = [
    "DEFAULT_VERIFICATION_FIELDS",
    "CallbackRequest",
    "Caller",
    "CheckCodeRequest",
    "CustomerData",
    "CustomerHooks",
    "CustomerStatus",
    "CustomersView",
    "Decision",
    "DeleteRequest",
    "FieldDecision",
    "FieldStatus",
    "FileRef",
    "GetRequest",
    "HookRejected",
    "PutRequest",
    "SendCodeRequest",
    "StatusResult",
    "TenantContext",
    "TenantHttp",
]
