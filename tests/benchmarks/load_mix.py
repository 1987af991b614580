"""Mixed-flow load at a fixed rate (reliability-plan L1 baseline, L2 stress, L3 soak).

    python tests/benchmarks/load_mix.py --mode baseline --rate 200 --duration 120
    python tests/benchmarks/load_mix.py --mode stress --rate 100 --step 30
    python tests/benchmarks/load_mix.py --mode soak --rate 100 --duration 15m
    python tests/benchmarks/load_mix.py --mode baseline --smoke --json out.json   # tiny

One real ``kyc-host serve --workers N`` (bench_server.py) hosts two tenants; the Horizon
stand-in answers every account lookup in 50 ms (``--horizon-delay``). Each tenant has a pool
of ``--wallets`` wallets, logged in (and given a customer) before the measurement; their JWTs
are the cached ones the polling flow uses.

**Open loop.** Flows start on a clock, ``--rate`` requests per second divided by the mean
number of requests per flow, whatever the server's answers are doing. A flow's first request
is timed from its *scheduled* start, so time spent waiting (for a free client connection, or
behind a late client loop) counts as latency instead of being left out (coordinated
omission); each later request of the flow is timed from when it was sent. The mix
(reliability-plan L, weights of flows):

- 30 % onboarding: GET /auth (memo = a fresh id, so a new customer) -> POST /auth ->
  GET /kyc/customer -> PUT JSON -> [PUT /kyc/customer/callback] -> PUT multipart with a
  3 MB ``photo_id_front`` -> GET /kyc/customer (its status)
- 50 % status polling: GET /kyc/customer with a pool wallet's cached JWT
- 15 % SEP-10 only: GET + POST /auth for a pool wallet
- 5 % admin listing: ``GET /api/v1/tenants/{id}/customers`` on the admin listener with a
  tenant-admin token (``kyc-host token create``)

Modes:

- ``baseline`` (L1): ``--duration`` at ``--rate``; p50/p95/p99 per route against the
  (c) Latency and Throughput targets, statuses, achieved rate, server RSS and CPU.
  "GET /customer" pools the polling GETs and onboarding's two GETs; a failed request counts
  in its route's latencies with the time it took (a timeout: ``--timeout``).
- ``stress`` (L2): ``--rate``, then +25 % every ``--step`` seconds (the plan says 120 s;
  the default here is 30 s) until a step's p99 > 1 s or its errors > 1 %, or
  ``--max-steps``. A step is judged after its rate ran on for a quarter step more (not
  measured; requests still in flight then count with their age so far); the knee reported is
  computed from the final figures of every step, so it can lie below the step that triggered
  the stop. Each step:
  rate, p99, errors split into shed (429/503) vs timeouts, 5xx, connection errors and other
  4xx, server RSS. Then back to ``--rate`` for ``--recovery`` seconds: the time until
  GET /kyc/customer's p95 is back within 20 % of step 0's (two windows in a row).
- ``soak`` (L3, SHORTENED: the plan asks for 24 h): ``--duration`` at ``--rate``, sampling
  every ``--sample-every`` s the server's RSS, open fds, connections to the store (MongoDB:
  TCP connections from the server's processes to FerretDB's port; SQLite: open handles on
  the database files), and the outbox (``kyc_callback_events_pending`` and the delivery
  histogram of the admin ``/metrics``). ``--callback-share`` of the onboarding flows
  register a callback URL to a receiver in this process; the tenants set
  ``notify_on_field_change``, so the multipart PUT of such a customer makes exactly one event.
  At the end: growth after ``--warmup`` against the targets (the RSS verdict compares the
  median of the first ``--growth-window`` after the warm-up with that of the last),
  end-to-end callback lag, and events created (the tenants' outbox, via the management
  API) vs received.

Rate limits are off (the benchmarks' shared config: every simulated wallet comes from
127.0.0.1) and so is the tenants' upload pacing (``--upload-pacing``: at 200 req/s the mix
uploads about 34 MB/s per tenant, eight times the 4 MiB/s default, which would answer most
uploads 429), so under stress only the server's own bounds can answer 429/503. Nothing is
asserted; the figures go to stdout and ``--json``. The load generator shares the machine with
the server: the report gives its CPU and how late it started flows (``schedule_lag``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_client import (  # noqa: E402
    Connection,
    HttpError,
    Response,
    bearer,
    customer_fields,
    percentile,
    put_customer,
    sign_challenge,
)
from bench_server import (  # noqa: E402
    BenchTenant,
    Deployment,
    HorizonStub,
    RssSampler,
    ServerProcess,
    bench_tenant,
    cpu_seconds,
    free_port,
    mongo_server,
    status_kb,
    storage_url,
    tenant_toml,
)
from noisy_neighbour import UploadBody, jpeg_of_size  # noqa: E402
from run import git_commit, machine_info  # noqa: E402
from stellar_sdk import Keypair  # noqa: E402
from tornado.httpserver import HTTPServer  # noqa: E402
from tornado.web import Application, RequestHandler  # noqa: E402

# --- the mix and the targets (reliability-plan L and (c)) ------------------------------

WEIGHTS = {"onboarding": 30, "polling": 50, "sep10": 15, "admin": 5}
GET_AUTH, POST_AUTH, GET_CUSTOMER = "GET /auth", "POST /auth", "GET /customer"
PUT_JSON, PUT_MULTIPART, PUT_CALLBACK = ("PUT /customer JSON", "PUT /customer multipart",
                                         "PUT /customer/callback")
ADMIN_LIST = "GET admin customers"
ROUTES = (GET_AUTH, POST_AUTH, GET_CUSTOMER, PUT_JSON, PUT_MULTIPART, ADMIN_LIST)
#: route -> {percentile figure: target in ms} ((c) "Latency (L1)").
LATENCY_TARGETS: dict[str, dict[str, float]] = {
    GET_AUTH: {"p95_ms": 50}, POST_AUTH: {"p95_ms": 250},
    GET_CUSTOMER: {"p95_ms": 50, "p99_ms": 150}, PUT_JSON: {"p95_ms": 100},
    PUT_MULTIPART: {"p95_ms": 1000}}
ERROR_RATE_TARGET = 0.001  # (c): error rate < 0.1 %
THROUGHPUT_TARGET = 200.0  # (c) "Throughput (L1)": >= 200 req/s mixed per process
KNEE_P99_S, KNEE_ERROR_RATE, STEP_FACTOR = 1.0, 0.01, 1.25  # L2
RECOVERY_BAND, RECOVERY_TARGET_S = 1.2, 60.0  # L2: p95 within 20 % within <= 60 s
SOAK_RSS_GROWTH, SOAK_LAG_P99_S = 0.10, 30.0  # L3
#: Soak: growth compares the median of this long after the warm-up with that of the end.
GROWTH_WINDOW_S = 300.0
OK_STATUSES = frozenset({"200", "201", "202", "204"})
MULTIPART_BYTES = 3_000_000  # "PUT multipart 3 MB"
#: The tenants' upload pacing: the schema's maximum (1 GiB/s), i.e. off, as rate limits are:
#: L1 measures the server, not the per-tenant bandwidth cap (tests/limits test that).
UPLOAD_PACING = 1024 * 1024 * 1024
DURATION = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def seconds_arg(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h`` -> seconds."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 90, 90s, 15m or 2h: {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--mode", choices=("baseline", "stress", "soak"), default="baseline")
    add("--backend", choices=("sqlite", "mongo"), default="sqlite")
    add("--rate", type=float, help="requests per second (mixed); stress: the first step's. "
        "Default: 200 (baseline), 100 (stress, soak)")
    add("--duration", type=seconds_arg, help="baseline/soak length: 90, 90s, 15m, 2h. "
        "Default: 60 s (baseline), 15 min (soak)")
    add("--step", type=seconds_arg, default=30.0, help="stress: seconds per step (plan: 120)")
    add("--max-steps", type=int, default=12, help="stress: stop after this many steps")
    add("--recovery", type=seconds_arg, default=90.0,
        help="stress: seconds at --rate after the last step")
    add("--window", type=seconds_arg, default=5.0, help="stress: recovery window length")
    add("--workers", type=int, default=1, help="server worker processes (targets: per process)")
    add("--wallets", type=int, default=1000, help="wallet pool per tenant (plan: 1000)")
    add("--connections", type=int, default=1024,
        help="client keep-alive connections, at most (opened as the load needs them)")
    add("--timeout", type=float, default=10.0, help="client timeout per request, seconds")
    add("--multipart-bytes", type=int, default=MULTIPART_BYTES)
    add("--horizon-delay", type=float, default=0.05, help="Horizon stub answer time, seconds")
    add("--upload-pacing", type=int, default=UPLOAD_PACING,
        help="the tenants' limits.upload_bytes_per_second; 0: the product default (4 MiB/s, "
             "far below what the mix uploads at 200 req/s: about 34 MB/s per tenant)")
    add("--callback-share", type=float,
        help="share of onboarding flows that register a callback (default 0.25 in soak, else 0)")
    add("--sample-every", type=seconds_arg, default=10.0, help="soak: sampling interval")
    add("--warmup", type=seconds_arg, help="soak: left out of growth (default 10 %%, >= 1 min)")
    add("--growth-window", type=seconds_arg, default=GROWTH_WINDOW_S,
        help="soak: growth is the median of the last this-long vs the first after warm-up")
    add("--drain", type=seconds_arg, default=60.0,
        help="soak: longest wait after the load for undelivered callbacks")
    add("--seed", type=int, default=1)
    add("--json", type=Path, help="write the report here")
    add("--keep", action="store_true", help="keep the working directory")
    add("--smoke", action="store_true", help="a few seconds, a few wallets: checks it works")
    opts = parser.parse_args(argv)
    defaults(opts)
    return opts


def defaults(opts: argparse.Namespace) -> None:
    if opts.rate is None:
        opts.rate = 200.0 if opts.mode == "baseline" else 100.0
    if opts.duration is None:
        opts.duration = 60.0 if opts.mode == "baseline" else 900.0
    if opts.callback_share is None:
        opts.callback_share = 0.25 if opts.mode == "soak" else 0.0
    if opts.smoke:
        opts.rate, opts.wallets, opts.connections = min(opts.rate, 20.0), 3, 32
        opts.duration, opts.step, opts.max_steps = 3.0, 2.0, 2
        opts.recovery, opts.window, opts.sample_every = 4.0, 1.0, 1.0
        opts.warmup, opts.drain, opts.growth_window = 1.0, 30.0, 1.0
        if opts.mode == "soak":
            opts.duration, opts.callback_share = 6.0, 1.0
    if opts.warmup is None:
        opts.warmup = min(max(60.0, opts.duration / 10), opts.duration / 2)


def requests_per_flow(callback_share: float) -> float:
    """Mean requests of one flow of the mix (onboarding: 6, plus the callback PUT)."""
    sizes = {"onboarding": 6 + callback_share, "polling": 1, "sep10": 2, "admin": 1}
    return sum(WEIGHTS[k] * sizes[k] for k in WEIGHTS) / sum(WEIGHTS.values())


# --- recording --------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    """One request: its route, the phase of its flow, when its flow was scheduled, when
    its timing began and ended (perf_counter), and its outcome (a status or an error)."""

    route: str
    phase: str
    scheduled: float
    started: float
    ended: float
    outcome: str

    @property
    def seconds(self) -> float:
        return self.ended - self.started


def error_class(outcome: str) -> str:
    """ok | shed (429/503) | timeout | connection | 5xx | 4xx (L2's split)."""
    if outcome in OK_STATUSES:
        return "ok"
    if outcome in ("429", "503"):
        return "shed"
    if outcome in ("timeout", "connection"):
        return outcome
    return "5xx" if outcome.startswith("5") else "4xx"


@dataclass
class Recorder:
    samples: list[Sample] = field(default_factory=list)
    #: requests in flight: id -> (phase, timing start)
    inflight: dict[int, tuple[str, float]] = field(default_factory=dict)
    flows: Counter[str] = field(default_factory=Counter)
    schedule_lag: dict[str, list[float]] = field(default_factory=dict)
    first_error: dict[str, str] = field(default_factory=dict)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def begin(self, phase: str, started: float) -> int:
        key = next(self._ids)
        self.inflight[key] = (phase, started)
        return key

    def end(self, key: int, route: str, scheduled: float, outcome: str) -> None:
        phase, started = self.inflight.pop(key)
        self.samples.append(Sample(route, phase, scheduled, started, time.perf_counter(),
                                   outcome))

    def of(self, phase: str) -> list[Sample]:
        return [s for s in self.samples if s.phase == phase]

    def open_ages(self, phase: str, now: float) -> list[float]:
        return [now - started for p, started in self.inflight.values() if p == phase]


def latency_figures(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": ms(percentile(ordered, 50)), "p95_ms": ms(percentile(ordered, 95)),
            "p99_ms": ms(percentile(ordered, 99)), "max_ms": ms(ordered[-1] if ordered else 0)}


def ms(seconds: float) -> float:
    return round(1000 * seconds, 2)


def route_figures(samples: list[Sample]) -> dict[str, Any]:
    """Per route: requests, latency percentiles (failed requests included, a timeout with
    the time it took) and status counts."""
    out: dict[str, Any] = {}
    for route in sorted({s.route for s in samples} | set(ROUTES), key=route_order):
        mine = [s for s in samples if s.route == route]
        out[route] = {"requests": len(mine), **latency_figures([s.seconds for s in mine]),
                      "statuses": dict(sorted(Counter(s.outcome for s in mine).items()))}
    return out


def route_order(route: str) -> int:
    return ROUTES.index(route) if route in ROUTES else len(ROUTES)


def error_figures(samples: list[Sample]) -> dict[str, Any]:
    classes = Counter(error_class(s.outcome) for s in samples)
    errors = len(samples) - classes["ok"]
    return {"requests": len(samples), "errors": errors,
            "error_rate": round(errors / len(samples), 5) if samples else 0.0,
            "errors_by_class": {k: classes[k] for k in
                                ("shed", "timeout", "5xx", "connection", "4xx")}}


# --- the wallets' side ------------------------------------------------------------------


@dataclass
class TenantPool:
    tenant: BenchTenant
    wallets: list[Keypair]
    tokens: list[str] = field(default_factory=list)
    admin_token: str = ""


class Slots:
    """At most ``size`` keep-alive connections; a flow waits for a free one (that wait is
    part of its first request's latency). Last in, first out: the connections open at once
    follow the load's concurrency instead of cycling through all ``size``."""

    def __init__(self, port: int, size: int, timeout: float) -> None:
        self.conns = [Connection(port, timeout=timeout) for _ in range(size)]
        self.free: asyncio.LifoQueue[int] = asyncio.LifoQueue()
        for index in range(size):
            self.free.put_nowait(index)

    @contextlib.asynccontextmanager
    async def take(self) -> AsyncIterator[int]:
        index = await self.free.get()
        try:
            yield index
        finally:
            self.free.put_nowait(index)

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


class Receiver:
    """The wallets' callback endpoint: which customers' callbacks arrived, and when."""

    def __init__(self) -> None:
        self.port = free_port()
        self.event_ids: set[str] = set()
        self.posts = 0
        self.first_seen: dict[str, float] = {}
        self.server: HTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/cb"

    def start(self) -> None:
        receiver = self

        class Hook(RequestHandler):
            def post(self) -> None:
                receiver.note(self.request.headers.get("Webhook-Id", ""), self.request.body)
                self.finish("ok")

        self.server = Application([(r"/cb", Hook)], log_function=lambda _h: None).listen(
            self.port, "127.0.0.1")

    def note(self, event_id: str, body: bytes) -> None:
        self.posts += 1
        self.event_ids.add(event_id)
        with contextlib.suppress(ValueError, AttributeError):
            customer = str(json.loads(body).get("id", ""))
            self.first_seen.setdefault(customer, time.perf_counter())

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@dataclass
class Mix:
    """Everything a flow needs, and what the flows recorded."""

    opts: argparse.Namespace
    port: int
    admin_port: int
    pools: list[TenantPool]
    slots: Slots
    receiver: Receiver
    rng: random.Random
    recorder: Recorder = field(default_factory=Recorder)
    memos: Iterator[int] = field(default_factory=lambda: itertools.count(
        random.randrange(1, 2**40) * 1000))
    callback_put_sent: dict[str, float] = field(default_factory=dict)
    admin: Connection | None = None
    upload: UploadBody | None = None
    uploads: Iterator[int] = field(default_factory=itertools.count)

    def upload_body(self) -> bytes:
        """A copy of the multipart template with a new serial stamped into its JPEG (each
        upload is a new file). A copy per upload, not one per connection: 1,024 connections
        would otherwise hold 3 GB of bodies."""
        template = self.upload
        assert template is not None
        data = bytearray(template.data)
        at = template.stamp_at
        data[at:at + 12] = f"{next(self.uploads) % 10**12:012d}".encode()
        return bytes(data)

    async def step(self, route: str, phase: str, scheduled: float, started: float,
                   send: Callable[[], Awaitable[Response]], conn: Connection) -> Response | None:
        """One request of a flow: recorded; the answer if 2xx, else None (the flow stops)."""
        key = self.recorder.begin(phase, started)
        try:
            answer = await send()
        except TimeoutError:
            outcome = "timeout"
        except (HttpError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
            outcome = "connection"
            self.recorder.first_error.setdefault(route, repr(exc)[:300])
        else:
            outcome = str(answer.status)
            self.recorder.end(key, route, scheduled, outcome)
            if outcome in OK_STATUSES:
                return answer
            self.recorder.first_error.setdefault(route, f"{outcome} {answer.body[:200]!r}")
            return None
        self.recorder.end(key, route, scheduled, outcome)
        await conn.close()  # its state is unknown after a timeout or a cut
        return None


async def onboarding(mix: Mix, index: int, pool: TenantPool, phase: str,
                     scheduled: float) -> bool:
    """challenge -> token -> GET -> PUT JSON -> [callback] -> PUT multipart -> GET status,
    as a new customer (a fresh memo) of a pool wallet."""
    conn, host = mix.slots.conns[index], pool.tenant.host
    keypair, memo = mix.rng.choice(pool.wallets), next(mix.memos)
    callback = mix.rng.random() < mix.opts.callback_share
    answer = await mix.step(GET_AUTH, phase, scheduled, scheduled, lambda: conn.request(
        "GET", f"/auth?account={keypair.public_key}&memo={memo}", host), conn)
    if answer is None:
        return False
    signed = sign_challenge(answer.json(), keypair)
    answer = await mix.step(POST_AUTH, phase, scheduled, time.perf_counter(), lambda: conn.request(
        "POST", "/auth", host, body=signed, headers={"Content-Type": "application/json"}), conn)
    if answer is None:
        return False
    auth = bearer(str(answer.json()["token"]))
    json_headers = {**auth, "Content-Type": "application/json"}
    fields = json.dumps(customer_fields(memo)).encode()
    content_type = mix.upload.content_type if mix.upload else ""
    steps: list[tuple[str, Callable[[], Awaitable[Response]]]] = [
        (GET_CUSTOMER, lambda: conn.request("GET", "/kyc/customer", host, headers=auth)),
        (PUT_JSON, lambda: conn.request("PUT", "/kyc/customer", host, body=fields,
                                        headers=json_headers))]
    if callback:
        url = json.dumps({"url": mix.receiver.url}).encode()
        steps.append((PUT_CALLBACK, lambda: conn.request(
            "PUT", "/kyc/customer/callback", host, body=url, headers=json_headers)))
    steps += [
        (PUT_MULTIPART, lambda: conn.request(
            "PUT", "/kyc/customer", host, body=mix.upload_body(),
            headers={**auth, "Content-Type": content_type})),
        (GET_CUSTOMER, lambda: conn.request("GET", "/kyc/customer", host, headers=auth))]
    for route, send in steps:
        sent = time.perf_counter()
        answer = await mix.step(route, phase, scheduled, sent, send, conn)
        if answer is None:
            return False
        if route == PUT_MULTIPART and callback:
            # The event is written during this PUT: lag from its send is an upper bound.
            mix.callback_put_sent[str(answer.json()["id"])] = sent
    return True


async def polling(mix: Mix, index: int, pool: TenantPool, phase: str, scheduled: float) -> bool:
    conn, token = mix.slots.conns[index], mix.rng.choice(pool.tokens)
    return await mix.step(GET_CUSTOMER, phase, scheduled, scheduled, lambda: conn.request(
        "GET", "/kyc/customer", pool.tenant.host, headers=bearer(token)), conn) is not None


async def sep10_only(mix: Mix, index: int, pool: TenantPool, phase: str,
                     scheduled: float) -> bool:
    conn, host, keypair = mix.slots.conns[index], pool.tenant.host, mix.rng.choice(pool.wallets)
    answer = await mix.step(GET_AUTH, phase, scheduled, scheduled, lambda: conn.request(
        "GET", f"/auth?account={keypair.public_key}", host), conn)
    if answer is None:
        return False
    signed = sign_challenge(answer.json(), keypair)
    return await mix.step(POST_AUTH, phase, scheduled, time.perf_counter(), lambda: conn.request(
        "POST", "/auth", host, body=signed, headers={"Content-Type": "application/json"}),
        conn) is not None


async def admin_listing(mix: Mix, index: int, pool: TenantPool, phase: str,
                        scheduled: float) -> bool:
    """The tenant admin's review queue, first page (admin listener; its own connection)."""
    conn = Connection(mix.admin_port, timeout=mix.opts.timeout)
    try:
        return await mix.step(ADMIN_LIST, phase, scheduled, scheduled, lambda: conn.request(
            "GET", f"/api/v1/tenants/{pool.tenant.id}/customers?limit=50", "127.0.0.1",
            headers=bearer(pool.admin_token)), conn) is not None
    finally:
        await conn.close()


FLOWS = {"onboarding": onboarding, "polling": polling, "sep10": sep10_only,
         "admin": admin_listing}


async def run_flow(mix: Mix, kind: str, phase: str, scheduled: float) -> None:
    pool = mix.rng.choice(mix.pools)
    lag = time.perf_counter() - scheduled
    mix.recorder.schedule_lag.setdefault(phase, []).append(lag)
    if kind == "admin":  # the admin listener: no wallet connection slot taken
        ok = await admin_listing(mix, 0, pool, phase, scheduled)
    else:
        async with mix.slots.take() as index:
            ok = await FLOWS[kind](mix, index, pool, phase, scheduled)
    mix.recorder.flows[f"{kind}.{'ok' if ok else 'failed'}"] += 1


def deck(rng: random.Random, *, first_each: bool) -> Iterator[str]:
    """Flow kinds in exact proportion: each run of 20 flows holds 6 onboarding, 10 polling,
    3 SEP-10 and 1 admin (30/50/15/5 %) in a shuffled order, so that short steps get the
    same mix. ``first_each`` (smoke runs): one of each kind first, so every route is measured.
    """
    unit = 5  # the weights' greatest common divisor
    cards = [kind for kind, weight in WEIGHTS.items() for _ in range(weight // unit)]
    if first_each:
        yield from WEIGHTS
    while True:
        rng.shuffle(cards)
        yield from cards


async def drive(mix: Mix, rate: float, seconds: float, phase: str,
                tasks: set[asyncio.Task[None]]) -> None:
    """Start flows on the clock for ``seconds``: ``rate`` requests/s worth of the mix. A late
    loop starts the overdue flows at once (their latency counts from their scheduled time)."""
    flow_rate = rate / requests_per_flow(mix.opts.callback_share)
    kinds = deck(mix.rng, first_each=mix.opts.smoke)
    start = time.perf_counter()
    for n in itertools.count():
        scheduled = start + n / flow_rate
        if scheduled >= start + seconds:
            return
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(run_flow(mix, next(kinds), phase, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)


# --- set-up -----------------------------------------------------------------------------


MIX_TENANT_EXTRA = """
[sep10]
jwt_lifetime_seconds = 86400   # cached polling JWTs outlive a soak of up to 24 h

[callbacks]
notify_on_field_change = true  # the multipart PUT of a callback customer makes one event
"""


def write_tenants(directory: Path, horizon_url: str, upload_pacing: int) -> list[BenchTenant]:
    """The benchmarks' tenant file, plus MIX_TENANT_EXTRA and the upload pacing."""
    directory.mkdir(parents=True, exist_ok=True)
    tenants = [bench_tenant(i, "mix") for i in range(2)]
    for tenant in tenants:
        text = tenant_toml(tenant, horizon_url) + MIX_TENANT_EXTRA
        if upload_pacing:
            text = text.replace("[limits]\n",
                                f"[limits]\nupload_bytes_per_second = {upload_pacing}\n", 1)
        (directory / f"{tenant.id}.toml").write_text(text)
    return tenants


def admin_token(server: ServerProcess, tenant_id: str) -> str:
    """A tenant-admin token (``kyc-host token create``, against the running server's store)."""
    config = server.deployment.workdir / "config" / "kyc-host.toml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KYC_HOST_")}
    result = subprocess.run(
        [sys.executable, "-m", "kyc_host", "token", "create", "--config", str(config),
         "--tenant", tenant_id, "--scopes", "customers:read", "callbacks:read", "--json"],
        capture_output=True, text=True, check=False, env=env, cwd=server.deployment.workdir,
        timeout=120)
    if result.returncode != 0:
        raise HttpError(f"token create failed: {result.stdout}{result.stderr}")
    return str(json.loads(result.stdout)["token"])


async def seed(port: int, pool: TenantPool, concurrency: int = 8) -> None:
    """Log every pool wallet in (its JWT is cached for polling) and give it a customer."""
    keypairs = iter(enumerate(pool.wallets))
    pool.tokens = [""] * len(pool.wallets)

    async def worker() -> None:
        conn = Connection(port)
        try:
            for serial, keypair in keypairs:
                answer = await conn.request("GET", f"/auth?account={keypair.public_key}",
                                            pool.tenant.host)
                if answer.status != 200:
                    raise HttpError(f"seed GET /auth: {answer.status} {answer.body[:200]!r}")
                signed = sign_challenge(answer.json(), keypair)
                answer = await conn.request("POST", "/auth", pool.tenant.host, body=signed,
                                            headers={"Content-Type": "application/json"})
                if answer.status != 200:
                    raise HttpError(f"seed POST /auth: {answer.status} {answer.body[:200]!r}")
                token = str(answer.json()["token"])
                await put_customer(conn, pool.tenant.host, token, customer_fields(serial))
                pool.tokens[serial] = token
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


# --- server-side figures ----------------------------------------------------------------


def fd_targets(pid: int) -> list[str]:
    """Where each open fd of ``pid`` points (``socket:[inode]``, a path, ...)."""
    base = Path(f"/proc/{pid}/fd")
    out = []
    with contextlib.suppress(OSError):
        for entry in base.iterdir():
            with contextlib.suppress(OSError):
                out.append(os.readlink(entry))
    return out


def tcp_sockets(port: int, *, remote: bool) -> set[str]:
    """Socket inodes of established TCP connections whose remote (or local) port is
    ``port``, from /proc/net/tcp{,6} (no extra dependency)."""
    inodes = set()
    column = 2 if remote else 1
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "01" and int(cols[column].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    return inodes


def sockets_among(targets: list[str], inodes: set[str]) -> int:
    return sum(1 for t in targets if t.startswith("socket:[") and t[8:-1] in inodes)


@dataclass
class StoreProbe:
    """Counts the server's connections to its store: TCP connections to FerretDB's port
    (MongoDB), or open handles on the database files (SQLite)."""

    backend: str
    mongo_port: int = 0
    sqlite_path: str = ""
    #: FerretDB's pid (MongoDB backend): its CPU is reported apart, it shares the cores.
    pid: int = 0

    def count(self, targets: list[str]) -> int:
        if self.backend == "mongo":
            return sockets_among(targets, tcp_sockets(self.mongo_port, remote=True))
        return sum(1 for t in targets if t.startswith(self.sqlite_path))


def server_sample(server: ServerProcess, probe: StoreProbe) -> dict[str, Any]:
    """RSS, fds and store connections of all the server's processes. ``fds_not_clients``
    leaves out the connections of clients to its listeners, which follow the load (every
    keep-alive connection the load generator opened), so that a leak shows there."""
    pids = server.all_pids()
    targets = [t for pid in pids for t in fd_targets(pid)]
    clients = sockets_among(targets, tcp_sockets(server.public_port, remote=False)
                            | tcp_sockets(server.admin_port, remote=False))
    return {"rss_kb": sum(status_kb(p, "VmRSS") for p in pids), "fds": len(targets),
            "client_connections": clients, "fds_not_clients": len(targets) - clients,
            "store_connections": probe.count(targets), "cpu_s": round(server.cpu_seconds(), 2)}


METRIC_LINE = re.compile(r'^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+|NaN|\+Inf)$')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            out.setdefault(match.group(1), []).append((labels, float(match.group(3))))
    return out


def outbox_figures(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, Any]:
    """Pending events and the delivery-latency histogram's p99 bound (its bucket's upper
    edge: "p99 <= that many seconds")."""
    pending = sum(v for _, v in metrics.get("kyc_callback_events_pending", []))
    buckets = sorted((float(labels["le"]), v) for labels, v in
                     metrics.get("kyc_callback_delivery_seconds_bucket", []))
    count = max((v for _, v in buckets), default=0.0)
    bound = next((le for le, v in buckets if count and v >= 0.99 * count), None)
    delivered = sum(v for labels, v in metrics.get("kyc_callback_events_total", [])
                    if labels.get("outcome") == "delivered")
    # Requests of a busy tenant that let the other go first (web/turns.py), since the start.
    busy_turns = {labels.get("tenant", ""): int(v)
                  for labels, v in metrics.get("kyc_busy_tenant_turns_total", [])}
    return {"pending": int(pending), "delivered": int(delivered),
            "delivery_p99_le_s": bound, "delivery_count": int(count), "busy_turns": busy_turns}


async def scrape(mix: Mix) -> dict[str, Any]:
    if mix.admin is None:
        mix.admin = Connection(mix.admin_port, timeout=10)
    try:
        answer = await mix.admin.request("GET", "/metrics", "127.0.0.1")
    except (HttpError, OSError, TimeoutError) as exc:
        await mix.admin.close()
        return {"error": repr(exc)[:200]}
    return outbox_figures(parse_metrics(answer.body.decode()))


# --- phases -----------------------------------------------------------------------------


@dataclass
class Bench:
    mix: Mix
    server: ServerProcess
    probe: StoreProbe
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    starts: dict[str, float] = field(default_factory=dict)

    async def phase(self, phase: str, rate: float, seconds: float) -> dict[str, Any]:
        """Drive one phase; server CPU/RSS and the client's own CPU over it."""
        cpu0, client0 = self.server.cpu_seconds(), time.process_time()
        store0 = cpu_seconds(self.probe.pid) if self.probe.pid else 0.0
        started = self.starts[phase] = time.perf_counter()
        with RssSampler(self.server.all_pids(), interval=0.25) as rss:
            await drive(self.mix, rate, seconds, phase, self.tasks)
        wall = time.perf_counter() - started
        return {"rate_rps": round(rate, 1), "seconds": round(wall, 1),
                "server_rss_peak_kb": rss.peak_kb,
                "server_cpu_cores": round((self.server.cpu_seconds() - cpu0) / wall, 2),
                "loadgen_cpu_cores": round((time.process_time() - client0) / wall, 2),
                "store_cpu_cores": round((cpu_seconds(self.probe.pid) - store0) / wall, 2)
                if self.probe.pid else None}

    async def settle(self) -> None:
        """Wait for every flow still in flight (bounded by the client timeout per request)."""
        if self.tasks:
            await asyncio.gather(*list(self.tasks))

    def figures(self, phase: str, run: dict[str, Any]) -> dict[str, Any]:
        """The whole report of one phase, once its flows have finished."""
        samples = self.mix.recorder.of(phase)
        lag = sorted(self.mix.recorder.schedule_lag.get(phase, []))
        # Completed requests over the time from the phase's start to its last answer.
        last = max((s.ended for s in samples), default=self.starts[phase])
        wall = max(run["seconds"], last - self.starts[phase], 1e-9)
        every = latency_figures([s.seconds for s in samples])
        return {**run, "achieved_rps": round(len(samples) / wall, 1),
                **error_figures(samples), **{f"all_{k}": v for k, v in every.items()},
                "routes": route_figures(samples),
                "schedule_lag_p99_ms": ms(percentile(lag, 99)),
                "schedule_lag_max_ms": ms(lag[-1] if lag else 0.0)}


def latency_verdicts(figures: dict[str, Any], rate: float) -> list[dict[str, Any]]:
    rows = []
    for route, targets in LATENCY_TARGETS.items():
        for figure, target in targets.items():
            value = figures["routes"][route][figure]
            rows.append({"figure": f"{route} {figure[:3]}", "value_ms": value,
                         "target": f"< {target:g} ms", "met": value < target})
    rows.append({"figure": "error rate", "value": figures["error_rate"],
                 "target": "< 0.1 %", "met": figures["error_rate"] < ERROR_RATE_TARGET})
    tested = rate >= THROUGHPUT_TARGET
    rows.append({"figure": "achieved req/s", "value": figures["achieved_rps"],
                 "target": f">= {THROUGHPUT_TARGET:g} req/s mixed, latency targets met",
                 "met": (figures["achieved_rps"] >= 0.98 * THROUGHPUT_TARGET
                         and all(r["met"] for r in rows)) if tested else None,
                 "note": None if tested else f"not tested: --rate {rate:g} < 200"})
    return rows


async def baseline(bench: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    before = server_sample(bench.server, bench.probe)
    run = await bench.phase("baseline", opts.rate, opts.duration)
    await bench.settle()
    figures = bench.figures("baseline", run)
    figures["server_before"], figures["server_after"] = before, server_sample(bench.server,
                                                                               bench.probe)
    figures["verdicts"] = latency_verdicts(figures, opts.rate)
    figures["busy_turns"] = (await scrape(bench.mix)).get("busy_turns")
    return figures


def step_check(bench: Bench, phase: str) -> tuple[float, float]:
    """A step's p99 (seconds) and error rate as of now: requests still in flight count with
    their age so far (a lower bound of their latency), so an overloaded step is seen."""
    now = time.perf_counter()
    samples = bench.mix.recorder.of(phase)
    seconds = [s.seconds for s in samples] + bench.mix.recorder.open_ages(phase, now)
    errors = sum(1 for s in samples if s.outcome not in OK_STATUSES)
    return percentile(sorted(seconds), 99), errors / len(samples) if samples else 0.0


async def stress(bench: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    runs: list[tuple[str, dict[str, Any]]] = []
    stopped, rate = "max steps reached", opts.rate
    for index in range(opts.max_steps):
        phase = f"step{index}"
        runs.append((phase, await bench.phase(phase, rate, opts.step)))
        # The same rate a little longer (not measured), so that most of the step's flows
        # (onboarding is 6-7 requests long) have ended when the step is judged.
        await drive(bench.mix, rate, tail_seconds(opts), f"{phase}-tail", bench.tasks)
        p99, error_rate = step_check(bench, phase)
        say(f"  step {index}: {rate:.0f} req/s, p99 {1000 * p99:.0f} ms (in flight counted), "
            f"errors {100 * error_rate:.2f} %")
        if p99 > KNEE_P99_S or error_rate > KNEE_ERROR_RATE:
            stopped = f"p99 {p99:.2f} s > 1 s" if p99 > KNEE_P99_S else \
                f"errors {100 * error_rate:.2f} % > 1 %"
            break
        rate *= STEP_FACTOR
    dropped_at = time.perf_counter()
    recovery_run = await bench.phase("recovery", opts.rate, opts.recovery)
    await bench.settle()
    steps = [step_figures(bench.figures(phase, run)) for phase, run in runs]
    return {"steps": steps, "stopped_because": stopped, **knee(steps),
            "recovery": recovery(bench, dropped_at, steps[0], recovery_run, opts)}


def tail_seconds(opts: argparse.Namespace) -> float:
    """How long a stress step's rate is kept after its measurement, before it is judged."""
    return float(min(opts.step / 4, opts.timeout))


def step_figures(figures: dict[str, Any]) -> dict[str, Any]:
    keep = ("rate_rps", "achieved_rps", "requests", "errors", "error_rate", "errors_by_class",
            "all_p50_ms", "all_p95_ms", "all_p99_ms", "server_rss_peak_kb", "server_cpu_cores",
            "loadgen_cpu_cores", "schedule_lag_p99_ms", "routes")
    return {key: figures[key] for key in keep} | {
        "get_customer_p95_ms": figures["routes"][GET_CUSTOMER]["p95_ms"]}


def knee(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The knee: the highest step rate with p99 <= 1 s and errors <= 1 % (``knee_found``
    False: no step failed, the knee is above the last step)."""
    good = [s for s in steps if s["all_p99_ms"] <= 1000 * KNEE_P99_S
            and s["error_rate"] <= KNEE_ERROR_RATE]
    bad = [s for s in steps if s not in good]
    return {"knee_found": bool(bad),
            "knee_rps": good[-1]["achieved_rps"] if good else None,
            "knee_offered_rps": good[-1]["rate_rps"] if good else None,
            "first_failing_offered_rps": bad[0]["rate_rps"] if bad else None,
            "beyond_knee_errors_by_class": bad[0]["errors_by_class"] if bad else None}


def recovery(bench: Bench, dropped_at: float, step0: dict[str, Any], run: dict[str, Any],
             opts: argparse.Namespace) -> dict[str, Any]:
    """GET /kyc/customer p95 per window of flows scheduled after the drop; recovered at the
    end of the first of two windows in a row within 20 % of step 0's p95."""
    samples = [s for s in bench.mix.recorder.of("recovery") if s.route == GET_CUSTOMER]
    base = step0["get_customer_p95_ms"]
    windows = []
    count = max(1, int(opts.recovery // opts.window))
    for index in range(count):
        lo = dropped_at + index * opts.window
        mine = [s.seconds for s in samples if lo <= s.scheduled < lo + opts.window]
        p95 = ms(percentile(sorted(mine), 95))
        windows.append({"end_s": round((index + 1) * opts.window, 1), "requests": len(mine),
                        "p95_ms": p95, "within": bool(mine) and p95 <= RECOVERY_BAND * base})
    after = next((w["end_s"] for w, nxt in zip(windows, [*windows[1:], None], strict=True)
                  if w["within"] and (nxt is None or nxt["within"])), None)
    return {"baseline_get_customer_p95_ms": base, "band": f"<= {RECOVERY_BAND:g} x baseline",
            "recovered_after_s": after,
            "met": None if after is None else after <= RECOVERY_TARGET_S,
            "rate_rps": run["rate_rps"], "windows": windows}


# --- soak -------------------------------------------------------------------------------


async def soak(bench: Bench, opts: argparse.Namespace) -> dict[str, Any]:
    samples: list[dict[str, Any]] = []
    started = time.perf_counter()
    sampler = asyncio.ensure_future(sample_loop(bench, started, opts.sample_every, samples))
    try:
        run = await bench.phase("soak", opts.rate, opts.duration)
        await bench.settle()
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    figures = bench.figures("soak", run)
    callbacks = await drain_callbacks(bench, opts.drain)
    samples.append({"t_s": round(time.perf_counter() - started, 1), "after_drain": True,
                    **server_sample(bench.server, bench.probe), **await scrape(bench.mix)})
    growth = soak_growth([s for s in samples if not s.get("after_drain")], opts.warmup,
                         opts.growth_window)
    growth["metrics_delivery_p99_le_s"] = samples[-1].get("delivery_p99_le_s")
    figures |= {"shortened": True,
                "note": f"SHORTENED soak: {opts.duration / 60:g} min, not the plan's 24 h "
                        "(release gate 72 h)",
                "warmup_s": opts.warmup, "sample_every_s": opts.sample_every,
                "samples": samples, "growth": growth, "callbacks": callbacks}
    figures["verdicts"] = soak_verdicts(growth, callbacks)
    return figures


async def sample_loop(bench: Bench, started: float, every: float,
                      out: list[dict[str, Any]]) -> None:
    while True:
        now = time.perf_counter()
        done = sum(1 for s in bench.mix.recorder.samples if s.phase == "soak")
        out.append({"t_s": round(now - started, 1), "requests_done": done,
                    **server_sample(bench.server, bench.probe), **await scrape(bench.mix)})
        await asyncio.sleep(max(0.0, every - (time.perf_counter() - now)))


def soak_growth(samples: list[dict[str, Any]], warmup: float,
                window: float = GROWTH_WINDOW_S) -> dict[str, Any]:
    """Per resource: the first sample after the warm-up vs the last, the peak, the
    least-squares slope per hour, and the median of the first ``window`` seconds after the
    warm-up vs the median of the last ``window`` seconds (what the RSS verdict uses: one
    RSS sample moves a few MiB either way with the allocator's churn, so two single samples
    can show a growth or a shrink that is only where they fell)."""
    after = [s for s in samples if s["t_s"] >= warmup] or samples[-1:]
    head = [s for s in after if s["t_s"] < after[0]["t_s"] + window]
    tail = [s for s in after if s["t_s"] > after[-1]["t_s"] - window]
    out: dict[str, Any] = {"samples_after_warmup": len(after), "window_s": window,
                           "window_samples": [len(head), len(tail)]}
    for key in ("rss_kb", "fds", "fds_not_clients", "client_connections", "store_connections"):
        first, last = after[0][key], after[-1][key]
        early = statistics.median(s[key] for s in head)
        late = statistics.median(s[key] for s in tail)
        out[key] = {"after_warmup": first, "last": last, "max": max(s[key] for s in after),
                    "growth": last - first,
                    "growth_pct": round(100 * (last - first) / first, 2) if first else None,
                    "median_first_window": early, "median_last_window": late,
                    "window_growth_pct": (round(100 * (late - early) / early, 2)
                                          if early else None),
                    "slope_per_hour": slope_per_hour([(s["t_s"], s[key]) for s in after])}
    pending = [s.get("pending", 0) for s in after]
    out["outbox_pending_max"] = max(pending, default=0)
    return out


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour; 0.0 for fewer than two."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return round(3600 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread, 1)


async def drain_callbacks(bench: Bench, limit: float) -> dict[str, Any]:
    """After the load: wait (up to ``limit`` s) until every event in the tenants' outboxes
    has arrived at the receiver, then compare the two (lost = created, not received)."""
    mix = bench.mix
    deadline = time.perf_counter() + limit
    while True:
        states: Counter[str] = Counter()
        created: set[str] = set()
        for pool in mix.pools:
            await outbox_events(mix, pool, states, created)
        if created <= mix.receiver.event_ids or time.perf_counter() > deadline:
            break
        await asyncio.sleep(1.0)
    arrived = [c for c in mix.callback_put_sent if c in mix.receiver.first_seen]
    lags = sorted(mix.receiver.first_seen[c] - mix.callback_put_sent[c] for c in arrived)
    return {"expected_by_client": len(mix.callback_put_sent),
            "created_in_outbox": len(created), "outbox_states": dict(states),
            "received_events": len(mix.receiver.event_ids),
            "received_posts": mix.receiver.posts,
            "lost": len(created - mix.receiver.event_ids),
            "customers_not_called_back": len(mix.callback_put_sent) - len(arrived),
            "lag_p50_s": round(percentile(lags, 50), 3),
            "lag_p99_s": round(percentile(lags, 99), 3),
            "lag_max_s": round(lags[-1], 3) if lags else 0.0}


async def outbox_events(mix: Mix, pool: TenantPool, states: Counter[str],
                        ids: set[str]) -> None:
    """Every event of the tenant's outbox, counted by state (paging the management API)."""
    conn = Connection(mix.admin_port, timeout=30)
    cursor = ""
    try:
        while True:
            page = await conn.request(
                "GET", f"/api/v1/tenants/{pool.tenant.id}/callbacks?limit=200{cursor}",
                "127.0.0.1", headers=bearer(pool.admin_token))
            if page.status != 200:
                raise HttpError(f"callbacks list: {page.status} {page.body[:200]!r}")
            data = page.json()
            events = data["events"]
            if not isinstance(events, list):
                raise HttpError(f"callbacks list: no events in {page.body[:200]!r}")
            states.update(str(e["state"]) for e in events)
            ids.update(str(e["id"]) for e in events)
            if not data.get("next_cursor"):
                return
            cursor = f"&cursor={data['next_cursor']}"
    finally:
        await conn.close()


def soak_verdicts(growth: dict[str, Any], callbacks: dict[str, Any]) -> list[dict[str, Any]]:
    rss = growth["rss_kb"]["window_growth_pct"]
    return [
        {"figure": "RSS growth after warm-up", "value": rss, "target": "< 10 %",
         "measured": "median of the last window vs median of the first after warm-up",
         "met": None if rss is None else rss < 100 * SOAK_RSS_GROWTH},
        {"figure": "fd growth (clients' connections aside)",
         "value": growth["fds_not_clients"]["growth"], "target": "0",
         "met": growth["fds_not_clients"]["growth"] <= 0},
        {"figure": "store connection growth", "value": growth["store_connections"]["growth"],
         "target": "0", "met": growth["store_connections"]["growth"] <= 0},
        {"figure": "callback lag p99 (s)", "value": callbacks["lag_p99_s"], "target": "< 30 s",
         "met": callbacks["lag_p99_s"] < SOAK_LAG_P99_S},
        {"figure": "lost callbacks", "value": callbacks["lost"], "target": "0",
         "met": callbacks["lost"] == 0 and callbacks["customers_not_called_back"] == 0}]


# --- running it -------------------------------------------------------------------------


@contextlib.contextmanager
def deployment(opts: argparse.Namespace, workdir: Path,
               horizon: HorizonStub) -> Iterator[tuple[ServerProcess, StoreProbe]]:
    """The server with the two mix tenants, on SQLite or FerretDB."""
    with contextlib.ExitStack() as stack:
        mongo_base, probe = None, StoreProbe(opts.backend)
        if opts.backend == "mongo":
            mongo_base, probe.pid = stack.enter_context(mongo_server(workdir / "ferretdb"))
            probe.mongo_port = int(mongo_base.rsplit(":", 1)[1])
        deploy = Deployment(workdir / "server", storage_url(opts.backend, workdir, mongo_base),
                            log_level="warning")
        deploy.workdir.mkdir(parents=True, exist_ok=True)
        probe.sqlite_path = str(workdir / "store.db")
        write_tenants(deploy.tenants_dir, horizon.url, opts.upload_pacing)
        server = ServerProcess(deploy, workers=opts.workers)
        server.start(timeout=300)
        try:
            yield server, probe
        finally:
            server.stop()


async def scenario(opts: argparse.Namespace, server: ServerProcess,
                   probe: StoreProbe) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    tenants = [bench_tenant(i, "mix") for i in range(2)]
    pools = [TenantPool(t, [Keypair.random() for _ in range(opts.wallets)]) for t in tenants]
    started = time.perf_counter()
    for pool in pools:
        pool.admin_token = await asyncio.to_thread(admin_token, server, pool.tenant.id)
        await seed(server.public_port, pool)
    setup_s = round(time.perf_counter() - started, 1)
    say(f"set-up: {2 * opts.wallets} wallets logged in with a customer each in {setup_s} s")
    receiver = Receiver()
    receiver.start()
    mix = Mix(opts, server.public_port, server.admin_port, pools,
              Slots(server.public_port, opts.connections, opts.timeout), receiver, rng,
              upload=UploadBody(0, jpeg_of_size(opts.multipart_bytes)))
    bench = Bench(mix, server, probe)
    try:
        run = {"baseline": baseline, "stress": stress, "soak": soak}[opts.mode]
        figures = await run(bench, opts)
    finally:
        await mix.slots.close()
        if mix.admin is not None:
            await mix.admin.close()
        receiver.stop()
    return {"setup_s": setup_s, "flows": dict(sorted(mix.recorder.flows.items())),
            "first_error": mix.recorder.first_error, opts.mode: figures}


def uptime() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False,
                              timeout=5).stdout.strip()
    return ""


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None
                         else [sys.executable, __file__, *argv])
    report: dict[str, Any] = {
        "benchmark": "load_mix", "mode": opts.mode, "command": command,
        "backend": opts.backend, "smoke": opts.smoke, "machine": machine_info(),
        "commit": git_commit(), "uptime_before": uptime(),
        "settings": {"rate_rps": opts.rate, "duration_s": opts.duration, "step_s": opts.step,
                     "step_tail_s": tail_seconds(opts),
                     "max_steps": opts.max_steps, "recovery_s": opts.recovery,
                     "workers": opts.workers, "wallets_per_tenant": opts.wallets,
                     "tenants": 2, "connections": opts.connections, "timeout_s": opts.timeout,
                     "multipart_bytes": opts.multipart_bytes,
                     "horizon_delay_s": opts.horizon_delay,
                     "callback_share": opts.callback_share, "weights_pct": WEIGHTS,
                     "requests_per_flow": round(requests_per_flow(opts.callback_share), 3),
                     "rate_limits": False,
                     "tenant_upload_bytes_per_second": opts.upload_pacing or "default"}}
    workdir = Path(tempfile.mkdtemp(prefix="kyc-mix-"))
    horizon = HorizonStub(delay=opts.horizon_delay)
    horizon.start()
    try:
        with deployment(opts, workdir, horizon) as (server, probe):
            try:
                report |= asyncio.run(scenario(opts, server, probe))
            except (HttpError, OSError) as exc:
                say(f"benchmark failed: {exc!r}\n{server.log_tail()}")
                return 1
            report["server_errors_logged"] = len(server.errors_logged())
    finally:
        horizon.stop()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report["uptime_after"] = uptime()
    print_report(report)
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


# --- the printed table ------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    settings, mode = report["settings"], report["mode"]
    say(f"\nload_mix {mode}{' (SMOKE)' if report['smoke'] else ''}: backend "
        f"{report['backend']}, {settings['workers']} worker(s), 2 tenants x "
        f"{settings['wallets_per_tenant']} wallets, Horizon stub "
        f"{1000 * settings['horizon_delay_s']:g} ms, multipart {settings['multipart_bytes']} B, "
        f"rate limits off, upload pacing {settings['tenant_upload_bytes_per_second']} B/s")
    say(f"machine: {report['machine']['nproc']} CPUs; before: {report['uptime_before']}")
    say(f"         after:  {report['uptime_after']}")
    figures = report[mode]
    if mode == "stress":
        print_stress(figures)
    else:
        if mode == "soak":
            say(figures["note"])
        print_phase(figures)
        print_verdicts(figures["verdicts"])
        if mode == "baseline":
            say(f"requests of a busy tenant that let the other go first (set-up included): "
                f"{figures['busy_turns']}")
    if mode == "soak":
        print_soak(figures)
    say(f"flows: {report['flows']}; server errors logged: {report['server_errors_logged']}")
    for route, error in report["first_error"].items():
        say(f"  first error on {route}: {error}")


def print_phase(figures: dict[str, Any]) -> None:
    say(f"offered {figures['rate_rps']} req/s for {figures['seconds']} s: achieved "
        f"{figures['achieved_rps']} req/s, {figures['requests']} requests, errors "
        f"{figures['errors']} ({100 * figures['error_rate']:.3f} %) {figures['errors_by_class']}")
    store = figures["store_cpu_cores"]
    say(f"server CPU {figures['server_cpu_cores']} cores"
        f"{'' if store is None else f' (FerretDB {store} more)'}, RSS peak "
        f"{figures['server_rss_peak_kb'] / 1024:.0f} MiB; load generator CPU "
        f"{figures['loadgen_cpu_cores']} cores, schedule lag p99 "
        f"{figures['schedule_lag_p99_ms']} ms")
    say(f"{'route':<26}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        "  statuses")
    for route, row in figures["routes"].items():
        say(f"{route:<26}{row['requests']:>9}{row['p50_ms']:>9}{row['p95_ms']:>9}"
            f"{row['p99_ms']:>9}{row['max_ms']:>9}  {row['statuses']}")


def print_verdicts(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        value = row.get("value_ms", row.get("value"))
        verdict = {True: "met", False: "MISSED", None: row.get("note") or "n/a"}[row["met"]]
        say(f"  {row['figure']:<34} {value!s:>10}  target {row['target']}: {verdict}")


def print_stress(figures: dict[str, Any]) -> None:
    say(f"{'offered':>8}{'achieved':>9}{'p99 ms':>9}{'errors':>8}{'shed':>6}{'timeout':>8}"
        f"{'5xx':>5}{'conn':>6}{'4xx':>5}{'RSS MiB':>9}{'lag p99':>9}")
    for step in figures["steps"]:
        by = step["errors_by_class"]
        say(f"{step['rate_rps']:>8}{step['achieved_rps']:>9}{step['all_p99_ms']:>9.0f}"
            f"{step['errors']:>8}{by['shed']:>6}{by['timeout']:>8}{by['5xx']:>5}"
            f"{by['connection']:>6}{by['4xx']:>5}{step['server_rss_peak_kb'] / 1024:>9.0f}"
            f"{step['schedule_lag_p99_ms']:>9.0f}")
    rec = figures["recovery"]
    found = "" if figures["knee_found"] else "NOT REACHED, above "
    say(f"stopped: {figures['stopped_because']}; knee {found}{figures['knee_rps']} req/s achieved "
        f"(offered {figures['knee_offered_rps']}); first failing offered "
        f"{figures['first_failing_offered_rps']}")
    say(f"recovery at {rec['rate_rps']} req/s: GET /customer p95 back {rec['band']} "
        f"({rec['baseline_get_customer_p95_ms']} ms) after {rec['recovered_after_s']} s "
        f"(target <= 60 s: {rec['met']}); windows p95 "
        f"{[w['p95_ms'] for w in rec['windows']]}")


def print_soak(figures: dict[str, Any]) -> None:
    growth, cb = figures["growth"], figures["callbacks"]
    for key in ("rss_kb", "fds", "fds_not_clients", "client_connections", "store_connections"):
        row = growth[key]
        say(f"  {key:<18} after warm-up {row['after_warmup']}, last {row['last']}, max "
            f"{row['max']}, growth {row['growth']} ({row['growth_pct']} %); medians of the "
            f"first and last {growth['window_s']:g} s {row['median_first_window']} -> "
            f"{row['median_last_window']} ({row['window_growth_pct']} %); slope "
            f"{row['slope_per_hour']}/h")
    say(f"  callbacks: expected {cb['expected_by_client']}, in outbox {cb['created_in_outbox']} "
        f"{cb['outbox_states']}, received {cb['received_events']} ({cb['received_posts']} "
        f"posts), lost {cb['lost']}; lag p50/p99/max {cb['lag_p50_s']}/{cb['lag_p99_s']}/"
        f"{cb['lag_max_s']} s; outbox pending max {growth['outbox_pending_max']}, server's "
        f"delivery histogram p99 <= {growth['metrics_delivery_p99_le_s']} s")


if __name__ == "__main__":
    sys.exit(main())
