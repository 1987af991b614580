"""A Horizon stand-in for the benchmarks: ``GET /accounts/<id>`` answers 404 (account not found)
at once, as the real Horizon does for a fresh wallet, so SEP-10 takes the master-key path.

Run: ``python horizon_stub.py PORT`` (binds 127.0.0.1 only). Serves until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from tornado.web import Application, RequestHandler

NOT_FOUND = (b'{"type":"https://stellar.org/horizon-errors/not_found","title":"Resource Missing",'
             b'"status":404,"detail":"The resource at the url requested was not found."}')


class AccountHandler(RequestHandler):
    def get(self, account_id: str) -> None:
        self.set_status(404)
        self.set_header("Content-Type", "application/problem+json; charset=utf-8")
        self.finish(NOT_FOUND)


async def main(port: int) -> None:
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
    asyncio.run(main(int(sys.argv[1])))
