"""A tenant's key material, generated at first apply and stored wrapped by the master key.

Secrets never live in tenant files. The SEP-10 signing seed is generated, or read once from an
environment variable that the tenant file names (``signing_key_env``), for anchors that already
publish a SIGNING_KEY. The stored form is one blob: the JSON below, sealed by the platform
master key with the tenant id as associated data, so a blob copied to another tenant fails.

Key families carry versions (issue 5): the key-encryption keys and index keys keep every
version still in use (crypto/rotation.py retires them), and a rotated JWT key or SEP-10
signing seed stays as "previous" until its overlap window ends (crypto/tenant_keys.py).
Secrets written before versions existed (``data_kek``/``index_key``) read as version 1.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from stellar_sdk import Keypair
from stellar_sdk.exceptions import Ed25519SecretSeedInvalidError

from kyc_host.crypto.master import KeyProvider, WrappedKey
from kyc_host.errors import ConfigError


def _context(tenant_id: str) -> str:
    return f"tenant-secrets|{tenant_id}"


@dataclass(frozen=True, slots=True)
class PreviousJwtKey:
    """A JWT key replaced by ``kyc-host keys rotate-jwt``, still verifying until ``until``."""

    generation: int
    ed25519_seed: bytes
    hs256_secret: bytes
    until: float


@dataclass(frozen=True, slots=True)
class PreviousSigningKey:
    """A SEP-10 signing seed replaced by ``keys rotate-signing``: challenges it signed still
    verify until ``until`` (switch time + the challenge lifetime + a propagation margin)."""

    seed: str
    until: float


@dataclass(frozen=True)
class TenantSecrets:
    """Decoded key material. Never log or serialize this object except through ``wrap``.

    Versioned key families (issue 5): ``data_keks`` (version -> key-encryption key; the one
    numbered ``kek_version`` wraps new data keys, every held version unwraps) and
    ``index_keys`` (version -> blind-index key; ``index_version`` is the settled version and
    ``index_next``/``index_stage`` describe a reindex in progress, see crypto/records.py).
    ``data_kek`` and ``index_key`` are the current keys of each family.
    """

    signing_seed: str
    jwt_ed25519_seed: bytes
    jwt_hs256_secret: bytes
    data_keks: Mapping[int, bytes]
    index_keys: Mapping[int, bytes]
    kek_version: int = 1
    index_version: int = 1
    index_next: int | None = None
    index_stage: str | None = None  # "read" | "write" while reindexing to index_next
    jwt_generation: int = 1
    jwt_previous: tuple[PreviousJwtKey, ...] = ()
    signing_previous: tuple[PreviousSigningKey, ...] = ()

    @property
    def data_kek(self) -> bytes:
        return self.data_keks[self.kek_version]

    @property
    def index_key(self) -> bytes:
        return self.index_keys[self.index_version]

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
            "data_keks": {str(v): _b64(k) for v, k in sorted(self.data_keks.items())},
            "kek_version": self.kek_version,
            "index_keys": {str(v): _b64(k) for v, k in sorted(self.index_keys.items())},
            "index_version": self.index_version,
            "index_next": self.index_next,
            "index_stage": self.index_stage,
            "jwt_generation": self.jwt_generation,
            "jwt_previous": [{"generation": p.generation, "ed25519_seed": _b64(p.ed25519_seed),
                              "hs256_secret": _b64(p.hs256_secret), "until": p.until}
                             for p in self.jwt_previous],
            "signing_previous": [{"seed": p.seed, "until": p.until}
                                 for p in self.signing_previous],
        }).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> TenantSecrets:
        doc: dict[str, Any] = json.loads(raw)
        if "data_keks" in doc:
            keks = {int(v): base64.b64decode(k) for v, k in doc["data_keks"].items()}
            index_keys = {int(v): base64.b64decode(k) for v, k in doc["index_keys"].items()}
        else:  # the unversioned format written before key rotation existed: version 1
            keks = {1: base64.b64decode(doc["data_kek"])}
            index_keys = {1: base64.b64decode(doc["index_key"])}
        return cls(
            signing_seed=doc["signing_seed"],
            jwt_ed25519_seed=base64.b64decode(doc["jwt_ed25519_seed"]),
            jwt_hs256_secret=base64.b64decode(doc["jwt_hs256_secret"]),
            data_keks=MappingProxyType(keks),
            index_keys=MappingProxyType(index_keys),
            kek_version=int(doc.get("kek_version", 1)),
            index_version=int(doc.get("index_version", 1)),
            index_next=doc.get("index_next"),
            index_stage=doc.get("index_stage"),
            jwt_generation=int(doc.get("jwt_generation", 1)),
            jwt_previous=tuple(
                PreviousJwtKey(int(p["generation"]), base64.b64decode(p["ed25519_seed"]),
                               base64.b64decode(p["hs256_secret"]), float(p["until"]))
                for p in doc.get("jwt_previous", [])),
            signing_previous=tuple(PreviousSigningKey(p["seed"], float(p["until"]))
                                   for p in doc.get("signing_previous", [])),
        )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def generate_secrets(signing_seed: str | None) -> TenantSecrets:
    return TenantSecrets(
        signing_seed=signing_seed or Keypair.random().secret,
        jwt_ed25519_seed=os.urandom(32),
        jwt_hs256_secret=os.urandom(32),
        data_keks=MappingProxyType({1: os.urandom(32)}),
        index_keys=MappingProxyType({1: os.urandom(32)}),
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
