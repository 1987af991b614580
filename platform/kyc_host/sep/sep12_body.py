"""SEP-12 request bodies: bounded streaming, then JSON / form / multipart into one shape.

SEP-12 §4.2 allows ``application/json``, ``application/x-www-form-urlencoded`` and
``multipart/form-data`` on every endpoint. Whatever the encoding, a body becomes a
:class:`Body`: text values by name and file contents by part name. Ambiguity is refused
rather than guessed (a name given twice, nested JSON, a value that is not text), so the
code after this never sees a list where it expects a string.

Tornado does not parse JSON, answers oversized bodies with a bare 400 and puts multipart
parts without ``filename=`` into the arguments as bytes (digest §1 item 9); this module
handles all three.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tornado.httputil import HTTPFile, HTTPHeaders, HTTPInputError, parse_body_arguments

from kyc_host.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

#: Body cap of endpoints that never carry files (verification, callback, DELETE, GETs).
SMALL_BODY_BYTES = 64 * 1024
MAX_NAME_CHARS = 200
ENCODINGS = "application/json, application/x-www-form-urlencoded or multipart/form-data"


#: How much of a chunked body past the limit is read and thrown away, so that the client
#: (still sending) reads our 413 instead of a connection reset. Beyond it we hang up.
DRAIN_BYTES = 16 * 1024 * 1024


class BodyBuffer:
    """Collects a streamed body up to ``limit`` bytes.

    ``Content-Length`` is checked before any byte is read (413 at once). A body without
    one (chunked) is counted as it arrives: past the limit nothing more is kept, and the
    rest is read and discarded for up to DRAIN_BYTES so the answer can be a clean 413.
    """

    def __init__(self, limit: int, content_length: str | None) -> None:
        self.limit = limit
        self.received = 0
        # The chunks as Tornado hands them over (64 KiB at most), put together once in
        # take(). A bytearray grown chunk by chunk is copied to a new place each time it
        # outgrows its own (12.5 % at a time) unless it ends the heap: twenty 9.5 MiB
        # bodies arriving side by side took 0.34-0.37 s of CPU that way, 0.08 s as lists
        # joined once (with kyc_host.memory's settings; BENCHMARKS.md).
        self._chunks: list[bytes] = []
        if content_length is not None:
            if not content_length.isdigit():
                raise BadRequest("invalid Content-Length")
            if int(content_length) > limit:
                raise too_large(limit)

    @property
    def overflowed(self) -> bool:
        return self.received > self.limit

    def add(self, chunk: bytes) -> bool:
        """Count a chunk and keep it while under the limit; False once past the drain cap."""
        self.received += len(chunk)
        if self.overflowed:
            self._chunks = []
            return self.received <= self.limit + DRAIN_BYTES
        self._chunks.append(chunk)
        return True

    def take(self) -> bytes:
        """The body, once, in one piece (the chunks are released as it is made; an upload's
        file values are copied out of it by :func:`parse_body`, and it is then dropped).
        Raises PayloadTooLarge if it was over the limit."""
        if self.overflowed:
            raise too_large(self.limit)
        chunks, self._chunks = self._chunks, []
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body too large: the limit is {limit} bytes")


@dataclass(slots=True)
class Body:
    """A parsed body: text values and file contents, each name at most once."""

    values: dict[str, str] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    def names(self) -> Iterable[str]:
        return [*self.values, *self.files]


def safe_name(name: str) -> str:
    """A client-sent parameter name, shortened and escaped for an error message."""
    shown = name if len(name) <= 64 else name[:61] + "..."
    return json.dumps(shown)[1:-1]


def parse_body(content_type: str | None, raw: bytes | bytearray, *,
               file_names: frozenset[str]) -> Body:
    """Parse a request body.

    ``file_names`` are the part names that carry binary data (the SEP-9 binary fields and
    ``file``); a multipart part with such a name is a file whether or not it has a filename.
    Raises BadRequest (malformed, ambiguous) or UnsupportedMediaType.
    """
    if not raw or raw.isspace():  # not strip(): that copies the whole body
        return Body()
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        return Body(values=_parse_json(raw))
    if media_type == "application/x-www-form-urlencoded":
        return _from_arguments(_parse_form(content_type or "", bytes(raw)), {}, file_names)
    if media_type == "multipart/form-data":
        arguments, files = _parse_multipart(content_type or "", raw)
        return _from_arguments(arguments, files, file_names)
    raise UnsupportedMediaType(f"Content-Type must be {ENCODINGS}")


def parse_query(arguments: Mapping[str, list[bytes]]) -> dict[str, str]:
    """Query parameters (``request.query_arguments``) as single text values."""
    return _from_arguments(arguments, {}, frozenset()).values


# --- encodings ---


def _parse_json(raw: bytes | bytearray) -> dict[str, str]:
    try:
        doc = json.loads(raw, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        reason = str(exc) if isinstance(exc, _Duplicate) else "malformed JSON body"
        raise BadRequest(reason) from None
    if not isinstance(doc, dict):
        raise BadRequest("the JSON body must be an object")
    return {name: _json_text(name, value) for name, value in doc.items()}


class _Duplicate(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in pairs:
        if name in out:
            raise _Duplicate(f"{safe_name(name)}: given more than once")
        out[name] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _json_text(name: str, value: Any) -> str:
    """SEP-9 values are text; JSON numbers are accepted and kept as their decimal text."""
    _check_name(name)
    if isinstance(value, str):
        return _utf8_text(name, value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    if isinstance(value, dict | list):
        raise BadRequest(f"{safe_name(name)}: nested objects and arrays are not accepted")
    raise BadRequest(f"{safe_name(name)}: expected a text value")


def _utf8_text(name: str, value: str) -> str:
    """``value`` if it (and ``name``) is Unicode text. A JSON escape can spell a lone
    surrogate (``"\\ud800"``), which is not: any later ``.encode()`` (a text memo's byte
    length, encryption) would raise, a 500. Refused as a form's invalid UTF-8 is."""
    try:
        name.encode("utf-8")
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"{safe_name(name)}: not valid UTF-8 text") from None
    return value


def _parse_form(content_type: str, raw: bytes) -> dict[str, list[bytes]]:
    arguments: dict[str, list[bytes]] = {}
    try:
        parse_body_arguments(content_type, raw, arguments, {})
    except HTTPInputError:
        raise BadRequest("malformed form body") from None
    return arguments


_MALFORMED_MULTIPART = "malformed multipart/form-data body"


def _parse_multipart(content_type: str, raw: bytes | bytearray
                     ) -> tuple[dict[str, list[bytes]], dict[str, list[HTTPFile]]]:
    """Tornado's multipart/form-data parsing, without its copies of the whole body.

    Tornado's parser slices the body, splits it and slices each part again: three copies of
    a 10 MiB upload, each made with the GIL held, which stalled the event loop (and every
    tenant's requests) 15-35 ms while an upload was parsed on a file thread (the
    noisy-neighbour benchmark, BENCHMARKS.md). Here the parts are located in the body as
    received with ``find``; each part's headers are parsed by Tornado (as a body of that one
    part with an empty value, so names, filenames and errors are Tornado's), and each value
    is copied out once."""
    boundary = _boundary(content_type)
    delimiter = b"--" + (boundary[1:-1] if boundary[:1] == boundary[-1:] == b'"' else boundary)
    end = raw.rfind(delimiter + b"--")
    if end == -1:
        raise BadRequest(_MALFORMED_MULTIPART)
    opening = delimiter + b"\r\n"
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[HTTPFile]] = {}
    start = 0
    while True:  # the parts are what lies between openings, before the closing delimiter
        found = raw.find(opening, start, end)
        stop = end if found == -1 else found
        if stop > start:
            _add_part(raw, start, stop, boundary, delimiter, arguments, files)
        if found == -1:
            return arguments, files
        start = found + len(opening)


def _boundary(content_type: str) -> bytes:
    # As tornado.httputil.parse_body_arguments finds it.
    for param in content_type.split(";"):
        key, _, value = param.strip().partition("=")
        if key == "boundary" and value:
            return value.encode("utf-8")
    raise BadRequest(_MALFORMED_MULTIPART)


def _add_part(raw: bytes | bytearray, start: int, stop: int, boundary: bytes, delimiter: bytes,
              arguments: dict[str, list[bytes]], files: dict[str, list[HTTPFile]]) -> None:
    head_end = raw.find(b"\r\n\r\n", start, stop)
    if head_end == -1 or raw[stop - 2:stop] != b"\r\n":
        raise BadRequest(_MALFORMED_MULTIPART)
    one_part = b"".join((delimiter, b"\r\n", raw[start:head_end], b"\r\n\r\n\r\n", delimiter,
                         b"--"))
    part_arguments: dict[str, list[bytes]] = {}
    part_files: dict[str, list[HTTPFile]] = {}
    try:
        parse_body_arguments(f"multipart/form-data; boundary={boundary.decode('utf-8')}",
                             one_part, part_arguments, part_files, HTTPHeaders())
    except (HTTPInputError, UnicodeDecodeError):
        raise BadRequest(_MALFORMED_MULTIPART) from None
    # Through a view: slicing the bytearray itself would copy the value twice.
    value = bytes(memoryview(raw)[head_end + 4:max(head_end + 4, stop - 2)])
    for name, [_] in part_arguments.items():
        arguments.setdefault(name, []).append(value)
    for name, [file] in part_files.items():
        file["body"] = value
        files.setdefault(name, []).append(file)


def _from_arguments(arguments: Mapping[str, list[bytes]], files: Mapping[str, list[HTTPFile]],
                    file_names: frozenset[str]) -> Body:
    body = Body()
    for raw_name, values in arguments.items():
        name = _decode_name(raw_name)
        if len(values) != 1 or name in body.values or name in body.files:
            raise BadRequest(f"{safe_name(name)}: given more than once")
        if name in file_names:
            body.files[name] = values[0]  # a multipart part without filename= (digest §1.9)
            continue
        try:
            body.values[name] = values[0].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"{safe_name(name)}: not valid UTF-8 text") from None
    for name, parts in files.items():
        _check_name(name)
        if len(parts) != 1 or name in body.values or name in body.files:
            raise BadRequest(f"{safe_name(name)}: given more than once")
        body.files[name] = parts[0].body  # the client's filename and type are ignored
    return body


def _decode_name(raw_name: str) -> str:
    # Tornado decodes form and query names as latin-1; names are UTF-8 on the wire.
    try:
        name = raw_name.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise BadRequest("a parameter name is not valid UTF-8") from None
    _check_name(name)
    return name


def _check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME_CHARS:
        raise BadRequest(f"parameter names must have 1 to {MAX_NAME_CHARS} characters")
