"""The HTTP server of each listener: connection timeouts and a graceful drain.

Timeouts (reliability-plan L5: slow clients must not hold connections or memory). Tornado's
``HTTPServer`` has two timers, and they map to settings as follows:

- ``idle_timeout_seconds`` -> Tornado's ``idle_connection_timeout`` (used as its
  ``header_timeout``): it runs from the moment a connection starts waiting for a request --
  right after it was accepted, or right after the previous response on a keep-alive
  connection -- until that request's headers are complete. It is what closes idle keep-alive
  connections. Keep it above the idle timeout of the load balancer in front (else the
  balancer may send a request on a connection this server is closing).
- ``body_timeout_seconds`` -> Tornado's ``body_timeout``: the *total* time from the end of
  the headers to the end of the body (not a gap between reads), so a body trickled at 1 KB/s
  is cut when it runs out, whatever the trickle rate. A cut body never reaches a handler's
  method, so nothing is written (SEP-12 handlers buffer the body and act on it whole).
- ``header_timeout_seconds`` is added here, because Tornado has one timer for "idle" and
  "sending headers": once the first byte of a request has arrived, its headers must be
  complete within this time (a slowloris client sending a header line every few seconds is
  closed after it, not after the long idle timeout). A sweep checks waiting connections
  every ``min(1 s, header timeout / 4)``, so the cut comes at most that much later.

Graceful drain (reliability-plan F9: no request that began before SIGTERM is cut).
:meth:`ServingHTTPServer.drain` stops the listeners without resetting a connection whose
client saw its connect succeed. Closing a listening socket resets every connection the
kernel completed that the server has not accepted yet, and every handshake still under way;
the client has usually sent its request by then, and sees a reset instead of an answer. So
on Linux the drain first makes each listener drop new connection requests (a socket filter
that drops TCP segments with SYN and without ACK: a client's connect is not answered, and
its retry a second later finds the port closed, i.e. refused), goes on accepting for
:data:`HANDSHAKE_GRACE_SECONDS` so that handshakes already under way complete and are
served, then accepts what the kernel still holds and closes the sockets. (Without the
filter, a handshake completing around the close was reset: 3 and 5 in two runs of 100 drains
with 24 clients connecting in a loop, tests/faults/test_drain_handshakes.py.)
Then it waits until
no connection is inside a request (from its first byte to the end of its response), and
closes the idle keep-alive connections left -- but not before :data:`IDLE_GRACE_SECONDS`
have passed, so that a client using its keep-alive connection gets one more request through
rather than a close racing its next request. Until then an idle keep-alive connection may
still carry one more request (a load balancer's, or a readiness probe that sees 503): every
response sent while draining carries ``Connection: close``, so no client sends another
request on a connection that is about to close.

Turn-taking (web/turns.py): on the public listener, a request for a tenant that already has
many requests in flight waits for its turn once its headers are read, before it is routed;
until then Tornado reads neither its body nor the connection's next request. (On the
server's own loop, ``TurnTakingLoop``, the connection is marked with its tenant there
instead, and each of its steps from then on waits its turn.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tornado import httputil
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection
from tornado.httpserver import HTTPServer

log = logging.getLogger(__name__)

#: Given a request's Host header: None if it may be served now, else what to wait for first
#: (web/turns.py).
TurnFor = Callable[[str], "Awaitable[None] | None"]

#: How often a drain looks at its connections again while requests are in flight.
DRAIN_POLL_SECONDS = 0.05
#: While draining, a connection accepted this recently that has sent nothing yet is given
#: this long to send its request (its client connected before the listeners closed).
FRESH_GRACE_SECONDS = 1.0
#: While draining, listeners take no new connection requests but go on accepting this long, so
#: that handshakes under way when the drain began complete (one round trip: a client behind
#: a load balancer in the same data centre is well under a millisecond away).
HANDSHAKE_GRACE_SECONDS = 0.2
#: While draining, idle keep-alive connections stay open this long for one more request,
#: which is answered with "Connection: close" (the client then reconnects: through a load
#: balancer, to another replica). Closing them at once cut requests that clients had just
#: sent on them -- a reset or EOF instead of an answer, measured in a rolling restart at
#: 100 req/s (tests/faults/test_rolling_restart.py). A drain ends sooner once every
#: connection has closed; only a client idle longer than this sees a close while idle.
IDLE_GRACE_SECONDS = 1.0
#: What Tornado writes, without a body, when a request line or header block cannot be parsed
#: (``HTTP1Connection._read_message_inner``; tornado 6.x) ...
TORNADO_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"
_MALFORMED_BODY = (b'{"error": "malformed HTTP request: the request line or a header could not be '
                   b'parsed (control characters, a bad header line, or a bad Content-Length '
                   b'or Transfer-Encoding)"}')
#: ... and what the client gets instead: the same status with a JSON error, like every other
#: refusal of this server. The connection is closed after it, as Tornado does.
JSON_400 = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=UTF-8\r\n"
            b"Content-Length: " + str(len(_MALFORMED_BODY)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + _MALFORMED_BODY)


class _ConnState:
    """What one connection is doing: inside a request (``busy``) or waiting for one."""

    __slots__ = ("accepted_at", "busy", "first_byte", "fresh", "request")

    def __init__(self, now: float) -> None:
        self.busy = False
        #: No request has begun on it yet (a client connects, then writes its request).
        self.fresh = True
        self.accepted_at = now
        #: Loop time at which the sweep first saw bytes of the next request (None: none yet).
        self.first_byte: float | None = None
        self.request: httputil.HTTPConnection | None = None


class _TrackedRequest(httputil.HTTPMessageDelegate):
    """Forwards one request to the application and marks its connection busy from the
    moment its headers are complete (the connection stays busy until its next request
    begins -- Tornado starts the next one only after the response was written -- or it
    closes)."""

    def __init__(self, state: _ConnState, request: httputil.HTTPConnection,
                 inner: httputil.HTTPMessageDelegate, turn_for: TurnFor | None) -> None:
        self.state, self.request, self.inner = state, request, inner
        self.turn_for = turn_for

    def headers_received(self, start_line: httputil.RequestStartLine
                         | httputil.ResponseStartLine,
                         headers: httputil.HTTPHeaders) -> Any:
        self.state.busy, self.state.first_byte, self.state.fresh = True, None, False
        self.state.request = self.request
        turn = None if self.turn_for is None else self.turn_for(headers.get("Host", ""))
        if turn is None:
            return self.inner.headers_received(start_line, headers)
        return self._at_turn(turn, start_line, headers)

    async def _at_turn(self, turn: Awaitable[None], start_line: httputil.RequestStartLine
                       | httputil.ResponseStartLine, headers: httputil.HTTPHeaders) -> None:
        # Tornado reads neither the body nor the next request until this is done.
        await turn
        handled = self.inner.headers_received(start_line, headers)
        if handled is not None:
            await handled

    def data_received(self, chunk: bytes) -> Any:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


class ServingHTTPServer(HTTPServer):
    """``HTTPServer`` plus the header timeout and :meth:`drain` (see the module doc).

    Build it like ``HTTPServer`` with the extra keyword ``header_timeout`` (seconds).
    """

    header_timeout: float
    draining: bool

    def initialize(self, *args: Any, header_timeout: float = 3600.0,
                   turn_for: TurnFor | None = None, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.header_timeout = header_timeout
        self.turn_for = turn_for
        self.draining = False
        #: False for listening sockets other processes hold too (inherited from the
        #: supervisor): the filter is on the socket, so it would stop their accepting too.
        self.refuse_handshakes = True
        self._states: dict[HTTP1ServerConnection, _ConnState] = {}
        self._listening: list[socket.socket] = []
        self._sweeper: asyncio.Task[None] | None = None

    # --- connection tracking ---

    def handle_stream(self, stream: Any, address: Any) -> None:
        _json_parse_errors(stream)
        super().handle_stream(stream, address)

    def start_request(self, server_conn: object,
                      request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        conn = cast(HTTP1ServerConnection, server_conn)
        state = self._states.get(conn)
        if state is None:
            state = self._states[conn] = _ConnState(time.monotonic())
        # Tornado asks for the next request only once the previous response is written.
        state.busy, state.first_byte, state.request = False, None, None
        return _TrackedRequest(state, request_conn,
                               super().start_request(server_conn, request_conn), self.turn_for)

    def on_close(self, server_conn: object) -> None:
        self._states.pop(cast(HTTP1ServerConnection, server_conn), None)
        super().on_close(server_conn)

    def _in_request(self, server_conn: HTTP1ServerConnection, now: float) -> bool:
        """Whether closing this connection now could cut a request: one whose headers
        arrived, one with bytes of its start buffered, or one accepted less than
        :data:`FRESH_GRACE_SECONDS` ago that has not sent its first request yet (its
        client connected before the listeners closed and is about to write)."""
        state = self._states.get(server_conn)
        return (state is None or state.busy or _buffered(server_conn) > 0
                or (state.fresh and now - state.accepted_at < FRESH_GRACE_SECONDS))

    # --- listeners ---

    def add_sockets(self, sockets: Any) -> None:
        sockets = list(sockets)
        self._listening.extend(sockets)
        super().add_sockets(sockets)
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep())

    def stop(self) -> None:
        """Stop listening. Connections the kernel already completed (the accept backlog)
        are accepted and served: closing the socket would reset them, though their clients
        connected before the server stopped. The socket is closed right after the accept
        that finds the backlog empty, to keep the window for a reset as short as it can be.
        """
        if self._stopped:
            return
        accepted = []
        for sock in self._listening:
            # Tornado's accept handler first, so that it does not race this loop.
            remove = self._handlers.pop(sock.fileno(), None)
            if remove is not None:
                remove()
            accepted += _accept_all_then_close(sock)
        self._sockets.clear()
        self._listening.clear()
        self._stopped = True
        for connection, address in accepted:
            # What Tornado's own accept loop does with a connection (TCPServer.add_sockets).
            self._handle_connection(connection, address)

    def _refuse_handshakes(self) -> bool:
        """Make every listener drop new connection requests (see the module doc). False if
        none could (not Linux, or already stopped): the drain then closes them at once."""
        attached = False
        for sock in self._listening:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, DROP_SYN_FILTER)
            except OSError as exc:
                log.debug("listener keeps taking connections until closed: %s", exc)
            else:
                attached = True
        return attached

    # --- timeouts ---

    async def _sweep(self) -> None:
        """Close connections whose request started but whose headers are late."""
        interval = min(1.0, max(0.01, self.header_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for server_conn, state in list(self._states.items()):
                if state.busy:
                    continue
                if _buffered(server_conn) == 0:
                    state.first_byte = None
                elif state.first_byte is None:
                    state.first_byte = now
                elif now - state.first_byte >= self.header_timeout:
                    # Debug only: a slowloris flood must not become a log flood.
                    log.debug("closed a connection: request headers incomplete after %g s",
                              self.header_timeout)
                    server_conn.stream.close()

    # --- graceful drain ---

    async def drain(self, deadline: float,
                    handshake_grace: float = HANDSHAKE_GRACE_SECONDS) -> bool:
        """Stop accepting, let every request that began finish, then close idle connections.

        ``deadline`` is a ``time.monotonic()`` value. True once no connection is inside a request,
        False if the deadline came first (the caller then closes what is left).
        ``handshake_grace``: how long the listeners, taking no new connections, go on
        accepting before they close (0: closed at once; a server no client is connecting to).
        """
        self.draining = True
        # New requests on open connections are answered with "Connection: close" ...
        self.conn_params.no_keep_alive = True
        # ... and so are those already running, unless their headers were already sent.
        for state in self._states.values():
            if state.busy and isinstance(state.request, HTTP1Connection):
                state.request._disconnect_on_finish = True
        if handshake_grace > 0 and self.refuse_handshakes and self._refuse_handshakes():
            # Tornado's accept handlers still run: what completes now is served.
            await asyncio.sleep(max(0.0, min(handshake_grace, deadline - time.monotonic())))
        self.stop()
        idle_until = time.monotonic() + IDLE_GRACE_SECONDS
        while self._connections:
            now = time.monotonic()
            busy = any(self._in_request(c, now) for c in self._connections)
            if not busy and now >= min(idle_until, deadline):
                break
            if now >= deadline:
                return False
            await asyncio.sleep(DRAIN_POLL_SECONDS)
        # Nothing in a request: what is left is idle keep-alive connections, past their grace.
        for server_conn in list(self._connections):
            server_conn.stream.close()
        return True

    async def close_all_connections(self) -> None:
        """Close every connection (cutting what is left) and stop the header sweep.

        Every socket is closed first, then the connections' serving loops are awaited.
        Tornado's own version closes one connection and waits for its serving loop before it
        closes the next; a request whose handler is stuck before its body (a ``prepare``
        waiting on the store) ends only with its handler, so every connection after it in
        line stayed open past the caller's bound (Server.stop), and was left to the garbage
        collector."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for server_conn in list(self._connections):
            server_conn.stream.close()
        await super().close_all_connections()


class _SockFilter(ctypes.Structure):
    """``struct sock_filter`` (linux/filter.h): one classic BPF instruction."""

    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    """``struct sock_fprog``: the program handed to ``SO_ATTACH_FILTER``."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux's value
#: A TCP socket's filter sees the segment from its TCP header: byte 13 holds the flags.
_DROP_SYN = (_SockFilter * 5)(
    _SockFilter(0x30, 0, 0, 13),  # ld  byte [13]      (BPF_LD | BPF_B | BPF_ABS)
    _SockFilter(0x45, 1, 0, 0x10),  # jset ACK -> keep  (BPF_JMP | BPF_JSET | BPF_K)
    _SockFilter(0x45, 1, 0, 0x02),  # jset SYN -> drop
    _SockFilter(0x06, 0, 0, 0xFFFFFFFF),  # ret whole segment (keep)
    _SockFilter(0x06, 0, 0, 0),  # ret 0 (drop)
)
#: Drops a connection request (SYN without ACK); keeps the rest of a handshake, and every
#: segment of the connections already made (they inherit the filter).
DROP_SYN_FILTER = bytes(_SockFprog(len(_DROP_SYN), _DROP_SYN))


def _json_parse_errors(stream: Any) -> None:
    """Make ``stream`` send :data:`JSON_400` where Tornado sends its bare 400. Tornado
    writes that answer from inside its HTTP/1 parser, before any handler exists, with one
    ``stream.write`` of exactly those bytes; nothing else this server writes starts with a
    status line without headers, so the match is exact."""
    write = stream.write

    def json_write(data: bytes | memoryview) -> Any:
        bare = len(data) == len(TORNADO_BARE_400) and bytes(data) == TORNADO_BARE_400
        return write(JSON_400 if bare else data)

    stream.write = json_write


def _accept_all_then_close(sock: socket.socket) -> list[tuple[socket.socket, Any]]:
    accepted = []
    while True:
        try:
            accepted.append(sock.accept())
        except BlockingIOError:
            sock.close()
            return accepted
        except ConnectionAbortedError:
            continue  # the client gave up while queued
        except OSError:
            sock.close()
            return accepted


def _buffered(server_conn: HTTP1ServerConnection) -> int:
    """Bytes received on the connection and not yet parsed (the start of a request).

    Tornado has no public accessor: its IOStream keeps the count in ``_read_buffer_size``
    (tests/faults/test_slow_clients.py fails if that ever changes).
    """
    size: int = server_conn.stream._read_buffer_size
    return size
