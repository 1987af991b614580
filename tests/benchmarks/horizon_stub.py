"""A Horizon stand-in for the benchmarks: ``GET /accounts/<id>`` answers 404 (account not found),
as the real Horizon does for a fresh wallet, so SEP-10 takes the master-key path.

Run: ``python horizon_stub.py PORT [DELAY_SECONDS]`` (binds 127.0.0.1 only). Serves until
SIGTERM. Without a delay it answers at once; reliability-plan L1-L3 want Horizon at 50 ms
(``0.05``), which the stub waits without blocking, so concurrent lookups overlap as they do
against a real Horizon.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from tornado.web import Application, RequestHandler

NOT_FOUND = (b'{"type":"https://stellar.org/horizon-errors/not_found","title":"Resource Missing",'
             b'"status":404,"detail":"The resource at the url requested was not found."}')


class AccountHandler(RequestHandler):
    delay = 0.0

    async def get(self, account_id: str) -> None:
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        self.set_status(404)
        self.set_header("Content-Type", "application/problem+json; charset=utf-8")
        self.finish(NOT_FOUND)


async def main(port: int, delay: float = 0.0) -> None:
    AccountHandler.delay = delay
    app = Application([(r"/accounts/([A-Z0-9]+)", AccountHandler)],
                      log_function=lambda _handler: None)
    server = app.listen(port, "127.0.0.1")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 0.0))
