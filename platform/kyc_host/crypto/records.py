"""Envelope encryption of tenant records and blind indexes for lookups (design.md §6).

Key hierarchy: platform master key (crypto/master.py) -> the tenant's key-encryption key
(KEK, versioned, kept in the tenant's secrets) -> one random 256-bit *data key* per record
(a customer, a file). The data key is stored with the record, wrapped (AES-256-GCM) by a
KEK version that is written beside it (``{"v": n, "blob": ...}``), so erasing the record
destroys the only copy of its key (crypto-shredding), and rotating the KEK only re-wraps
data keys (cheap) instead of re-encrypting data. Each value is sealed under the data key
with associated data ``tenant|collection|field|record id``: a ciphertext copied to another
field, record or tenant fails to open.

Lookups never need the plaintext: an account, memo, muxed id (account + memo), transaction
id, email or phone number is found through an HMAC-SHA256 *blind index* keyed by the
tenant's index key over the *normalized* value, so equal inputs give equal index values
within one tenant and nothing readable to anyone holding only the store.

Index keys are versioned too, and a reindex (``kyc-host keys reindex``) moves a tenant
through four stages so that processes one stage apart always agree (see :class:`IndexPlan`):

====== ============ ================= ====================== =====================
stage  read (order) write (non-unique) claim (unique inserts) who is there
====== ============ ================= ====================== =====================
settled  [v]          v                 [v]                    before / after
read     [n, v]       v                 [v]                    every process learns n
write    [n, v]       n                 [v, n] (v decides)     backfill runs here
settled  [n]          n                 [n]                    old docs deleted
====== ============ ================= ====================== =====================

A unique claim (an identity, a transaction id) is decided by the first version listed; the
job waits for every process to see one stage before moving to the next, so two processes
never decide one claim in different namespaces.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kyc_host.crypto.aead import DecryptionError, Sealer, new_key

#: The first version of every key family (a tenant onboarded before rotation existed has it).
KEK_VERSION = 1


@dataclass(frozen=True, slots=True)
class IndexPlan:
    """Which index-key versions lookups read, new values use, and unique claims insert."""

    read: tuple[int, ...]
    write: int
    claim: tuple[int, ...]

    @classmethod
    def settled(cls, version: int) -> IndexPlan:
        return cls((version,), version, (version,))

    @classmethod
    def for_stage(cls, version: int, next_version: int | None, stage: str | None) -> IndexPlan:
        """The plan of a tenant's secrets (``index_version``, ``index_next``, ``index_stage``)."""
        if next_version is None or stage is None:
            return cls.settled(version)
        if stage == "read":
            return cls((next_version, version), version, (version,))
        return cls((next_version, version), next_version, (version, next_version))


def normalize_email(value: str) -> str:
    """Case-folded, trimmed: ``Alice@Example.COM `` and ``alice@example.com`` index alike."""
    return value.strip().lower()


def normalize_phone(value: str) -> str:
    """Digits with one leading ``+`` (E.164 as SEP-9 stores it; spaces and dashes dropped)."""
    digits = "".join(ch for ch in value if ch.isdigit())
    return "+" + digits if digits else ""


class TenantCipher:
    """A tenant's key-encryption keys and index keys. Build once per tenant version.

    ``data_kek``/``index_key`` may be one key (version 1) or a mapping version -> key.
    ``kek_version`` (default: the highest) wraps new data keys; every held version unwraps.
    """

    __slots__ = ("_index_keys", "_keks", "index_plan", "kek_version", "tenant_id")

    def __init__(self, tenant_id: str, data_kek: bytes | Mapping[int, bytes],
                 index_key: bytes | Mapping[int, bytes], *, kek_version: int | None = None,
                 index_plan: IndexPlan | None = None) -> None:
        keks = {KEK_VERSION: data_kek} if isinstance(data_kek, bytes) else dict(data_kek)
        index_keys = ({KEK_VERSION: index_key} if isinstance(index_key, bytes)
                      else dict(index_key))
        self.tenant_id = tenant_id
        self._keks = {version: Sealer(key) for version, key in keks.items()}
        self.kek_version = max(keks) if kek_version is None else kek_version
        self._index_keys = index_keys
        self.index_plan = index_plan or IndexPlan.settled(max(index_keys))
        if self.kek_version not in self._keks:
            raise ValueError(f"KEK v{self.kek_version} is not among the tenant's keys")
        missing = {*self.index_plan.read, self.index_plan.write} - set(index_keys)
        if missing:
            raise ValueError(f"index key v{min(missing)} is not among the tenant's keys")

    @classmethod
    def from_secrets(cls, tenant_id: str, secrets: Any) -> TenantCipher:
        """The cipher of a tenant's :class:`~kyc_host.tenancy.secrets.TenantSecrets`."""
        return cls(tenant_id, secrets.data_keks, secrets.index_keys,
                   kek_version=secrets.kek_version,
                   index_plan=IndexPlan.for_stage(secrets.index_version, secrets.index_next,
                                                  secrets.index_stage))

    @property
    def kek_versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._keks))

    # --- data keys ---

    def _key_aad(self, collection: str, record_id: str) -> bytes:
        return f"{self.tenant_id}|{collection}|data_key|{record_id}".encode()

    def _wrap(self, collection: str, record_id: str, key: bytes) -> dict[str, Any]:
        blob = self._keks[self.kek_version].seal(key, self._key_aad(collection, record_id))
        return {"v": self.kek_version, "blob": blob}

    def new_record(self, collection: str, record_id: str) -> tuple[RecordCipher, dict[str, Any]]:
        """A fresh data key for a new record, and its wrapped form to store with the record."""
        key = new_key()
        return (RecordCipher(self.tenant_id, collection, record_id, key),
                self._wrap(collection, record_id, key))

    def unwrap(self, collection: str, record_id: str, wrapped: Mapping[str, Any]) -> bytes:
        """The raw data key of a stored record; DecryptionError if no held KEK opens it."""
        blob, version = wrapped.get("blob"), wrapped.get("v")
        sealer = self._keks.get(version) if isinstance(version, int) else None
        if sealer is None or not isinstance(blob, bytes):
            raise DecryptionError(f"data key wrapped by KEK v{version!r}, which is not held")
        return sealer.open(blob, self._key_aad(collection, record_id))

    def open_record(self, collection: str, record_id: str,
                    wrapped: Mapping[str, Any]) -> RecordCipher:
        """The cipher of a stored record; raises DecryptionError if the key does not unwrap."""
        key = self.unwrap(collection, record_id, wrapped)
        return RecordCipher(self.tenant_id, collection, record_id, key)

    def current_wrapping(self, collection: str, record_id: str, cipher: RecordCipher,
                         wrapped: Mapping[str, Any]) -> dict[str, Any]:
        """``wrapped`` if the current KEK wrapped it, else the same data key re-wrapped.

        Every save goes through this, so after a KEK rotation no process writes a data key
        under the old KEK again, even from a record it loaded before the rotation.
        """
        if wrapped.get("v") == self.kek_version:
            return dict(wrapped)
        return self._wrap(collection, record_id, cipher.key)

    def rewrap(self, collection: str, record_id: str,
               wrapped: Mapping[str, Any]) -> dict[str, Any]:
        """The data key re-wrapped under the current KEK (rotation); DecryptionError if the
        key does not unwrap with any held version."""
        return self._wrap(collection, record_id, self.unwrap(collection, record_id, wrapped))

    # --- blind indexes ---

    def _mac(self, version: int, purpose: str, value: str) -> str:
        key = self._index_keys[version]
        return hmac.new(key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    def blind_index(self, purpose: str, value: str, version: int | None = None) -> str:
        """HMAC-SHA256 of ``purpose|value`` under the write (or given) index key, as hex.

        ``purpose`` separates domains ("identity", "account", "transaction", "email", ...)
        so an index value of one kind can never match a lookup of another.
        """
        return self._mac(self.index_plan.write if version is None else version, purpose, value)

    def blind_indexes(self, purpose: str, value: str) -> list[str]:
        """The index value under every version lookups read, newest first."""
        return [self._mac(v, purpose, value) for v in self.index_plan.read]

    def claim_indexes(self, purpose: str, value: str) -> list[tuple[int, str]]:
        """(version, index value) for a unique claim; the first one decides (module doc)."""
        return [(v, self._mac(v, purpose, value)) for v in self.index_plan.claim]

    def email_index(self, email: str) -> str:
        return self.blind_index("email", normalize_email(email))

    def phone_index(self, phone: str) -> str:
        return self.blind_index("phone", normalize_phone(phone))

    def digest(self, purpose: str, data: bytes, version: int | None = None) -> str:
        """Keyed digest of bytes (e.g. file contents), for equality checks without plaintext."""
        key = self._index_keys[self.index_plan.write if version is None else version]
        mac = hmac.new(key, purpose.encode() + b"|", hashlib.sha256)
        mac.update(data)
        return mac.hexdigest()

    def digests(self, purpose: str, data: bytes) -> list[str]:
        """The digest under every version lookups read (a file stored before a reindex)."""
        return [self.digest(purpose, data, v) for v in self.index_plan.read]


class RecordCipher:
    """Seals and opens the values of one record under its data key."""

    __slots__ = ("_prefix", "_sealer", "key")

    def __init__(self, tenant_id: str, collection: str, record_id: str, key: bytes) -> None:
        self._sealer = Sealer(key)
        self._prefix = (tenant_id, collection, record_id)
        #: The raw data key, kept only so a save can re-wrap it under a newer KEK.
        self.key = key

    def _aad(self, field: str) -> bytes:
        tenant_id, collection, record_id = self._prefix
        return f"{tenant_id}|{collection}|{field}|{record_id}".encode()

    def seal(self, field: str, plaintext: bytes) -> bytes:
        return self._sealer.seal(plaintext, self._aad(field))

    def open(self, field: str, blob: bytes) -> bytes:
        return self._sealer.open(blob, self._aad(field))

    def seal_text(self, field: str, text: str) -> bytes:
        return self.seal(field, text.encode())

    def open_text(self, field: str, blob: bytes) -> str:
        return self.open(field, blob).decode()

