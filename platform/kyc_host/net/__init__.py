"""Outbound HTTP: the SSRF-safe client for untrusted URLs, and the Horizon reader.

- :class:`SafeHttpClient` (``Services.http``): the only way to fetch a URL that a wallet,
  a customer or a plugin chose (client_domain stellar.toml, callbacks, plugin requests).
- :class:`HorizonClient` (``Services.horizon``): account signers from the operator-configured
  Horizon of a tenant.
"""

from kyc_host.net.horizon import AccountSigners, HorizonBadAnswer, HorizonClient, HorizonUnavailable
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
