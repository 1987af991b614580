"""SEP-10 client attribution (§"Verifying the Client Domain"): a wallet names its domain, we
read ``SIGNING_KEY`` from that domain's stellar.toml and require that key's signature.

Per-tenant policy (``[sep10]`` of the tenant file): ``client_domain_required``,
``client_domain_allow`` (empty = any) and ``client_domain_deny``. A list entry matches the
domain itself and its subdomains. The fetch goes through the platform's SSRF-safe client
(reliability-plan A6) with the toml size cap of SEP-1, and a found key is cached per tenant
for a few minutes so a busy wallet does not make us fetch its toml on every login.
"""

from __future__ import annotations

import re
import time
import tomllib
from collections import OrderedDict

from stellar_sdk import StrKey

from kyc_host.errors import BadRequest, Forbidden
from kyc_host.net import FetchError, SafeHttpClient
from kyc_host.tenancy.registry import Tenant
from kyc_host.web.turns import take_turn

MAX_TOML_BYTES = 100_000  # SEP-1's stellar.toml limit
FETCH_TIMEOUT = 5.0
KEY_CACHE_SECONDS = 300.0
_CACHE_ENTRIES = 1000
#: A DNS name of two or more labels whose last label is not numeric (so no IP literals),
#: without port, path or userinfo; ManageData values are at most 64 bytes.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"(?=.{{1,64}}\Z)({_LABEL}\.)+(?!-)[a-z0-9-]*[a-z][a-z0-9-]*(?<!-)")


def check_syntax(value: str) -> str:
    """The normalized (lower-case) domain; BadRequest for anything that is not a plain name."""
    domain = value.lower()
    if not value.isascii() or _DOMAIN.fullmatch(domain) is None:
        raise BadRequest("client_domain must be a domain name (no scheme, port, path or IP), "
                         "at most 64 characters")
    return domain


def _listed(domain: str, entries: tuple[str, ...]) -> bool:
    return any(domain == entry or domain.endswith("." + entry) for entry in entries)


def check_policy(tenant: Tenant, domain: str | None) -> None:
    """Apply the tenant's required/allow/deny settings (missing -> 400, refused -> 403)."""
    settings = tenant.config.sep10
    if domain is None:
        if settings.client_domain_required:
            raise BadRequest("client_domain is required by this anchor")
        return
    if _listed(domain, settings.client_domain_deny):
        raise Forbidden("client_domain is not accepted by this anchor")
    if settings.client_domain_allow and not _listed(domain, settings.client_domain_allow):
        raise Forbidden("client_domain is not accepted by this anchor")


async def signing_key(tenant: Tenant, http: SafeHttpClient, domain: str) -> str:
    """The wallet's SIGNING_KEY for ``domain`` (cached per tenant); BadRequest if unusable."""
    cache: OrderedDict[str, tuple[str, float]] = tenant.cache.setdefault(
        "client_domain_keys", OrderedDict())
    now = time.monotonic()
    hit = cache.get(domain)
    if hit is not None and hit[1] > now:
        return hit[0]
    key = await _fetch_signing_key(tenant, http, domain)
    cache[domain] = (key, now + KEY_CACHE_SECONDS)
    cache.move_to_end(domain)
    while len(cache) > _CACHE_ENTRIES:
        cache.popitem(last=False)
    return key


async def _fetch_signing_key(tenant: Tenant, http: SafeHttpClient, domain: str) -> str:
    where = f"client_domain {domain}: stellar.toml"
    try:
        response = await http.fetch(f"https://{domain}/.well-known/stellar.toml",
                                    max_bytes=MAX_TOML_BYTES, timeout=FETCH_TIMEOUT,
                                    limit_key=tenant.id)
    except FetchError as exc:
        await take_turn()  # logins waiting on a site that never answers end together
        raise BadRequest(f"{where} could not be fetched ({exc})",
                         log_detail=f"{where}: {type(exc).__name__}: {exc}") from None
    if response.status != 200:
        raise BadRequest(f"{where} answered HTTP {response.status}")
    try:
        doc = tomllib.loads(response.text())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        raise BadRequest(f"{where} is not valid TOML") from None
    key = doc.get("SIGNING_KEY")
    if not isinstance(key, str) or not StrKey.is_valid_ed25519_public_key(key):
        raise BadRequest(f"{where} has no valid SIGNING_KEY")
    if key == tenant.secrets.signing_keypair.public_key:
        # A wallet key equal to ours would let our own signature count as the wallet's.
        raise BadRequest(f"{where} SIGNING_KEY must not be this anchor's key")
    return key
