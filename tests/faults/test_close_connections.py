"""web/serving.py ``ServingHTTPServer.close_all_connections`` (the last step of Server.stop
for each listener, F9): every connection is closed at once, including those queued behind a
request whose handler never gets past ``prepare``.

Tornado's own version closes one connection, then waits for its serving loop before it
closes the next. A request with a streamed body whose ``prepare`` is stuck (every SEP
handler streams its body, and ``prepare`` may wait on the store) keeps its serving loop
going until the handler ends, so the connections after it stayed open past Server.stop's
bound, were dropped with the loop, and their sockets were left to the garbage collector.

Server.stop bounds that step (``app._bounded``); a bound built on cancelling the step did not
hold, since a cancelled serving loop returns quietly and the close went on to the next one.

A real ``ServingHTTPServer`` on a real socket, with a two-line application whose handler's
``prepare`` waits for an event the test sets only at the end; five such requests and five
idle connections. With a one-by-one close, all five idle ones are closed only if the
connection set happens to yield them before every stuck one (1 in 252).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
from tornado.netutil import bind_sockets
from tornado.web import Application, RequestHandler, stream_request_body

from faults.raw_http import request_bytes, wait_closed
from kyc_host.app import _bounded
from kyc_host.web.serving import ServingHTTPServer

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]

STUCK = IDLE = 5


@stream_request_body
class StuckInPrepare(RequestHandler):
    async def prepare(self) -> None:
        self.settings["in_prepare"].append(self)
        await self.settings["release"].wait()

    def data_received(self, chunk: bytes) -> None:
        pass

    def put(self) -> None:
        self.write("done")


async def _until(check: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"not reached: {what}")


@contextlib.asynccontextmanager
async def stuck_and_idle() -> AsyncIterator[tuple[ServingHTTPServer, list[Stream]]]:
    """A server with STUCK requests stuck in ``prepare`` and IDLE idle connections; at the
    end the stuck handlers are let go, and everything is closed."""
    release = asyncio.Event()
    in_prepare: list[RequestHandler] = []
    server = ServingHTTPServer(Application([("/stuck", StuckInPrepare)], release=release,
                                           in_prepare=in_prepare),
                               idle_connection_timeout=60, header_timeout=60)
    sockets = bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    head, _ = request_bytes("PUT", "/stuck", "a.test", {"Content-Length": "10"})
    clients: list[Stream] = []
    try:
        for n in range(STUCK + IDLE):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            clients.append((reader, writer))
            if n < STUCK:
                writer.write(head)  # the headers; the body never comes
        await _until(lambda: len(in_prepare) == STUCK
                     and len(server._connections) == STUCK + IDLE,
                     "every request stuck in prepare, every connection accepted")
        yield server, clients
    finally:
        release.set()  # the stuck handlers end, and so do their serving loops
        await asyncio.wait_for(server.close_all_connections(), 5)
        server.stop()
        for _, writer in clients:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for _, w in clients), return_exceptions=True)


async def test_every_connection_is_closed_though_requests_are_stuck_in_prepare() -> None:
    async with stuck_and_idle() as (server, clients):
        closing = asyncio.ensure_future(server.close_all_connections())
        # Every connection, stuck or idle, is closed by the server ...
        closed = await asyncio.gather(*(wait_closed(reader, 5.0) for reader, _ in clients))
        assert closed == [True] * (STUCK + IDLE)
        # ... while the close still waits for the stuck requests' serving loops.
        assert not closing.done()
        closing.cancel()


async def test_server_stop_goes_on_at_its_bound_though_requests_are_stuck(
        caplog: pytest.LogCaptureFixture) -> None:
    """Server.stop bounds each step with app._bounded; cancelling the close of connections
    does not end it (a cancelled serving loop returns quietly, and the close goes on to the
    next stuck one), so the bound must not rest on the cancellation."""
    async with stuck_and_idle() as (server, clients):
        started = time.monotonic()
        bounded = asyncio.ensure_future(
            _bounded(server.close_all_connections(), started + 0.5, "closing connections"))
        # (not wait_for: cancelling a step that swallows cancellation does not end it)
        await asyncio.wait({bounded}, timeout=10)  # the bound is 0.5 s; 10 is a safety margin
        assert bounded.done(), "the close of connections went on past its bound"
        assert "closing connections did not finish within 0.5 s" in caplog.text
        assert await asyncio.gather(*(wait_closed(r, 5.0) for r, _ in clients)) == \
            [True] * (STUCK + IDLE)
