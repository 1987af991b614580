"""Start-up as a short list of steps, the two Tornado applications, and graceful shutdown.

``serve`` runs: logging -> master key -> store -> tenant files -> registry -> listeners, and
fails fast with one clear line when a step cannot complete. On SIGTERM or SIGINT it stops
accepting connections, lets in-flight requests finish (bounded by
``shutdown_timeout_seconds``) and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client.multiprocess import mark_process_dead
from tornado.httputil import split_host_and_port
from tornado.netutil import Resolver, bind_sockets
from tornado.web import Application

from kyc_host import memory
from kyc_host.callbacks.worker import CallbackWorker
from kyc_host.crypto.master import KeyProvider, load_key_provider
from kyc_host.errors import ListenError
from kyc_host.hooks.isolation import close_pools
from kyc_host.looplag import LoopLagProbe
from kyc_host.net import SafeHttpClient
from kyc_host.procs import die_with_parent
from kyc_host.ratelimit.budget import UploadBudget
from kyc_host.retention.purge import PurgeLoop
from kyc_host.services import Services
from kyc_host.settings import Listen, PlatformSettings
from kyc_host.store import open_store
from kyc_host.store.base import Store, StoreUnavailable
from kyc_host.tenancy.registry import TenantRegistry
from kyc_host.tenancy.service import TenantService, read_tenant_files
from kyc_host.web.base import AdminNotFoundHandler, NotFoundHandler, log_request
from kyc_host.web.routes import admin_routes, public_routes
from kyc_host.web.serving import HANDSHAKE_GRACE_SECONDS, ServingHTTPServer
from kyc_host.web.turns import LoopTurns, TurnTakingLoop

log = logging.getLogger(__name__)
#: Shutdown steps after the drain share this many seconds past the drain's deadline; one
#: that has not finished when they are up is abandoned (logged). Each gets at least
#: MIN_STEP_SECONDS. With the default 20 s grace a stop ends within about 23 s (F9: 25 s).
STEP_BUDGET_SECONDS = 3.0
MIN_STEP_SECONDS = 0.5

#: Tornado's own cap on a request body; each tenant's lower limits are enforced by handlers
#: (Tornado answers a bare 400 above this cap, so keep it above every tenant limit).
MAX_BODY_BYTES = 512 * 1024 * 1024


# --- start-up steps ---


def init_keys(settings: PlatformSettings, environ: Mapping[str, str] | None) -> KeyProvider:
    return load_key_provider(settings.master_key_file, settings.master_key_env,
                             dev_mode=settings.dev_mode, environ=environ)


async def init_store(settings: PlatformSettings, store: Store | None = None) -> Store:
    """Start ``store`` (default: the one ``settings.storage_url`` names)."""
    store = open_store(settings.storage_url) if store is None else store
    try:
        await store.start()
    except StoreUnavailable as exc:
        await store.close()
        # Name the store (never its password) so the one-line start-up error is actionable.
        raise StoreUnavailable(f"{redact_url(settings.storage_url)}: {exc}") from None
    return store


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (safe for logs and error lines)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


async def init_tenant_files(settings: PlatformSettings, tenants: TenantService) -> None:
    if not settings.tenants_dir.is_dir():
        log.warning("tenants directory %s not found; serving tenants from the store only",
                    settings.tenants_dir)
        return
    docs = read_tenant_files(settings.tenants_dir)
    for result in await tenants.apply(docs):
        log.info("tenant %s: %s", result.tenant_id, result.action)


async def build_services(
    settings: PlatformSettings,
    *,
    environ: Mapping[str, str] | None = None,
    apply_tenant_files: bool = True,
    resolver: Resolver | None = None,
    store: Store | None = None,
) -> Services:
    """Run the start-up steps; raises ConfigError or StoreUnavailable with a clear message.

    ``resolver`` replaces the system's name resolution under the outbound address check
    (tests: a scripted DNS); the check itself (net/addresses.py) is not optional.
    ``store``: an opened, not yet started store to use instead of the one
    ``settings.storage_url`` names (tests attach an observer: a statement trace, a command
    listener).
    """
    import os

    env = os.environ if environ is None else environ
    keys = init_keys(settings, env)
    store = await init_store(settings, store)
    try:
        tenants = TenantService(store, keys, env)
        if apply_tenant_files:
            await init_tenant_files(settings, tenants)
        registry = TenantRegistry(tenants, keys, settings)
        await registry.refresh()
    except BaseException:
        await store.close()
        raise
    services = Services(settings=settings, store=store, keys=keys, tenants=tenants,
                        registry=registry, http=SafeHttpClient(
                            dev_mode=settings.dev_mode, resolver=resolver,
                            static_hosts={name: (ip, port)
                                          for name, ip, port in settings.dev_static_hosts}))
    services.upload_budget = UploadBudget(settings.upload_bytes_in_flight)
    waited = services.metrics.busy_tenant_turns
    services.turns = LoopTurns(settings.busy_tenant_requests,
                               on_wait=lambda tenant_id: waited.labels(tenant_id).inc(),
                               loop_orders_steps=isinstance(asyncio.get_running_loop(),
                                                            TurnTakingLoop))
    return services


# --- applications ---


def make_public_app(services: Services) -> Application:
    return Application(
        public_routes(),
        services=services,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,
    )


def make_admin_app(services: Services) -> Application:
    return Application(
        admin_routes(),
        services=services,
        default_handler_class=AdminNotFoundHandler,
        log_function=log_request,
    )


@dataclass
class Server:
    """Both listeners of one process, started on already-bound sockets."""

    services: Services
    http_servers: list[ServingHTTPServer] = field(default_factory=list)
    #: Delivers SEP-12 callbacks and tenant webhooks (one per process).
    callbacks: CallbackWorker | None = None
    #: Shreds erased customers whose retention period is over (one per process).
    purge: PurgeLoop | None = None
    #: Measures event-loop stalls into /metrics (looplag.py; one per process).
    loop_lag: LoopLagProbe | None = None

    def _turn_for(self, host: str) -> Awaitable[None] | None:
        """What a request to ``host`` waits for before it is routed (web/turns.py)."""
        registry = self.services.registry
        tenant = registry.for_host(split_host_and_port(host.lower())[0])
        if tenant is None or not registry.serves(tenant.id):
            return None
        self.services.turns.mark(tenant.id)  # the connection works for it from here on
        return self.services.turns.turn(tenant.id)

    def start(self, public: list[socket.socket], admin: list[socket.socket], *,
              shared: bool = False) -> None:
        """Serve on these listening sockets; ``shared``: other processes hold them too."""
        for app, sockets in ((make_public_app(self.services), public),
                             (make_admin_app(self.services), admin)):
            settings = self.services.settings
            # Slow clients are cut by these timers (web/serving.py maps each to Tornado's).
            server = ServingHTTPServer(app, max_body_size=MAX_BODY_BYTES,
                                       idle_connection_timeout=settings.idle_timeout_seconds,
                                       body_timeout=settings.body_timeout_seconds,
                                       header_timeout=settings.header_timeout_seconds,
                                       turn_for=self._turn_for if sockets is public else None)
            server.refuse_handshakes = not shared
            server.add_sockets(sockets)
            self.http_servers.append(server)
        self.services.registry.start()
        self.callbacks = CallbackWorker(self.services)
        self.callbacks.start()
        self.purge = PurgeLoop(self.services, self.services.settings.purge_interval_seconds)
        self.purge.start()
        self.loop_lag = LoopLagProbe(self.services.metrics)
        self.loop_lag.start()
        self.services.loop_lag = self.loop_lag

    async def stop(self, grace_seconds: float,
                   handshake_grace: float = HANDSHAKE_GRACE_SECONDS) -> None:
        """Stop accepting, wait (bounded) for in-flight requests, close everything.

        A request is in flight from its first byte to the end of its response, so neither a
        body still arriving nor a connection accepted a moment before is cut
        (web/serving.py); new connections are refused. The callback worker and the purge
        job stop meanwhile, so the whole stop takes about ``grace_seconds`` at most (F9:
        exit within 25 s of SIGTERM with the default 20). ``handshake_grace``: see
        ``ServingHTTPServer.drain``.
        """
        self.services.draining = True
        deadline = time.monotonic() + grace_seconds
        background = asyncio.ensure_future(self._stop_background(grace_seconds))
        drained = await asyncio.gather(*(s.drain(deadline, handshake_grace)
                                         for s in self.http_servers))
        # Handlers count themselves too (BaseHandler.prepare .. on_finish).
        idle = (self.services.inflight.count == 0
                or await self.services.inflight.wait_idle(max(0.01, deadline - time.monotonic())))
        if not (all(drained) and idle):
            log.warning("shutdown timeout: %d requests still in flight",
                        self.services.inflight.count)
        # Each step after the drain is bounded too: a request whose handler never ends (Tornado
        # waits for every connection's serving loop) or a dependency that does not answer
        # must not keep the process from exiting (F9: within 25 s of SIGTERM).
        end = deadline + STEP_BUDGET_SECONDS
        for server in self.http_servers:
            await _bounded(server.close_all_connections(), end, "closing connections")
        await _bounded(background, end, "stopping callbacks and purge")
        # Measured through the drain (a stall there delays in-flight requests too).
        if self.loop_lag is not None:
            self.loop_lag.stop()
        # Running key jobs release their leases; their checkpoints let the next run resume.
        await _bounded(self.services.key_jobs.stop(), end, "stopping key jobs")
        await _bounded(self.services.registry.stop(), end, "stopping tenant refresh")
        # Untrusted plugins' worker processes end with the server (hooks/isolation.py).
        await _bounded(close_pools(self.services.store), end, "stopping plugin workers")
        await _bounded(self.services.store.close(), end, "closing the store")
        self.services.http.close()
        self.services.horizon.close()

    async def _stop_background(self, grace_seconds: float) -> None:
        if self.callbacks is not None:
            # Attempts in flight may finish; the rest keep their leases and are resumed by
            # whichever process runs next (callbacks/worker.py). Events stay pending in the
            # store: a request finishing meanwhile relays its own events (callbacks/outbox.py).
            await self.callbacks.stop(min(grace_seconds, 5.0))
        if self.purge is not None:
            await self.purge.stop()


Sockets = list[socket.socket]


def bind_listeners(settings: PlatformSettings, *,
                   reuse_port: bool = False) -> tuple[Sockets, Sockets]:
    """Bind both listeners; raises ListenError (one line: which listener, its address, why)
    with nothing left bound if either cannot be (address in use, port not permitted, ...)."""
    public = _bind("public", settings.public_listen, reuse_port)
    try:
        admin = _bind("admin", settings.admin_listen, reuse_port)
    except BaseException:
        for sock in public:
            sock.close()
        raise
    return public, admin


def _bind(listener: str, listen: Listen, reuse_port: bool) -> Sockets:
    try:
        return bind_sockets(listen.port, listen.host, reuse_port=reuse_port)
    except OSError as exc:
        raise ListenError(listener, str(listen), exc) from exc


async def serve(
    settings: PlatformSettings,
    listeners: tuple[Sockets, Sockets] | None = None,
    *,
    apply_tenant_files: bool = True,
    reuse_port: bool = False,
) -> int:
    """Serve until SIGTERM/SIGINT, then drain and return 0 (one process).

    Without ``listeners`` the process binds its own sockets; as a worker of several
    (``reuse_port``) each binds with SO_REUSEPORT so the kernel spreads connections evenly.
    """
    services = await build_services(settings, apply_tenant_files=apply_tenant_files)
    try:
        public, admin = listeners or bind_listeners(settings, reuse_port=reuse_port)
    except BaseException:  # a taken port: close what start-up opened, then report it
        await close_pools(services.store)
        await services.store.close()
        services.http.close()
        services.horizon.close()
        raise
    frozen = _freeze_start_up_objects()  # before accepting: the collection pauses the loop
    sys.setswitchinterval(GIL_SWITCH_SECONDS)
    # Handlers before the first request is accepted: from then on a stop drains.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = Server(services)
    server.start(public, admin, shared=listeners is not None)
    served = len(services.registry.served())
    if settings.serve_tenants != ("*",):
        log.info("serve_tenants %s: %d of %d tenant(s)", ",".join(settings.serve_tenants),
                 served, len(services.registry))
    log.info("serving %d tenant(s): public http://%s, admin http://%s (backend %s, pid %d, "
             "%d start-up objects frozen, %s)", served, settings.public_listen,
             settings.admin_listen, services.store.backend_name, os.getpid(), frozen,
             memory.describe())
    await stop.wait()
    log.info("shutting down: %d request(s) in flight", services.inflight.count)
    await server.stop(settings.shutdown_timeout_seconds)
    log.info("stopped")
    return 0


#: How long a thread running Python keeps the GIL once another thread wants it (Python's
#: default: 5 ms). The event loop gives the GIL up at every system call and then waits for
#: it; with a store or file thread busy in Python (an upload being encoded for SQLite) each
#: of those waits took up to the whole interval, several times per request of every tenant.
#: With one thread running pure Python, the loop thread waited 1.2 ms (p50) to get the GIL
#: back at 0.5 ms instead of 5.8 ms at 5 ms (measured alone, BENCHMARKS.md); threads switch
#: more often, which costs little with the few threads a process has.
GIL_SWITCH_SECONDS = 0.0005


def _freeze_start_up_objects() -> int:
    """Move every object alive once the server is built (modules, classes, tenants,
    plugins, caches) out of the garbage collector's reach, and return how many there are.

    A full collection walks every tracked object; over the ~100,000 of a started server it
    took about 60 ms, all of it on the event loop that serves every tenant, and the first one
    came with the first burst of traffic (the noisy-neighbour benchmark's first noisy phase,
    BENCHMARKS.md). Frozen, they are never walked again; collections see only what requests
    created since. Frozen objects are still freed by reference counting, but a reference
    cycle among them that becomes garbage later (say, a start-up tenant's objects once a new
    version replaces it) is never collected: the waste is bounded by the start-up heap, and
    the freeze is done once."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


async def _prepare_store(settings: PlatformSettings) -> None:
    """Check the store and apply tenant files once, in the supervisor, before forking."""
    services = await build_services(settings)
    await services.store.close()


def run(settings: PlatformSettings, workers: int = 1) -> int:
    """Entry point of ``kyc-host serve``: one process, or a supervisor of ``workers`` forks.

    With several workers each one binds the listeners itself with SO_REUSEPORT, so the kernel
    balances connections across them (one inherited socket let a single worker accept most
    keep-alive connections: BENCHMARKS.md). The supervisor binds them once first, to fail
    fast on a taken port, and closes them before forking. Port 0 (any free port) cannot be
    shared that way, so then the sockets bound here are inherited instead. Every worker builds
    its own store client *after* the fork (drivers must not cross a fork). The supervisor
    forwards SIGTERM/SIGINT to the workers, waits for them to drain, and restarts a worker
    that dies unexpectedly.
    """
    memory.tune_malloc()  # before any thread exists; inherited by the workers
    if workers <= 1:
        return _run_serving(serve(settings))
    metrics_dir = _share_metrics_between_workers()
    try:
        asyncio.run(_prepare_store(settings))
        # Without SO_REUSEPORT: a port held by anyone, another kyc-host --workers (whose
        # sockets all set it) included, is refused here instead of silently shared.
        probe = bind_listeners(settings, reuse_port=False)
        if settings.public_listen.port and settings.admin_listen.port:
            for sock in probe[0] + probe[1]:
                sock.close()
            return _supervise(settings, workers, None)
        return _supervise(settings, workers, probe)
    finally:
        # Only the supervisor gets here (a worker ends with os._exit). A directory the
        # operator named is theirs to wipe between runs (prometheus_client's rule).
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_serving(main: Coroutine[Any, Any, int]) -> int:
    """Run a serving process's main coroutine on the turn-taking loop (web/turns.py)."""
    with asyncio.Runner(loop_factory=TurnTakingLoop) as runner:
        return runner.run(main)


def _share_metrics_between_workers() -> str | None:
    """Switch prometheus_client to its multi-process mode before the workers fork; returns
    the directory it created for the samples (None if the operator set one).

    The value backend is chosen when prometheus_client is imported, which already happened;
    so after setting the directory we re-select it (the library's own selection function).
    """
    import tempfile

    from prometheus_client import values

    from kyc_host.metrics import MULTIPROC_ENV

    created: str | None = None
    if not os.environ.get(MULTIPROC_ENV):
        created = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="kyc-host-metrics-")
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return created


#: The supervisor gives up (stops the other workers, exits 1) on a crash loop: more than this
#: many restarts per worker within RESTART_WINDOW_SECONDS. Restarts spread over time (a worker
#: killed now and then by the OOM killer, over months) never add up to it.
RESTARTS_PER_WORKER = 10
RESTART_WINDOW_SECONDS = 60.0


class RestartBudget:
    """At most ``limit`` restarts within any ``window`` seconds."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit, self.window = limit, window
        self._times: deque[float] = deque()

    def take(self, now: float) -> bool:
        """Count a restart at ``now`` (``time.monotonic()``); False if it is one too many."""
        while self._times and now - self._times[0] >= self.window:
            self._times.popleft()
        self._times.append(now)
        return len(self._times) <= self.limit


def _supervise(settings: PlatformSettings, workers: int,
               listeners: tuple[Sockets, Sockets] | None) -> int:
    children: dict[int, int] = {}  # pid -> worker index
    stopping = False

    supervisor = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # worker
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            # A supervisor that dies (SIGKILL, OOM killer) takes its workers along: they get
            # SIGTERM and drain, instead of serving on unsupervised.
            die_with_parent(supervisor, signal.SIGTERM)
            code = 1
            try:
                code = _run_serving(serve(settings, listeners, apply_tenant_files=False,
                                          reuse_port=listeners is None))
            except BaseException:  # a worker must never return into the supervisor's code
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for index in range(workers):
        spawn(index)
    log.info("supervisor %d started %d workers", os.getpid(), workers)
    restarts = RestartBudget(RESTARTS_PER_WORKER * workers, RESTART_WINDOW_SECONDS)
    gave_up = False
    while children:
        pid, status = os.wait()
        # Its gauges leave /metrics with it (the "live" modes, metrics.py); its counters stay.
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
        if pid not in children or stopping:
            children.pop(pid, None)
            continue
        index = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        log.error("worker %d (pid %d) exited with %d; restarting", index, pid, code)
        if not restarts.take(time.monotonic()):
            log.error("%d worker restarts within %g s; giving up", restarts.limit + 1,
                      restarts.window)
            gave_up = True
            forward(signal.SIGTERM, None)
            continue
        spawn(index)
    return 1 if gave_up else 0


async def _bounded(step: Awaitable[object], end: float, what: str) -> None:
    """Await a shutdown step until ``end`` (a ``time.monotonic()`` value, at least
    MIN_STEP_SECONDS from now); past that, cancel it, log and go on (the process is exiting:
    whatever the step held is released with it).

    The step runs as a task of its own, and the wait for it is what is bounded: cancelling
    a step does not end it if something inside swallows the cancellation (Tornado's serving
    loop of a connection returns quietly when cancelled, so closing connections went on to
    the next stuck one, and a timeout around the whole step fired once and never again)."""
    seconds = max(MIN_STEP_SECONDS, end - time.monotonic())
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        task.result()  # a step's own error is raised, as before
        return
    task.cancel()
    # Whatever it ends with later is not an error to report ("never retrieved").
    task.add_done_callback(lambda ended: ended.cancelled() or ended.exception())
    log.warning("shutdown: %s did not finish within %.1f s; going on without it", what,
                seconds)
