"""SEP-1: each tenant's ``/.well-known/stellar.toml``.

Generated from the tenant's config and keys: NETWORK_PASSPHRASE, SIGNING_KEY (the SEP-10
server account, also the key that signs SEP-12 callbacks), WEB_AUTH_ENDPOINT and KYC_SERVER
(no trailing slash), plus the tenant's extra [DOCUMENTATION], [[CURRENCIES]], [[PRINCIPALS]]
and ACCOUNTS. Rendered once per tenant version and cached on the Tenant object.
"""

from __future__ import annotations

from typing import Any

import tomli_w

from kyc_host.tenancy.registry import Tenant
from kyc_host.web.base import BaseHandler

SEP1_VERSION = "2.7.0"
MAX_TOML_BYTES = 100_000  # SEP-1 and the SDF validator cap stellar.toml at 100 KB


def render_stellar_toml(tenant: Tenant) -> bytes:
    extra = tenant.config.stellar_toml
    doc: dict[str, Any] = {
        "VERSION": SEP1_VERSION,
        "NETWORK_PASSPHRASE": tenant.config.network_passphrase,
        "SIGNING_KEY": tenant.secrets.signing_keypair.public_key,
        "WEB_AUTH_ENDPOINT": tenant.web_auth_endpoint,
        "KYC_SERVER": tenant.kyc_server,
    }
    if extra.accounts:
        doc["ACCOUNTS"] = list(extra.accounts)
    if extra.documentation:
        doc["DOCUMENTATION"] = dict(extra.documentation)
    if extra.principals:
        doc["PRINCIPALS"] = [dict(p) for p in extra.principals]
    if extra.currencies:
        doc["CURRENCIES"] = [dict(c) for c in extra.currencies]
    return tomli_w.dumps(doc).encode()


class StellarTomlHandler(BaseHandler):
    cors_methods = "GET"

    def get(self) -> None:
        tenant = self.tenant
        body = tenant.cache.get("stellar_toml")
        if body is None:
            body = tenant.cache["stellar_toml"] = render_stellar_toml(tenant)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.set_header("Cache-Control", "public, max-age=60")
        self.finish(body)


routes = [(r"/\.well-known/stellar\.toml", StellarTomlHandler)]
