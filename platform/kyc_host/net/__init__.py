"""Outbound HTTP: the SSRF-safe client for untrusted URLs, and the Horizon reader.

- :class:`SafeHttpClient` (``Services.http``): the only way to fetch a URL that a wallet,
  a customer or a plugin chose (client_domain stellar.toml, callbacks, plugin requests).
- :class:`HorizonClient` (``Services.horizon``): account signers from the operator-configured
  Horizon of a tenant.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kyc_host.net.horizon import (
        AccountSigners,
        HorizonBadAnswer,
        HorizonClient,
        HorizonUnavailable,
    )
    from kyc_host.net.safe_http import (
        BlockedDestination,
        FetchError,
        FetchFailed,
        FetchTimeout,
        RedirectRefused,
        ResponseTooLarge,
        SafeHttpClient,
        SafeResponse,
        UnsafeUrl,
    )

#: Loaded on first use (PEP 562): importing ``kyc_host.net.safe_http`` alone, as a plugin
#: worker process does (hooks/worker.py), must not pay for stellar-sdk, which horizon needs.
_HORIZON = frozenset({"AccountSigners", "HorizonBadAnswer", "HorizonClient",
                      "HorizonUnavailable"})


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = "horizon" if name in _HORIZON else "safe_http"
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = [
    "AccountSigners",
    "BlockedDestination",
    "FetchError",
    "FetchFailed",
    "FetchTimeout",
    "HorizonBadAnswer",
    "HorizonClient",
    "HorizonUnavailable",
    "RedirectRefused",
    "ResponseTooLarge",
    "SafeHttpClient",
    "SafeResponse",
    "UnsafeUrl",
]
