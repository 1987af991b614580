"""Untrusted plugins: hooks run in worker processes with a memory cap (reliability-plan F8).

A tenant file with ``[plugin_isolation] mode = "process"`` gets an :class:`IsolatedRunner`
instead of the in-process :class:`~kyc_host.hooks.runner.HookRunner`. Its hooks run in a
small pool of worker processes (hooks/worker.py, at a lower CPU priority), one pool per tenant
version per server process, so a hook that blocks its event loop with synchronous work,
hangs, or allocates without bound stalls only its own worker, never the server's loop.

Each call takes an idle worker (at most ``workers`` calls of the tenant run at once; waiting
for one is bounded by the hook timeout), sends the hook's arguments as plain data
(hooks/wire.py) and waits at most ``limits.hook_timeout_seconds`` for the answer. Outcomes
are the in-process ones: ``HookRejected`` -> 400, anything else -> generic 500 with the detail
logged under the tenant. A worker that times out, dies, exceeds its ``RLIMIT_AS`` cap or
breaks the protocol is killed (SIGKILL) and replaced by a fresh process on the next call;
after a failure only one worker runs until a call succeeds again, and after repeated
failures in a row restarts back off (a call waits for the back-off if it
fits in its hook timeout, else fails after waiting the timeout, so a flood of retries is
paced as if the plugin still hung) and a plugin that always hangs cannot make the server
spend its CPU starting interpreters. A call that has to wait for a worker is held for a
random part (half to all) of its timeout, so that calls which queued together do not fail
together (:meth:`WorkerPool.acquire`).

The worker gets no platform secrets: a minimal environment, the tenant document (what
``ctx.config`` holds in-process) and the plugin's name. What needs the platform's handles
(``ctx.customers``, ``ctx.http``) comes back as ``rpc`` messages that this module runs with
the tenant's own in-process context, so a worker reaches nothing another tenant owns.

Workers never outlive the server: :func:`close_pools` (called by ``Server.stop``) kills and
reaps them, and each worker asks the kernel to SIGKILL it when the server process dies. Nor
their tenant version: a pool is retired when the next version builds its own
(:func:`pool_for`), or when the tenant registry drops or suspends the tenant or loads a
version that runs its plugin in-process (:func:`retire_pool`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kyc_host
from kyc_host.errors import BadRequest, ServiceUnavailable
from kyc_host.hooks import wire
from kyc_host.hooks.context import TenantContext, tenant_log
from kyc_host.hooks.contract import CustomerHooks
from kyc_host.hooks.runner import HookRunner, _public
from kyc_host.net.limits import spread
from kyc_host.net.safe_http import FetchError
from kyc_host.sep.sep12_types import Decision

log = logging.getLogger("kyc_host.hooks")

#: Starting a worker (interpreter, platform modules, the plugin's import) may take this long.
STARTUP_TIMEOUT = 20.0
#: Restart back-off after consecutive failures: none after the first, then 1 s doubling to
#: a minute. Starting an interpreter costs about a CPU-second, and a plugin that hangs on every
#: call would otherwise make the server spend that on every timeout: the noisy-neighbour
#: benchmark (tests/benchmarks/noisy_neighbour.py) showed these restarts, not the hanging
#: worker, were what slowed the other tenant.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
#: Hook errors after which the worker exits on its own (it is replaced).
FATAL = frozenset({"MemoryError", "SystemExit", "KeyboardInterrupt"})
#: A worker's CPU priority, set before it imports anything: below the server's. Workers run in
#: a session of their own, and with scheduler autogroups (Linux's default for sessions) CPU
#: time is shared between groups first: a task's nice counts only inside its group, so the
#: group's own nice (``/proc/self/autogroup``) is lowered too. With the task nice alone, two
#: workers spinning in a hung hook took the server's CPU as equals: the other tenant's p95 in
#: the noisy-neighbour benchmark went from 2.8 to 849 ms (BENCHMARKS.md).
NICENESS = 19
BOOT = f"""import os, runpy
os.nice({NICENESS})
try:
    with open("/proc/self/autogroup", "w") as autogroup:
        autogroup.write("{NICENESS}")
except OSError:
    pass  # no autogroups (or not allowed): the task nice is all there is
runpy.run_module("kyc_host.hooks.worker", run_name="__main__", alter_sys=True)
"""
#: The root of the ``kyc_host`` package, so a worker imports the very same platform code.
PACKAGE_ROOT = str(Path(kyc_host.__file__).resolve().parent.parent)


class WorkerUnavailable(Exception):
    """No worker could take the call (start failed, back-off, pool closed)."""


class PluginUnloadable(WorkerUnavailable):
    """The worker could not import or instantiate the plugin (a deployment error)."""


class WorkerDied(Exception):
    """The worker's pipe closed mid-call: it exited, crashed or was killed."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a tenant's worker processes run."""

    tenant_id: str
    plugin: str
    plugins_dir: Path
    document: Mapping[str, Any]
    memory_bytes: int
    http: bool


class WorkerProcess:
    """One worker process and its protocol pipes. Serves one call at a time."""

    def __init__(self, process: asyncio.subprocess.Process, spec: WorkerSpec) -> None:
        self.process = process
        self.spec = spec
        self.overrides: frozenset[str] = frozenset()
        self.plugin_log = tenant_log(spec.tenant_id, spec.plugin)
        self.ids = itertools.count(1)

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, spec: WorkerSpec) -> WorkerProcess:
        """Spawn, initialise and wait for ``ready``; raises WorkerUnavailable."""
        env = {"PYTHONPATH": PACKAGE_ROOT, "PATH": os.defpath, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}  # nothing of the server's own environment
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-c", BOOT, str(os.getpid()),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
                cwd="/", start_new_session=True)
        except OSError as exc:  # out of processes or descriptors
            raise WorkerUnavailable(f"cannot start a worker ({type(exc).__name__})") from None
        worker = cls(process, spec)
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                await worker.send({"op": "init", "plugin": spec.plugin,
                                   # absolute: relative to where the server started,
                                   # not to the worker's "/"
                                   "plugins_dir": str(spec.plugins_dir.absolute()),
                                   "document": spec.document,
                                   "memory_bytes": spec.memory_bytes, "http": spec.http})
                answer = await worker.receive()
            if answer.get("op") != "ready":
                raise PluginUnloadable(f"plugin could not be loaded: {answer.get('error')}")
            overrides = answer.get("overrides")
            if not isinstance(overrides, list):
                raise wire.WireError("ready without overrides")
            worker.overrides = frozenset(str(n) for n in overrides)
        except (TimeoutError, WorkerDied, wire.WireError, OSError, TypeError,
                ValueError) as exc:
            await worker.kill()
            raise WorkerUnavailable(f"worker did not start ({type(exc).__name__})") from None
        except BaseException:
            await worker.kill()
            raise
        return worker

    async def send(self, message: Mapping[str, Any]) -> None:
        stdin = self.process.stdin
        if stdin is None or stdin.is_closing():
            raise WorkerDied
        try:
            stdin.write(wire.frame(message))
            await stdin.drain()
        except (ConnectionError, BrokenPipeError):
            raise WorkerDied from None

    async def receive(self) -> dict[str, Any]:
        stdout = self.process.stdout
        if stdout is None:
            raise WorkerDied
        try:
            length = wire.parse_length(await stdout.readexactly(wire.HEADER.size))
            return wire.parse_body(await stdout.readexactly(length))
        except (asyncio.IncompleteReadError, ConnectionError):
            raise WorkerDied from None

    async def call(self, name: str, args: tuple[Any, ...],
                   rpc: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]],
                   ) -> dict[str, Any]:
        """Run hook ``name``; serves the worker's ``rpc`` and ``log`` messages meanwhile."""
        call_id = next(self.ids)
        await self.send({"op": "call", "id": call_id, "hook": name, "args": wire.encode(args)})
        while True:
            message = await self.receive()
            if message["op"] == "done" and message.get("id") == call_id:
                return message
            if message["op"] == "rpc":
                await self.send(await rpc(message))
            elif message["op"] == "log":
                self._log(message)
            else:
                raise wire.WireError(f"unexpected message {message['op']!r}")

    def _log(self, message: Mapping[str, Any]) -> None:
        level = message.get("level")
        level = level if isinstance(level, int) and 0 < level <= logging.CRITICAL else logging.INFO
        extra = message.get("extra")
        fields = ({str(k): v for k, v in extra.items() if isinstance(v, str | int | float | bool)}
                  if isinstance(extra, dict) else {})
        fields = {k: v for k, v in fields.items() if k not in _RESERVED}
        self.plugin_log.log(level, "%s", str(message.get("msg", ""))[:2000], extra=fields)

    async def kill(self) -> None:
        """SIGKILL and reap (bounded); safe to call on a dead worker."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        try:
            async with asyncio.timeout(5.0):
                await self.process.wait()
        except TimeoutError:  # pragma: no cover - SIGKILL is not ignorable
            log.error("plugin worker %d of tenant %s did not exit", self.pid,
                      self.spec.tenant_id, extra={"tenant": self.spec.tenant_id})


_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "tenant",
                                                              "request_id"}


class WorkerPool:
    """The worker processes of one tenant version in this server process."""

    def __init__(self, spec: WorkerSpec, size: int) -> None:
        self.spec = spec
        self.size = size
        self.overrides: frozenset[str] | None = None  # known once a worker has started
        self.closed = False
        self._idle: list[WorkerProcess] = []
        self._all: set[WorkerProcess] = set()
        self._slots = asyncio.Semaphore(size)
        self._failures = 0
        self._retry_at = 0.0
        self._starting = 0
        #: Notified whenever a worker is released or a start ends (see _take's probation).
        self._changed = asyncio.Condition()

    @property
    def pids(self) -> list[int]:
        """Process ids of the live workers (tests check they are gone after a stop)."""
        return [w.pid for w in self._all]

    async def acquire(self, wait: float) -> WorkerProcess:
        """An idle worker, or a new one; waits ``wait`` seconds at most for a free slot.

        A call that cannot have a worker at once is held for a random part (half to all,
        :func:`~kyc_host.net.limits.spread`) of ``wait``. Held for exactly ``wait``, a
        flood's calls that queued together failed together: the noisy-neighbour benchmark's
        64 flood connections into a hung hook were answered in one burst every 2 s, and each
        burst (their 500s and the flood's next 64 requests) held the event loop 100-200 ms,
        so the other tenant's requests of that moment waited as long (BENCHMARKS.md)."""
        if self._slots.locked() or (not self._idle and self._on_probation()):
            wait = spread(wait)
        try:
            async with asyncio.timeout(wait):
                await self._slots.acquire()
        except TimeoutError:
            raise WorkerUnavailable(
                f"all {self.size} workers stayed busy for {wait:.1f}s") from None
        try:
            return await self._take(wait)
        except BaseException:
            self._slots.release()
            raise

    async def _take(self, wait: float) -> WorkerProcess:
        if self.closed:
            raise WorkerUnavailable("the plugin's workers are shut down")
        if not self._idle and self._on_probation():
            # After a failure, one worker at a time until a call succeeds: a plugin that
            # spins must not get a CPU per slot. Wait (bounded) for that one to come back.
            try:
                async with self._changed, asyncio.timeout(wait):
                    await self._changed.wait_for(lambda: bool(self._idle)
                                                 or not self._on_probation() or self.closed)
            except TimeoutError:
                raise WorkerUnavailable("one worker at a time after a failure, and it stayed "
                                        f"busy for {wait:.1f}s") from None
            return await self._take(wait)
        if self._idle:
            return self._idle.pop()
        delay = self._retry_at - time.monotonic()
        if delay > wait:
            # Hold the call for (a random part of) its timeout, as a hanging worker would,
            # rather than fail at once: quick failures would let a client flood the server
            # with retries.
            await asyncio.sleep(spread(wait))
            raise WorkerUnavailable("worker restarts are backing off after "
                                    f"{self._failures} failures in a row")
        if delay > 0:
            await asyncio.sleep(delay)
        self._starting += 1
        try:
            worker = await WorkerProcess.start(self.spec)
        except WorkerUnavailable:
            self._count_failure()
            raise
        finally:
            self._starting -= 1
            await self._notify()
        if self._shut():  # closed while it started
            await worker.kill()
            raise WorkerUnavailable("the plugin's workers are shut down")
        self.overrides = worker.overrides
        self._all.add(worker)
        return worker

    async def release(self, worker: WorkerProcess, healthy: bool) -> None:
        """Give a worker back; an unhealthy one is killed (the next call starts another)."""
        try:
            if healthy and not self.closed:
                self._failures = 0
                self._idle.append(worker)
                return
            self._all.discard(worker)
            if not healthy:
                self._count_failure()
            await worker.kill()
        finally:
            self._slots.release()
            await self._notify()

    def _on_probation(self) -> bool:
        return self._failures > 0 and (bool(self._all) or self._starting > 0)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _shut(self) -> bool:
        return self.closed

    def _count_failure(self) -> None:
        self._failures += 1
        if self._failures > 1:
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (self._failures - 2))
            self._retry_at = time.monotonic() + delay

    async def retire(self) -> None:
        """The tenant version is gone (replaced, suspended, offboarded): stop idle workers;
        busy ones end on release, so a hook call in flight still gets its answer."""
        self.closed = True
        idle, self._idle = self._idle, []
        for worker in idle:
            self._all.discard(worker)
        await asyncio.gather(*(w.kill() for w in idle))
        await self._notify()

    async def close(self) -> None:
        """Kill and reap every worker, busy or not (server stop)."""
        self.closed = True
        workers, self._idle = list(self._all), []
        self._all.clear()
        await asyncio.gather(*(w.kill() for w in workers))
        await self._notify()


class IsolatedRunner(HookRunner):
    """Runs an untrusted tenant's hooks in its :class:`WorkerPool`.

    ``hooks`` is the platform's default :class:`CustomerHooks`: the plugin's own code is
    never imported into the server. Until the first worker has reported which hooks the
    plugin overrides, every hook is sent to a worker (which runs the default if need be).
    """

    def __init__(self, ctx: TenantContext, timeout: float, pool: WorkerPool) -> None:
        super().__init__(CustomerHooks(), ctx, timeout)
        self.pool = pool

    def overrides(self, name: str) -> bool:
        known = self.pool.overrides
        return True if known is None else name in known

    async def _invoke(self, name: str, *args: Any) -> Any:
        try:
            worker = await self.pool.acquire(self.timeout)
        except PluginUnloadable as exc:
            # As for an in-process plugin that cannot be loaded (sep/sep12_tenant.py): 503.
            log.error("tenant %s: %s", self.ctx.tenant_id, exc,
                      extra={"tenant": self.ctx.tenant_id})
            raise ServiceUnavailable("the KYC service of this anchor is unavailable",
                                     log_detail=str(exc)) from None
        except WorkerUnavailable as exc:
            raise self._failed(name, f"found no worker: {exc}") from None
        reply: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(self.timeout):
                reply = await worker.call(name, args, self._rpc)
        except TimeoutError:
            raise self._failed(name, f"timed out after {self.timeout:g}s "
                                     f"(worker {worker.pid} killed)", timeout=True) from None
        except WorkerDied:
            raise self._failed(name, f"ended its worker process {worker.pid} "
                                     f"(exit code {worker.process.returncode})") from None
        except wire.WireError as exc:
            raise self._failed(name, f"broke the worker protocol ({exc})") from None
        finally:
            # No answer (timeout, cancelled request, dead or rogue worker) or a fatal hook
            # error (the worker exits after MemoryError/SystemExit): kill it; the next
            # call starts a fresh one.
            healthy = reply is not None and reply.get("raised") not in FATAL
            await self.pool.release(worker, healthy)
        return self._outcome(name, reply)

    def _outcome(self, name: str, reply: Mapping[str, Any]) -> Any:
        if "rejected" in reply:
            raise BadRequest(_public(reply["rejected"]), log_detail=f"hook {name} rejected")
        if "raised" in reply:
            raise self._failed(name, f"raised {str(reply['raised'])[:100]} in its worker")
        if "invalid" in reply or "value" not in reply:
            raise self._failed(name, "returned a value that cannot cross the process boundary")
        try:
            return wire.decode(reply["value"])
        except wire.WireError as exc:
            raise self._failed(name, f"returned an invalid value ({exc})") from None

    async def _rpc(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """Run a worker's request against this tenant's own context (never another's)."""
        answer: dict[str, Any] = {"op": "reply", "id": message.get("id")}
        method = message.get("method")
        try:
            args = wire.decode(message.get("args"))
            if not isinstance(args, tuple):
                raise wire.WireError("arguments must be a tuple")
            answer["value"] = wire.encode(await self._dispatch(str(method), args))
        except FetchError as exc:
            answer["fetch_error"] = str(exc)
        except (wire.WireError, TypeError, ValueError) as exc:
            answer["error"] = f"bad request to {method}: {type(exc).__name__}"
        except Exception as exc:  # e.g. the store is down: the plugin decides, as in-process
            log.warning("plugin worker request %s of tenant %s failed", method,
                        self.ctx.tenant_id, exc_info=exc, extra={"tenant": self.ctx.tenant_id})
            answer["error"] = f"{method} failed: {type(exc).__name__}"
        return answer

    async def _dispatch(self, method: str, args: tuple[Any, ...]) -> Any:
        customers = self.ctx.customers
        if method == "customers.get" and _types(args, str):
            return await customers.get(args[0])
        if method == "customers.file_contents" and _types(args, str):
            return await customers.file_contents(args[0])
        if method == "customers.set_decision" and _types(args, str, str, Decision | None):
            if args[2] is not None:
                args[2].check()  # the same rules as a Decision returned from put
            return await customers.set_decision(*args)
        if method == "http.fetch" and self.ctx.http is not None and _types(
                args, str, str, bytes | None, dict, int, int | float):
            url, verb, body, headers, max_bytes, timeout = args
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
                raise TypeError("headers must be strings")
            response = await self.ctx.http.fetch(url, method=verb, body=body, headers=headers,
                                                 max_bytes=max_bytes, timeout=timeout)
            return (response.url, response.status, dict(response.headers), response.body)
        raise wire.WireError(f"unknown method {method!r} or bad arguments")



def _types(args: tuple[Any, ...], *kinds: Any) -> bool:
    return len(args) == len(kinds) and all(isinstance(a, k) for a, k in zip(args, kinds,
                                                                              strict=True))


# --- pools of each server process ----------------------------------------------------

#: Pools by owner (the Store of one server's Services) and tenant id.
_pools: dict[int, dict[str, WorkerPool]] = {}


def pool_for(owner: object, spec: WorkerSpec, size: int) -> WorkerPool:
    """A new pool for a tenant version; the previous version's pool is retired."""
    pool = WorkerPool(spec, size)
    pools = _pools.setdefault(id(owner), {})
    previous = pools.get(spec.tenant_id)
    pools[spec.tenant_id] = pool
    if previous is not None:
        _retire(previous)
    return pool


def retire_pool(owner: object, tenant_id: str) -> None:
    """Retire the tenant's pool, if it has one, as :func:`pool_for` retires a replaced one:
    the tenant was offboarded or suspended, or its new version runs its plugin in-process
    (tenancy/registry.py), so no new version will take the pool over."""
    previous = _pools.get(id(owner), {}).pop(tenant_id, None)
    if previous is not None:
        _retire(previous)


def _retire(pool: WorkerPool) -> None:
    try:
        _background(pool.retire)
    except RuntimeError:  # no event loop (a synchronous caller): nothing runs yet
        pool.closed = True


def pools_of(owner: object) -> list[WorkerPool]:
    return list(_pools.get(id(owner), {}).values())


async def close_pools(owner: object) -> None:
    """Kill and reap every plugin worker of a server (``Server.stop``)."""
    pools = _pools.pop(id(owner), {})
    await asyncio.gather(*(pool.close() for pool in pools.values()))


_tasks: set[asyncio.Task[None]] = set()


def _background(work: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()  # RuntimeError without one

    async def run() -> None:
        await work()

    task = loop.create_task(run())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
