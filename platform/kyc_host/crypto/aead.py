"""AES-256-GCM sealing with associated data.

Associated data binds a ciphertext to where it belongs (tenant, collection, field, record),
so a ciphertext copied to another record or tenant fails to open (design.md §6).
Blob layout: 12-byte random nonce || ciphertext || 16-byte tag.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12


class DecryptionError(Exception):
    """The blob was altered, moved to another place, or sealed under another key."""


class Sealer:
    """Seals and opens blobs under one 256-bit key. Build once per key and reuse."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError("AES-256-GCM needs a 32-byte key")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < NONCE_BYTES + 16:
            raise DecryptionError("ciphertext too short")
        try:
            return self._aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError("ciphertext does not open with this key and context") from None


def new_key() -> bytes:
    return os.urandom(KEY_BYTES)
