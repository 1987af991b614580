"""Multipart bodies are parsed as Tornado parses them, without copying the whole body.

sep12_body._parse_multipart finds the parts itself (Tornado's parser copied a 10 MiB upload
three times with the GIL held) and leaves each part's headers to Tornado. These tests
compare it with Tornado's own parser over well-formed and randomly broken bodies: the same
names, filenames, types and values, and an error exactly where Tornado has one.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from tornado.httputil import HTTPHeaders, HTTPInputError, parse_body_arguments

from kyc_host.errors import BadRequest
from kyc_host.sep.sep12_body import BodyBuffer, _parse_multipart, parse_body

BOUNDARY = "b0undary"


def tornado_parse(content_type: str, raw: bytes) -> Any:
    arguments: dict[str, list[bytes]] = {}
    files: dict[str, list[Any]] = {}
    try:
        parse_body_arguments(content_type, raw, arguments, files, HTTPHeaders())
    except (HTTPInputError, UnicodeDecodeError):
        return "malformed"
    return arguments, {name: [(f.filename, f.content_type, f.body) for f in parts]
                       for name, parts in files.items()}


def our_parse(content_type: str, raw: bytes) -> Any:
    try:
        arguments, files = _parse_multipart(content_type, bytearray(raw))
    except BadRequest:
        return "malformed"
    return arguments, {name: [(f.filename, f.content_type, f.body) for f in parts]
                       for name, parts in files.items()}


def part(name: str, value: bytes, filename: str | None = None,
         content_type: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    head = f"Content-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return f"--{BOUNDARY}\r\n{head}\r\n".encode() + value + b"\r\n"


def body(*parts: bytes, boundary: str = BOUNDARY) -> bytes:
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


CT = f"multipart/form-data; boundary={BOUNDARY}"


def test_a_well_formed_upload_parses_as_tornado_parses_it() -> None:
    image = bytes(range(256)) * 4096 + b"\r\n--not-the-boundary\r\n\r\n"
    raw = body(part("first_name", "Zoë".encode()), part("photo_id_front", image, "id.jpg",
                                                         "image/jpeg"),
               part("empty", b""), part("file", b"%PDF-1.7 ...", "x.pdf"))
    ours = our_parse(CT, raw)
    assert ours == tornado_parse(CT, raw)
    arguments, files = ours
    assert arguments == {"first_name": ["Zoë".encode()], "empty": [b""]}
    assert files["photo_id_front"] == [("id.jpg", "image/jpeg", image)]


@pytest.mark.parametrize("content_type", [
    f'multipart/form-data; boundary="{BOUNDARY}"',  # quoted, as RFC 2046 allows
    f"multipart/form-data;boundary={BOUNDARY}; charset=utf-8",
    "multipart/form-data",  # no boundary
    "multipart/form-data; boundary=",
    "multipart/form-data; boundary=other",
])
def test_boundary_parameters_are_read_as_tornado_reads_them(content_type: str) -> None:
    raw = body(part("a", b"1"), part("b", b"2", "b.bin"))
    assert our_parse(content_type, raw) == tornado_parse(content_type, raw)


# Pieces that, put together at random, make bodies near the edges of the format.
PIECES = [
    f"--{BOUNDARY}\r\n".encode(), f"--{BOUNDARY}--".encode(), f"--{BOUNDARY}".encode(),
    b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"--", b'"',
    b'Content-Disposition: form-data; name="a"\r\n',
    b'Content-Disposition: form-data; name="b"; filename="f.png"\r\n',
    b'Content-Disposition: form-data; name="a"; filename=""\r\n',
    b"Content-Disposition: form-data\r\n", b"Content-Disposition: attachment; name=x\r\n",
    b"Content-Type: image/png\r\n", b"X: \xff\xfe\r\n", b"no colon here\r\n",
    b"value", b"\x00\x01\x02", "ü".encode(),
]


def random_body(rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # mostly well formed, with one piece changed somewhere
        raw = bytearray(body(*(part(rng.choice("abc"), rng.randbytes(rng.randrange(6)),
                                    rng.choice([None, "f.bin"]))
                               for _ in range(rng.randrange(1, 4)))))
        at = rng.randrange(len(raw) + 1)
        cut = rng.randrange(4)
        raw[at:at + cut] = rng.choice(PIECES)
        return bytes(raw)
    return b"".join(rng.choice(PIECES) for _ in range(rng.randrange(1, 14)))


def test_random_and_broken_bodies_give_what_tornado_gives() -> None:
    rng = random.Random(20261126)
    outcomes = {"malformed": 0, "parsed": 0}
    for _ in range(20_000):
        raw = random_body(rng)
        expected = tornado_parse(CT, raw)
        assert our_parse(CT, raw) == expected, raw
        outcomes["malformed" if expected == "malformed" else "parsed"] += 1
    # Both kinds were exercised in bulk.
    assert min(outcomes.values()) > 2_000, outcomes


def test_a_buffered_upload_is_put_together_once_and_released() -> None:
    image = b"\x89PNG" + bytes(1024 * 1024)
    raw = body(part("photo_id_front", image, "id.png", "image/png"))
    buffer = BodyBuffer(len(raw), str(len(raw)))
    for at in range(0, len(raw), 65536):
        buffer.add(raw[at:at + 65536])
    taken = buffer.take()
    assert taken == raw  # the chunks in order
    assert type(taken) is bytes  # in one piece
    assert buffer.take() == b""  # and nothing kept
    parsed = parse_body(CT, taken, file_names=frozenset({"photo_id_front"}))
    assert parsed.files == {"photo_id_front": image}
    assert type(parsed.files["photo_id_front"]) is bytes  # a value is copied out, once


@pytest.mark.parametrize("raw", [b"", b"   \r\n\t"])
def test_an_empty_or_blank_body_has_no_values(raw: bytes) -> None:
    parsed = parse_body(CT, bytearray(raw), file_names=frozenset())
    assert parsed.values == {}
    assert parsed.files == {}
