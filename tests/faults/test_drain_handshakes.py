"""web/serving.py ``ServingHTTPServer.drain`` (F9: 0 client-visible resets for requests that
began before SIGTERM): closing a listener must not reset a connection whose client saw its
connect succeed.

Closing a listening socket makes the kernel reset the connections it completed that the
server has not accepted, and the handshakes still under way. The drain used to accept the
backlog and close the socket right after the accept that found it empty; a handshake that
completed in between was reset, after its client had sent its request. CI saw it once
(``test_shutdown_under_load``: a GET sent 1 ms after SIGTERM, "Connection reset by peer").
With 24 clients connecting in a loop, 100 drains of the old code reset 3 connections over one
listener and 5 over four; the first test below, at 40 drains, failed 3 runs in 5 against it.
The second test fails against it every time (its connect completes, then is refused).

Now the drain first makes its listeners drop connection requests, goes on accepting for
``HANDSHAKE_GRACE_SECONDS``, and closes them after that. Real ``ServingHTTPServer``\\ s on real
sockets, with a one-route application; the clients are plain blocking sockets in threads, so
they connect while the server's loop is busy draining.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler

from kyc_host.web.serving import ServingHTTPServer

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the listener filter is Linux's SO_ATTACH_FILTER")

ROUNDS = 40
LISTENERS = 4  # one port, SO_REUSEPORT, as with serve --workers: a close race on each
CLIENTS = 24
LOAD_SECONDS = 0.05  # of steady connecting before each drain
REQUEST = b"GET /ping HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
#: Asks to keep the connection: only a draining server answers it with "Connection: close".
GRACE = 2.0  # the handshake grace of the step-by-step test
KEEP_ALIVE_REQUEST = b"GET /ping HTTP/1.1\r\nHost: a.test\r\n\r\n"


class Ping(RequestHandler):
    def get(self) -> None:
        self.write("pong")


def _server() -> tuple[ServingHTTPServer, int, str]:
    server = ServingHTTPServer(Application([("/ping", Ping)]), idle_connection_timeout=60,
                               header_timeout=60)
    sockets = bind_sockets(0, "127.0.0.1", reuse_port=True)
    port = sockets[0].getsockname()[1]
    for _ in range(LISTENERS - 1):
        sockets += bind_sockets(port, "127.0.0.1", reuse_port=True)
    server.add_sockets(sockets)
    return server, port, "127.0.0.1"


@dataclass
class Tally:
    """What the clients' connections got: answered (200), refused (the connect failed) or
    cut (connected, then a reset or a close before a whole answer)."""

    kinds: Counter[str] = field(default_factory=Counter)
    cuts: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    refused: threading.Event = field(default_factory=threading.Event)

    def add(self, kind: str, detail: str = "") -> None:
        with self.lock:
            self.kinds[kind] += 1
            if kind == "cut":
                self.cuts.append(detail)
            elif kind == "refused":
                self.refused.set()


def _one_request(host: str, port: int, connect_timeout: float) -> tuple[str, str]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(connect_timeout)
        try:
            sock.connect((host, port))
        except OSError as exc:
            return "refused", type(exc).__name__
        sock.settimeout(10)
        try:
            sock.sendall(REQUEST)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            return "cut", f"{type(exc).__name__}: {exc}"
        if data.startswith(b"HTTP/1.1 200") and data.endswith(b"pong"):
            return "answered", ""
        return "cut", repr(data[:80])


def _connect_in_a_loop(host: str, port: int, stop: threading.Event, tally: Tally) -> None:
    while not stop.is_set():
        # A connect the filter leaves unanswered counts as refused: it never opened.
        kind, detail = _one_request(host, port, connect_timeout=0.3)
        tally.add(kind, detail)
        if kind == "refused":
            time.sleep(0.005)


async def test_a_drain_resets_no_connection_whose_client_saw_it_open() -> None:
    total = Tally()
    answered_while_draining = 0
    for _ in range(ROUNDS):
        server, port, host = _server()
        tally, stop = Tally(), threading.Event()
        threads = [threading.Thread(target=_connect_in_a_loop, args=(host, port, stop, tally))
                   for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            await asyncio.sleep(LOAD_SECONDS)
            before = tally.kinds["answered"]
            assert await server.drain(time.monotonic() + 10)
            answered_while_draining += tally.kinds["answered"] - before
            # The listeners are closed: connects fail at once.
            await asyncio.to_thread(tally.refused.wait, 5)
        finally:
            stop.set()
            await asyncio.to_thread(_join, threads)
            await server.close_all_connections()
        total.kinds.update(tally.kinds)
        total.cuts += tally.cuts
    assert total.cuts == [], f"{len(total.cuts)} connections cut: {total.cuts[:5]} {total.kinds}"
    assert total.kinds["answered"] >= ROUNDS, total.kinds
    assert total.kinds["refused"] >= ROUNDS, total.kinds  # after each drain, connects fail
    assert answered_while_draining > 0  # connections the drain accepted were served


async def test_while_draining_connection_requests_get_no_answer_and_queued_ones_are_served(
        ) -> None:
    """The observable steps: connections the kernel completed before the drain (the loop was
    busy, nothing accepted them) are served, each with ``Connection: close``; a connect
    during the drain gets no answer (its SYN is dropped), where it used to complete and be
    reset at the close; after the drain a connect is refused. A connection opened before the
    drain still works through it (the filter keeps the segments of made connections)."""
    server, port, host = _server()
    queued: list[socket.socket] = []
    try:
        # Opened, and its request sent, with the loop held here: nothing accepts them yet.
        for _ in range(5):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(KEEP_ALIVE_REQUEST)
            queued.append(sock)
        # A long grace here, so that a stall of this loop cannot make the connect below
        # come after it (the listeners then closed: refused at once).
        drain = asyncio.ensure_future(server.drain(time.monotonic() + 10, handshake_grace=GRACE))
        await asyncio.sleep(0.05)
        assert not drain.done()
        kind, detail = await asyncio.to_thread(_one_request, host, port,
                                               GRACE / 4)
        assert (kind, detail) == ("refused", "TimeoutError")  # no SYN-ACK: not opened at all
        answers = await asyncio.to_thread(lambda: [_read_all(s) for s in queued])
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 200"), answer
            assert b"\r\nConnection: close\r\n" in answer
            assert answer.endswith(b"pong")
        assert await asyncio.wait_for(drain, 10)
        assert await asyncio.to_thread(_one_request, host, port, 5) == (
            "refused", "ConnectionRefusedError")
    finally:
        for sock in queued:
            sock.close()
        await server.close_all_connections()


def _join(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.join()


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data
