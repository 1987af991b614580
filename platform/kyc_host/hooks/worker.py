"""The worker process of an untrusted plugin, started as ``python -c BOOT <parent pid>``.

``BOOT`` (hooks/isolation.py) lowers the process's CPU priority before anything is imported
(a plugin spinning on CPU, or a worker starting up, then gets only what the server leaves
idle) and runs this module as ``__main__``.

Started by hooks/isolation.py with a minimal environment (no platform secrets), it speaks
framed JSON (hooks/wire.py) on its stdin/stdout, which it moves to private descriptors first
so a plugin's ``print`` goes to stderr instead of corrupting the protocol.

1. It arranges to be killed when the server process dies (Linux ``PR_SET_PDEATHSIG``), so a
   worker never outlives the server even after ``kill -9``, and enters a network namespace
   of its own with no usable interface (hooks/confine.py): no egress, not even to the store.
2. It reads ``init`` (plugin name, plugins directory, the tenant document, memory cap), caps
   its own address space (``RLIMIT_AS``), Landlocks its filesystem view to Python and the
   plugins directory (hooks/confine.py: no settings, keys, store files or ``/proc``), imports
   the plugin and answers ``ready`` with the hooks the plugin overrides, or ``failed``. A
   confinement step the kernel refuses is reported right after ``ready`` as a warning
   ``log`` line (the platform logs it under the tenant at the first call).
3. It then runs ``call`` messages, one at a time (the platform never sends a second before the
   first is answered), and answers ``done``. The plugin's context is the in-process one minus
   everything it could not hold here: ``ctx.customers`` and ``ctx.http`` are forwarded to the
   platform as ``rpc`` messages (the platform runs them for this tenant only), and
   ``ctx.log`` lines are sent as ``log`` messages.

A ``MemoryError`` or a ``SystemExit`` from a hook is reported and the process exits; the
platform replaces it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import resource
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kyc_host.hooks import confine, wire
from kyc_host.hooks.context import CustomersView, TenantContext, TenantHttp, TenantLog
from kyc_host.hooks.contract import CustomerData, CustomerHooks, HookRejected
from kyc_host.hooks.loader import PluginError, load_plugin_class
from kyc_host.net.safe_http import DEFAULT_MAX_BYTES, MAX_TIMEOUT, FetchError, SafeResponse
from kyc_host.procs import die_with_parent
from kyc_host.sep.sep12_types import Decision
from kyc_host.tenancy.schema import parse_tenant

HOOK_NAMES = ("get", "put", "delete", "callback", "verification_fields", "send_verification",
              "check_verification")
#: Log record attributes a forwarded ``extra`` key may not overwrite.
RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class Channel:
    """Framed messages over the protocol pipes; replies to ``rpc`` requests by id."""

    def __init__(self, reader: asyncio.StreamReader, out_fd: int) -> None:
        self.reader = reader
        self.out_fd = out_fd
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count(1)

    def send(self, message: Mapping[str, Any]) -> None:
        # Blocking writes are fine here: the platform reads while a call is open.
        data = memoryview(wire.frame(message))
        while data:
            data = data[os.write(self.out_fd, data):]

    async def receive(self) -> dict[str, Any] | None:
        try:
            header = await self.reader.readexactly(wire.HEADER.size)
            body = await self.reader.readexactly(wire.parse_length(header, 1 << 30))
        except asyncio.IncompleteReadError:
            return None  # the platform closed the pipe: time to go
        return wire.parse_body(body)

    async def rpc(self, method: str, *args: Any) -> Any:
        """Ask the platform to run ``method`` for this tenant; raises what it reports."""
        call_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        self.send({"op": "rpc", "id": call_id, "method": method,
                   "args": wire.encode(tuple(args))})
        reply = await future
        if "fetch_error" in reply:  # the SSRF-safe client's own, safe-to-show message
            raise FetchError(str(reply["fetch_error"]))
        if "error" in reply:
            raise RuntimeError(f"platform refused {method}: {reply['error']}")
        return wire.decode(reply.get("value"))


class RemoteCustomers(CustomersView):
    """``ctx.customers`` in a worker: each call is run by the platform for this tenant."""

    def __init__(self, channel: Channel) -> None:  # no repositories here, by design
        self._channel = channel

    async def get(self, customer_id: str) -> CustomerData | None:
        found = await self._channel.rpc("customers.get", customer_id)
        return found if isinstance(found, CustomerData) else None

    async def set_decision(self, customer_id: str, type_name: str,
                           decision: Decision | None) -> bool:
        return bool(await self._channel.rpc("customers.set_decision", customer_id, type_name,
                                            decision))

    async def file_contents(self, file_id: str) -> bytes | None:
        data = await self._channel.rpc("customers.file_contents", file_id)
        return data if isinstance(data, bytes) else None


class RemoteHttp(TenantHttp):
    """``ctx.http`` in a worker: the platform's SSRF-safe client makes the request."""

    def __init__(self, channel: Channel) -> None:  # no client here: egress goes via the platform
        self._channel = channel

    async def fetch(self, url: str, *, method: str = "GET", body: bytes | None = None,
                    headers: Mapping[str, str] | None = None,
                    max_bytes: int = DEFAULT_MAX_BYTES,
                    timeout: float = MAX_TIMEOUT) -> SafeResponse:  # noqa: ASYNC109
        answer = await self._channel.rpc("http.fetch", url, method, body, dict(headers or {}),
                                         max_bytes, timeout)
        final_url, status, reply_headers, content = answer
        return SafeResponse(str(final_url), int(status), dict(reply_headers), bytes(content))


class ForwardLogs(logging.Handler):
    """Sends the plugin's log lines to the platform, which logs them under the tenant."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self.channel = channel

    def emit(self, record: logging.LogRecord) -> None:
        extra = {k: v for k, v in record.__dict__.items()
                 if k not in RESERVED and k != "tenant"
                 and (v is None or isinstance(v, str | int | float | bool))}
        try:
            self.channel.send({"op": "log", "level": record.levelno,
                               "msg": record.getMessage()[:2000], "extra": extra})
        except Exception:  # a log line must never fail a hook
            self.handleError(record)


def private_pipes() -> tuple[int, int]:
    """Move the protocol off fds 0/1; the plugin's stdout goes to stderr, stdin is empty."""
    in_fd, out_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    os.close(devnull)
    return in_fd, out_fd


class Worker:
    def __init__(self, channel: Channel, unconfined: list[str] | None = None) -> None:
        self.channel = channel
        self.hooks = CustomerHooks()
        self.ctx: TenantContext | None = None
        #: Confinement steps the kernel refused (reported to the platform after ``ready``).
        self.unconfined = unconfined if unconfined is not None else []

    def start(self, init: Mapping[str, Any]) -> None:
        """Cap memory, confine the filesystem, import the plugin and build its context;
        raises PluginError."""
        limit = int(init["memory_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        config = parse_tenant(init["document"], "tenant (plugin worker)")
        plugin = str(init["plugin"])
        plugins_dir = Path(init["plugins_dir"])
        try:  # before the plugin's code runs, including its module body
            confine.restrict_filesystem(plugins_dir)
        except OSError as exc:  # ConfinementError, or a root that vanished meanwhile
            self.unconfined.append(f"filesystem not restricted ({exc.strerror or exc})")
        self.hooks = load_plugin_class(plugin, plugins_dir)()
        logger = logging.getLogger(f"kyc_host.plugins.{plugin}")
        logger.addHandler(ForwardLogs(self.channel))
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        http = RemoteHttp(self.channel) if init.get("http") else None
        self.ctx = TenantContext(config.id, config, RemoteCustomers(self.channel),
                                 TenantLog(logger, {"tenant": config.id}), http)

    def report_unconfined(self) -> None:
        for problem in self.unconfined:
            self.channel.send({"op": "log", "level": logging.WARNING, "extra": {},
                               "msg": f"plugin worker {os.getpid()} runs with weaker "
                                      f"isolation: {problem}"})

    def overridden(self) -> list[str]:
        return [n for n in HOOK_NAMES
                if getattr(type(self.hooks), n) is not getattr(CustomerHooks, n)]

    async def serve(self) -> None:
        calls: set[asyncio.Task[None]] = set()
        while (message := await self.channel.receive()) is not None:
            if message["op"] == "call":
                task = asyncio.create_task(self.run_call(message))
                calls.add(task)
                task.add_done_callback(calls.discard)
            elif message["op"] == "reply":
                future = self.channel.pending.pop(int(message["id"]), None)
                if future is not None and not future.done():
                    future.set_result(message)

    async def run_call(self, message: Mapping[str, Any]) -> None:
        name = str(message["hook"])
        reply: dict[str, Any] = {"op": "done", "id": message["id"]}
        fatal = False
        try:
            if name not in HOOK_NAMES:
                raise LookupError(name)
            args = wire.decode(message["args"])
            result = await getattr(self.hooks, name)(self.ctx, *args)
            reply["value"] = wire.encode(result)
        except HookRejected as exc:
            reply["rejected"] = exc.message if isinstance(exc.message, str) else None
        except wire.WireError:
            reply["invalid"] = "a value that cannot cross the process boundary"
        except (MemoryError, SystemExit, KeyboardInterrupt) as exc:
            reply["raised"], fatal = type(exc).__name__, True
        except BaseException as exc:  # reported by type only, never its text
            reply["raised"] = type(exc).__name__
        try:
            self.channel.send(reply)
        except (ValueError, MemoryError):  # NaN in a result, or no memory left to encode it
            self.channel.send({"op": "done", "id": message["id"], "raised": "MemoryError"})
            fatal = True
        if fatal:
            os._exit(1)


async def run(in_fd: int, out_fd: int, unconfined: list[str]) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=wire.MAX_MESSAGE_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 os.fdopen(in_fd, "rb", buffering=0))
    channel = Channel(reader, out_fd)
    init = await channel.receive()
    if init is None or init.get("op") != "init":
        return 2
    worker = Worker(channel, unconfined)
    try:
        worker.start(init)
    except (PluginError, MemoryError, Exception) as exc:
        detail = str(exc) if isinstance(exc, PluginError) else type(exc).__name__
        channel.send({"op": "failed", "error": detail[:2000]})
        return 1
    channel.send({"op": "ready", "overrides": worker.overridden()})
    worker.report_unconfined()  # after ready: the platform reads only ``ready`` first
    await worker.serve()
    return 0


def main(argv: list[str]) -> int:
    die_with_parent(int(argv[1]))
    unconfined: list[str] = []
    try:  # now, while the process has one thread (asyncio may start others)
        confine.isolate_network()
    except OSError as exc:  # ConfinementError, or the uid/gid maps could not be written
        unconfined.append(f"network not isolated ({exc.strerror or exc})")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server decides when we stop
    in_fd, out_fd = private_pipes()
    return asyncio.run(run(in_fd, out_fd, unconfined))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
