"""The platform master key and the provider interface that wraps keys with it.

A :class:`KeyProvider` wraps and unwraps small secrets (tenant key material). The local
provider keeps versioned 256-bit keys from an env variable or a key file; a cloud KMS can be
added as another provider without touching callers, because callers only see
:class:`WrappedKey` documents (provider name, key version, blob).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kyc_host.crypto.aead import KEY_BYTES, DecryptionError, Sealer, new_key
from kyc_host.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class WrappedKey:
    provider: str
    version: int
    blob: bytes

    def to_doc(self) -> dict[str, object]:
        return {"provider": self.provider, "version": self.version,
                "blob": base64.b64encode(self.blob).decode()}

    @classmethod
    def from_doc(cls, doc: Mapping[str, object]) -> WrappedKey:
        blob = doc.get("blob")
        version = doc.get("version")
        provider = doc.get("provider")
        if not (isinstance(blob, str) and isinstance(version, int)
                and isinstance(provider, str)):
            raise DecryptionError("malformed wrapped key document")
        return cls(provider, version, base64.b64decode(blob))


class KeyProvider(Protocol):
    """Wraps secrets under the platform master key. ``context`` is bound as associated data."""

    name: str
    #: The version new wraps use; rotate-master re-wraps every tenant under it.
    current_version: int

    def wrap(self, secret: bytes, context: str) -> WrappedKey: ...

    def unwrap(self, wrapped: WrappedKey, context: str) -> bytes: ...


class KeyUnavailable(DecryptionError):
    """The key that wrapped a secret is not held here (yet): a version added on another host,
    or a key service that cannot be reached. Unlike a plain DecryptionError (a blob that does
    not authenticate: tampering or a bug), this is worth retrying later."""


class LocalKeyProvider:
    """Versioned master keys held in this process; the highest version wraps, all unwrap."""

    name = "local"

    def __init__(self, keys: Mapping[int, bytes], source: Path | None = None) -> None:
        if not keys:
            raise ValueError("at least one master key is needed")
        self._sealers = {version: Sealer(key) for version, key in keys.items()}
        self.current_version = max(keys)
        #: The key file these keys came from (None: an environment variable), re-read by
        #: :meth:`reload_if_changed` so a version added with ``keys add-master-version``
        #: reaches running servers before ``keys rotate-master`` wraps anything with it.
        self.source = source
        self._stamp = _stamp(source)

    @property
    def versions(self) -> tuple[int, ...]:
        return tuple(sorted(self._sealers))

    def reload_if_changed(self) -> bool:
        """Re-read the key file if it changed; True if the key set changed. A file that
        became unreadable or invalid keeps the loaded keys (and logs why)."""
        stamp = _stamp(self.source)
        if self.source is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            keys = parse_key_lines(self.source.read_text(), str(self.source))
        except (OSError, ConfigError) as exc:
            log.error("master key file %s not reloaded: %s", self.source, exc)
            return False
        sealers = {version: Sealer(key) for version, key in keys.items()}
        changed = set(sealers) != set(self._sealers)
        self._sealers = sealers
        self.current_version = max(keys)
        if changed:
            log.warning("master key versions reloaded: %s",
                        ",".join(str(v) for v in sorted(keys)))
        return changed

    def wrap(self, secret: bytes, context: str) -> WrappedKey:
        blob = self._sealers[self.current_version].seal(secret, context.encode())
        return WrappedKey(self.name, self.current_version, blob)

    def unwrap(self, wrapped: WrappedKey, context: str) -> bytes:
        sealer = self._sealers.get(wrapped.version)
        if wrapped.provider != self.name or sealer is None:
            raise KeyUnavailable(
                f"master key {wrapped.provider}:v{wrapped.version} is not loaded")
        return sealer.open(wrapped.blob, context.encode())


def _stamp(path: Path | None) -> tuple[float, int] | None:
    try:
        return None if path is None else (path.stat().st_mtime, path.stat().st_size)
    except OSError:
        return None


_LINE = re.compile(r"(\d+):([A-Za-z0-9+/=]+)")


def parse_key_lines(text: str, source: str) -> dict[int, bytes]:
    """Parse ``<version>:<base64 32 bytes>`` entries, one per line or comma-separated."""
    keys: dict[int, bytes] = {}
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for entry in (e.strip() for line in lines for e in line.split(",")):
        if not entry:
            continue
        match = _LINE.fullmatch(entry)
        if not match:
            raise ConfigError(source, "master key", "expected lines of <version>:<base64 key>")
        try:
            key = base64.b64decode(match.group(2), validate=True)
        except binascii.Error:
            raise ConfigError(source, "master key", "key is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise ConfigError(source, "master key", f"key v{match.group(1)} is not 32 bytes")
        keys[int(match.group(1))] = key
    if not keys:
        raise ConfigError(source, "master key", "no key found")
    return keys


def format_key_line(version: int, key: bytes) -> str:
    return f"{version}:{base64.b64encode(key).decode()}"


def load_key_provider(
    key_file: Path, env_name: str, *, dev_mode: bool, environ: Mapping[str, str] | None = None
) -> LocalKeyProvider:
    """Load the master key from ``env_name`` if set, else from ``key_file``.

    In dev mode a missing key file is created with a fresh key (and a loud warning);
    outside dev mode it is a ConfigError.
    """
    env = os.environ if environ is None else environ
    if env.get(env_name):
        return LocalKeyProvider(parse_key_lines(env[env_name], f"environment {env_name}"))
    if not key_file.exists():
        if not dev_mode:
            raise ConfigError(
                str(key_file), "master_key_file",
                f"master key file not found and {env_name} is unset; create one with "
                "`kyc-host keys generate-master` (or run with --dev to generate it)")
        write_new_key_file(key_file)
        log.warning("dev mode: generated a new master key at %s; never use it in production",
                    key_file)
    try:
        text = key_file.read_text()
    except OSError as exc:
        raise ConfigError(str(key_file), "master_key_file",
                          f"cannot read: {exc.strerror}") from None
    return LocalKeyProvider(parse_key_lines(text, str(key_file)), source=key_file)


def add_key_version(key_file: Path) -> int:
    """Append a fresh key with the next version to ``key_file``; returns that version.

    Older versions stay (they still unwrap tenant secrets until ``keys rotate-master`` has
    re-wrapped them all and ``keys remove-master-version`` removes them).
    """
    keys = parse_key_lines(key_file.read_text(), str(key_file))
    version = max(keys) + 1
    with key_file.open("a") as fh:
        fh.write(format_key_line(version, new_key()) + "\n")
    return version


def remove_key_version(key_file: Path, version: int) -> None:
    """Rewrite ``key_file`` without ``version`` (never the last remaining key)."""
    keys = parse_key_lines(key_file.read_text(), str(key_file))
    if version not in keys:
        raise ConfigError(str(key_file), "master key", f"no version {version}")
    if len(keys) == 1:
        raise ConfigError(str(key_file), "master key", "cannot remove the only key")
    kept = [line for line in key_file.read_text().splitlines()
            if not line.strip().startswith(f"{version}:")]
    tmp = key_file.with_suffix(key_file.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(kept) + "\n")
    os.replace(tmp, key_file)


def write_new_key_file(key_file: Path) -> None:
    """Create ``key_file`` (mode 0600) holding one fresh version-1 key; never overwrite."""
    key_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("# kyc-host master key: <version>:<base64>. Keep it secret, back it up.\n")
        fh.write(format_key_line(1, new_key()) + "\n")
