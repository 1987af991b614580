"""A bare HTTP/1.1 client on asyncio streams, for tests that must see what happens on the wire:
whether a connection was refused, accepted, or cut mid-request, and when its bytes went out.
Index:

- :func:`exchange`: one request on a new connection (optionally trickling its body, optionally
  keeping the connection to read what the server does next) -> :class:`Outcome`.
- :func:`read_response`: one response from a stream (Content-Length bodies, as Tornado sends).
- :func:`wait_closed`: whether the server closes a connection within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: Everything that means "the connection broke" once it was established.
BROKEN = (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError)


@dataclass
class Outcome:
    """What one request got. ``kind``: "answered", "refused" (the connect failed) or "cut"
    (connected, but no complete response: reset, early close, or the read bound passed)."""

    kind: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    detail: str = ""
    #: Loop time when the connection was established (None: never) and when the request's
    #: first byte was written.
    connected_at: float | None = None
    sent_at: float | None = None
    #: After the response, did the server close the connection (read EOF) within the bound?
    closed_after: bool | None = None


def request_bytes(method: str, path: str, host: str, headers: Mapping[str, str] | None = None,
                  body: bytes = b"", *, keep_alive: bool = False) -> tuple[bytes, bytes]:
    """The request head and body. ``Connection: close`` unless ``keep_alive``."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    all_headers = {**(headers or {})}
    if body or method in ("PUT", "POST"):
        all_headers["Content-Length"] = str(len(body))
    if not keep_alive:
        all_headers["Connection"] = "close"
    lines += [f"{k}: {v}" for k, v in all_headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return int(status_line.split(" ", 2)[1]), headers, body


async def wait_closed(reader: asyncio.StreamReader, within: float) -> bool:
    """True if the peer closes (EOF or reset) within ``within`` seconds without sending more."""
    try:
        data = await asyncio.wait_for(reader.read(1), within)
    except TimeoutError:
        return False
    except BROKEN:
        return True
    return data == b""


async def exchange(port: int, head: bytes, body: bytes = b"", *, chunks: int = 1,
                   trickle_seconds: float = 0.0, read_timeout: float = 60.0,
                   on_body_started: Callable[[], None] | None = None,
                   check_close: float = 0.0) -> Outcome:
    """Send ``head`` then ``body`` (in ``chunks`` pieces spread over ``trickle_seconds``) on a
    new connection to 127.0.0.1:``port`` and read one response. ``on_body_started`` runs once
    the head and the first piece are out. ``check_close`` > 0: afterwards, wait that long for
    the server to close the connection (``Outcome.closed_after``)."""
    loop = asyncio.get_running_loop()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except (ConnectionRefusedError, ConnectionResetError) as exc:
        # Reset at connect: the listener closed with this connection still in its accept
        # backlog -- never accepted, as good as refused (a load balancer retries either).
        return Outcome("refused", detail=str(exc))
    outcome = Outcome("cut", connected_at=loop.time())
    try:
        outcome.sent_at = loop.time()
        size = -(-len(body) // chunks) if body else 0
        pieces = [body[i:i + size] for i in range(0, len(body), size)] if size else []
        writer.write(head + (pieces[0] if pieces else b""))
        await writer.drain()
        if on_body_started is not None:
            on_body_started()
        for piece in pieces[1:]:
            await asyncio.sleep(trickle_seconds / max(1, len(pieces) - 1))
            writer.write(piece)
            await writer.drain()
        status, headers, data = await asyncio.wait_for(read_response(reader), read_timeout)
        outcome.kind, outcome.status, outcome.headers, outcome.body = (
            "answered", status, headers, data)
        if check_close:
            outcome.closed_after = await wait_closed(reader, check_close)
    except (TimeoutError, *BROKEN) as exc:
        outcome.detail = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()
        with contextlib.suppress(*BROKEN):
            await writer.wait_closed()
    return outcome
