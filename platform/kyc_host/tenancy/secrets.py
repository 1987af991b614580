"""A tenant's key material, generated at first apply and stored wrapped by the master key.

Secrets never live in tenant files. The SEP-10 signing seed is generated, or read once from an
environment variable that the tenant file names (``signing_key_env``), for anchors that already
publish a SIGNING_KEY. The stored form is one blob: the JSON below, sealed by the platform
master key with the tenant id as associated data, so a blob copied to another tenant fails.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stellar_sdk import Keypair
from stellar_sdk.exceptions import Ed25519SecretSeedInvalidError

from kyc_host.crypto.master import KeyProvider, WrappedKey
from kyc_host.errors import ConfigError


def _context(tenant_id: str) -> str:
    return f"tenant-secrets|{tenant_id}"


@dataclass(frozen=True)
class TenantSecrets:
    """Decoded key material. Never log or serialize this object except through ``wrap``."""

    signing_seed: str
    jwt_ed25519_seed: bytes
    jwt_hs256_secret: bytes
    data_kek: bytes
    index_key: bytes

    @cached_property
    def signing_keypair(self) -> Keypair:
        return Keypair.from_secret(self.signing_seed)

    @cached_property
    def jwt_private_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.jwt_ed25519_seed)

    def __repr__(self) -> str:
        return "TenantSecrets(<redacted>)"

    def to_json(self) -> bytes:
        return json.dumps({
            "signing_seed": self.signing_seed,
            "jwt_ed25519_seed": _b64(self.jwt_ed25519_seed),
            "jwt_hs256_secret": _b64(self.jwt_hs256_secret),
            "data_kek": _b64(self.data_kek),
            "index_key": _b64(self.index_key),
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TenantSecrets:
        doc: dict[str, Any] = json.loads(raw)
        return cls(
            signing_seed=doc["signing_seed"],
            jwt_ed25519_seed=base64.b64decode(doc["jwt_ed25519_seed"]),
            jwt_hs256_secret=base64.b64decode(doc["jwt_hs256_secret"]),
            data_kek=base64.b64decode(doc["data_kek"]),
            index_key=base64.b64decode(doc["index_key"]),
        )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def generate_secrets(signing_seed: str | None) -> TenantSecrets:
    return TenantSecrets(
        signing_seed=signing_seed or Keypair.random().secret,
        jwt_ed25519_seed=os.urandom(32),
        jwt_hs256_secret=os.urandom(32),
        data_kek=os.urandom(32),
        index_key=os.urandom(32),
    )


def seed_from_env(env_name: str | None, environ: Mapping[str, str], source: str) -> str | None:
    """The signing seed named by ``signing_key_env``, validated; None if not configured/set."""
    if env_name is None or not environ.get(env_name):
        return None
    seed = environ[env_name].strip()
    try:
        Keypair.from_secret(seed)
    except (Ed25519SecretSeedInvalidError, ValueError):
        raise ConfigError(source, "signing_key_env",
                          f"environment variable {env_name} does not hold a valid S... seed"
                          ) from None
    return seed


def wrap_secrets(keys: KeyProvider, tenant_id: str, secrets: TenantSecrets) -> dict[str, object]:
    return keys.wrap(secrets.to_json(), _context(tenant_id)).to_doc()


def unwrap_secrets(keys: KeyProvider, tenant_id: str, doc: Mapping[str, object]) -> TenantSecrets:
    return TenantSecrets.from_json(keys.unwrap(WrappedKey.from_doc(doc), _context(tenant_id)))
