"""A tenant's ``[callbacks]`` policy and ``[[webhooks]]`` endpoints (tenant file / API document).

```toml
[callbacks]
notify_on_field_change = false   # SEP-12 callbacks on data changes that keep the status
retry_horizon_hours = 72         # give up (dead-letter) after this long; 24..720
max_attempts = 20                # and after this many attempts; 8..200
[[callbacks.default_url]]        # per wallet (SEP-10 client_domain), used when the customer
client_domain = "wallet.example" # registered no URL itself
url = "https://wallet.example/kyc-callback"

[[webhooks]]                     # the anchor's own backend
url = "https://backend.anchor.example/kyc-events"
events = ["customer.submitted", "customer.status_changed"]
secret_env = "ACME_WEBHOOK_SECRET"            # HMAC secret, read by the serving processes
previous_secret_env = "ACME_WEBHOOK_SECRET_OLD"   # optional: rotation overlap
```

Secrets are never in the document: only the *names* of environment variables of the serving
processes. With ``previous_secret_env`` set, every delivery carries one ``v1=`` signature
per secret, so the receiver can switch secrets without losing events.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from kyc_host.errors import ConfigError
from kyc_host.tenancy.reader import Table

#: Tenant webhook event types (the SEP-12 callback is not one: it goes to the wallet).
WEBHOOK_EVENTS = ("customer.submitted", "customer.status_changed", "customer.deleted",
                  "callback.dead_lettered")
DEFAULT_HORIZON_HOURS = 72.0
MIN_HORIZON_HOURS = 24.0  # reliability-plan "Callbacks": retry for at least 24 h
DEFAULT_MAX_ATTEMPTS = 20
MIN_ATTEMPTS = 8
MAX_URL_CHARS = 2000
MAX_WEBHOOKS = 10
#: Shortest HMAC secret used to sign webhooks (192 bits): shorter ones are refused at apply
#: (:func:`check_webhook_secrets`) and never used by the worker.
MIN_SECRET_BYTES = 24
_ENV_NAME = r"[A-Z_][A-Z0-9_]{0,127}"
_DOMAIN = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?(:[0-9]{1,5})?")


@dataclass(frozen=True, slots=True)
class CallbackPolicy:
    """``[callbacks]``: when SEP-12 callbacks are sent and how long they are retried."""

    notify_on_field_change: bool = False
    default_url: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    retry_horizon_hours: float = DEFAULT_HORIZON_HOURS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS

    @property
    def horizon_seconds(self) -> float:
        return self.retry_horizon_hours * 3600.0


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """One ``[[webhooks]]`` entry. ``url`` identifies it (events name their endpoint by URL)."""

    url: str
    events: frozenset[str]
    secret_env: str
    previous_secret_env: str | None = None


def parse_callbacks(table: Table) -> CallbackPolicy:
    """Validate ``[callbacks]``; raises ConfigError naming the key."""
    defaults = CallbackPolicy()
    # An array of tables, not a table keyed by domain: the document is stored as written,
    # and MongoDB-wire stores refuse keys with dots.
    default_url: dict[str, str] = {}
    for entry in table.tables("default_url"):
        domain = entry.string("client_domain", max_len=253).lower()
        if not _DOMAIN.fullmatch(domain):
            raise entry.error("client_domain", "expected a wallet domain (SEP-10 "
                              "client_domain)", domain)
        if domain in default_url:
            raise entry.error("client_domain", "listed twice", domain)
        default_url[domain] = _url(entry, "url")
        entry.finish()
    policy = CallbackPolicy(
        notify_on_field_change=table.boolean("notify_on_field_change",
                                             defaults.notify_on_field_change),
        default_url=MappingProxyType(default_url),
        retry_horizon_hours=table.number("retry_horizon_hours", defaults.retry_horizon_hours,
                                         min=MIN_HORIZON_HOURS, max=720.0),
        max_attempts=table.integer("max_attempts", defaults.max_attempts, min=MIN_ATTEMPTS,
                                   max=200),
    )
    table.finish()
    return policy


def parse_webhooks(top: Table) -> tuple[WebhookEndpoint, ...]:
    """Validate the ``[[webhooks]]`` array; raises ConfigError naming the entry and key."""
    endpoints: list[WebhookEndpoint] = []
    for entry in top.tables("webhooks"):
        url = _url(entry, "url")
        events = entry.strings("events", max_items=len(WEBHOOK_EVENTS))
        for name in events:
            if name not in WEBHOOK_EVENTS:
                raise entry.error("events", f"expected some of: {', '.join(WEBHOOK_EVENTS)}",
                                  name)
        secret_env = entry.string("secret_env", pattern=_ENV_NAME,
                                  what="an environment variable name")
        previous = entry.string("previous_secret_env", None, pattern=_ENV_NAME,
                                what="an environment variable name")
        entry.finish()
        if any(e.url == url for e in endpoints):
            raise entry.error("url", "the same URL is listed twice", url)
        endpoints.append(WebhookEndpoint(url, frozenset(events), secret_env, previous))
    if len(endpoints) > MAX_WEBHOOKS:
        raise top.error("webhooks", f"at most {MAX_WEBHOOKS} endpoints")
    return tuple(endpoints)


def check_webhook_secrets(endpoints: tuple[WebhookEndpoint, ...], environ: Mapping[str, str],
                          source: str) -> None:
    """Refuse a webhook secret variable that is set but shorter than MIN_SECRET_BYTES
    (reliability-plan A3: short secrets are refused up front, not only skipped at delivery).

    An unset variable passes: the serving processes may hold it while the applying process
    does not, and delivery waits (retrying) until it is set. The value is never shown.
    """
    for index, endpoint in enumerate(endpoints):
        for key in ("secret_env", "previous_secret_env"):
            name = getattr(endpoint, key)
            size = len(environ.get(name, "").encode()) if name else 0
            if 0 < size < MIN_SECRET_BYTES:
                raise ConfigError(source, f"webhooks[{index}].{key}",
                                  f"environment variable {name} holds {size} bytes; a webhook "
                                  f"secret needs at least {MIN_SECRET_BYTES}")


def _url(table: Table, key: str) -> str:
    """An absolute http(s) URL without credentials or fragment. Whether http and non-public
    hosts are allowed is decided at delivery by the outbound client (dev mode only)."""
    url: str = table.string(key, max_len=MAX_URL_CHARS)
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise table.error(key, "expected an absolute https URL", url) from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise table.error(key, "expected an absolute https URL", url)
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise table.error(key, "credentials and fragments are not allowed in the URL", url)
    return url
