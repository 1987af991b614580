"""Envelope encryption of tenant records and blind indexes for lookups (design.md §6).

Every record that holds PII (a customer, a file) has its own random 256-bit data key. The data
key is stored with the record, wrapped (AES-256-GCM) by the tenant's key-encryption key, so
erasing the record destroys the only copy of its key (crypto-shredding). Each value is sealed
under the data key with associated data ``tenant|collection|field|record id``: a ciphertext
copied to another field, record or tenant fails to open.

Lookups never need the plaintext: an account, memo or transaction id is found through an
HMAC-SHA256 *blind index* keyed by the tenant's index key, so equal inputs give equal index
values within one tenant and nothing readable to anyone holding only the store.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from kyc_host.crypto.aead import DecryptionError, Sealer, new_key

#: Version of the tenant key-encryption key; key rotation (issue 5) adds later versions.
KEK_VERSION = 1


class TenantCipher:
    """A tenant's key-encryption key and index key. Build once per tenant version."""

    __slots__ = ("_index_key", "_kek", "tenant_id")

    def __init__(self, tenant_id: str, data_kek: bytes, index_key: bytes) -> None:
        self.tenant_id = tenant_id
        self._kek = Sealer(data_kek)
        self._index_key = index_key

    def _key_aad(self, collection: str, record_id: str) -> bytes:
        return f"{self.tenant_id}|{collection}|data_key|{record_id}".encode()

    def new_record(self, collection: str, record_id: str) -> tuple[RecordCipher, dict[str, Any]]:
        """A fresh data key for a new record, and its wrapped form to store with the record."""
        key = new_key()
        wrapped = {"v": KEK_VERSION, "blob": self._kek.seal(key, self._key_aad(collection,
                                                                             record_id))}
        return RecordCipher(self.tenant_id, collection, record_id, key), wrapped

    def open_record(self, collection: str, record_id: str,
                    wrapped: Mapping[str, Any]) -> RecordCipher:
        """The cipher of a stored record; raises DecryptionError if the key does not unwrap."""
        blob = wrapped.get("blob")
        if wrapped.get("v") != KEK_VERSION or not isinstance(blob, bytes):
            raise DecryptionError(f"unknown data key version {wrapped.get('v')!r}")
        key = self._kek.open(blob, self._key_aad(collection, record_id))
        return RecordCipher(self.tenant_id, collection, record_id, key)

    def blind_index(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 of ``purpose|value`` under the tenant's index key, as hex.

        ``purpose`` separates domains ("identity", "account", "transaction", ...) so an index
        value of one kind can never match a lookup of another.
        """
        mac = hmac.new(self._index_key, f"{purpose}|{value}".encode(), hashlib.sha256)
        return mac.hexdigest()

    def digest(self, purpose: str, data: bytes) -> str:
        """Keyed digest of bytes (e.g. file contents), for equality checks without plaintext."""
        mac = hmac.new(self._index_key, purpose.encode() + b"|", hashlib.sha256)
        mac.update(data)
        return mac.hexdigest()


class RecordCipher:
    """Seals and opens the values of one record under its data key."""

    __slots__ = ("_prefix", "_sealer")

    def __init__(self, tenant_id: str, collection: str, record_id: str, key: bytes) -> None:
        self._sealer = Sealer(key)
        self._prefix = (tenant_id, collection, record_id)

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
