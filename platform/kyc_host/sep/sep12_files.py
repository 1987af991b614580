"""Uploaded files: the type comes from the bytes, never from the client (reliability B6).

The client's filename and ``Content-Type`` are ignored: a ``.jpg`` holding HTML, an SVG with
script or an executable is recognised by what it is and refused unless its real type is on
the tenant's allow list. Archives are never opened.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from kyc_host.errors import BadRequest, PayloadTooLarge
from kyc_host.store.files import FileInfo
from kyc_host.tenancy.schema import Limits

# ISO base media (MP4, HEIC) brands found at bytes 8..12 after "ftyp" at 4..8.
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1",
                          b"msf1"})
_MP4_BRANDS = frozenset({b"isom", b"iso2", b"mp41", b"mp42", b"avc1", b"M4V ", b"dash",
                         b"iso4", b"iso5", b"iso6", b"mmp4"})


def sniff(data: bytes) -> str | None:
    """The media type ``data`` really is (among the types the platform accepts), or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in _HEIC_BRANDS:
            return "image/heic"
        if brand in _MP4_BRANDS:
            return "video/mp4"
    return None


def check_upload(name: str, data: bytes, limits: Limits) -> str:
    """Size and type checks of one file; returns its media type.

    Raises PayloadTooLarge above ``limits.max_file_bytes`` (SEP-12 §files: 413) and
    BadRequest for an empty file or a type not on the tenant's allow list.
    """
    if len(data) > limits.max_file_bytes:
        raise PayloadTooLarge(f"{name}: file too large: the limit is "
                              f"{limits.max_file_bytes} bytes")
    if not data:
        raise BadRequest(f"{name}: the file is empty")
    media_type = sniff(data)
    if media_type is None or media_type not in limits.allowed_file_types:
        raise BadRequest(f"{name}: file type not accepted; allowed: "
                         + ", ".join(limits.allowed_file_types))
    return media_type


def iso_utc(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_object(info: FileInfo) -> dict[str, Any]:
    """A SEP-12 file object (§4.9); ``expires_at`` only while no customer references it."""
    body: dict[str, Any] = {"file_id": info.id, "content_type": info.content_type,
                            "size": info.size, "customer_id": info.customer_id}
    if info.expires_at is not None:
        body["expires_at"] = iso_utc(info.expires_at)
    return body

