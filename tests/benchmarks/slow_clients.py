"""Slow clients (reliability-plan L5, issue 9): do idle and trickling connections slow the rest?

    python tests/benchmarks/slow_clients.py --json slow.json     # SQLite, 3 rounds x 20 s
    python tests/benchmarks/slow_clients.py --seconds 90 --rounds 2   # past the idle and
                                                                      # body timeouts
    python tests/benchmarks/slow_clients.py --smoke              # tiny: checks it works

One real ``kyc-host serve`` process (1 worker) hosts two tenants, A and B, with the shipped
connection timers (``header_timeout_seconds`` 10, ``idle_timeout_seconds`` 60,
``body_timeout_seconds`` 60; ``--idle-timeout`` and ``--body-timeout`` set others) and the
benchmarks' settings otherwise (rate limits off: every simulated client comes from 127.0.0.1).

Each of ``--rounds`` rounds has two phases, interleaved so that the machine's other load
drifts over both alike:

- **quiet**: the healthy clients are measured for ``--seconds``: ``GET /kyc/customer`` open
  loop at ``--rate`` per second in all (the L1 throughput target of one process, 200/s),
  half to A's wallets and half to B's, each on a pool of keep-alive connections, each
  latency counted from the moment its request was due (noisy_neighbour.measure_b);
- **slow**: the same, while a worker process (at ``--niceness``, standing in for clients on
  other machines) holds L5's slow clients, all in place before the measurement starts:
  ``--idle`` (1,000) keep-alive connections that were each served one ``GET
  /.well-known/stellar.toml`` (half on A's host, half on B's) and then send nothing, and
  ``--trickles`` (200) uploads (``POST /kyc/customer/files`` with a wallet token of A, a
  ``--trickle-bytes`` PNG declared by ``Content-Length``) whose bodies arrive at
  ``--trickle-rate`` bytes per second (1 KB/s, in a piece every ``--trickle-every`` 0.25 s).
  The worker keeps those counts: a connection the server ends (its idle or body timer, or a
  408 for an upload that could not arrive before that timer) is opened again, as a client
  would reconnect. ``--ramp`` spreads the openings (and so the server's closings) over that
  many seconds.

Prints and writes (``--json``) the healthy clients' p50/p95/p99 per phase, pooled and per
tenant, the p95 ratio slow/quiet (target: within 20 %, i.e. <= 1.2), pooled and per round,
their errors, the server's event-loop lag samples over 100 ms per phase (target: none), its
sockets and RSS in each phase, and what the slow clients met: idle connections closed by
the server, uploads cut by the body timer or answered. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_client import Connection, HttpError, customer_fields, put_customer  # noqa: E402
from bench_server import (  # noqa: E402
    Deployment,
    HorizonStub,
    ServerProcess,
    WorkerProcess,
    child_limits,
    cpu_seconds,
    mongo_server,
    status_kb,
    storage_url,
    write_tenants,
)
from noisy_neighbour import (  # noqa: E402
    Phase,
    lag_delta,
    loads,
    loop_lag,
    measure_b,
    say,
    wallets,
)

#: Each slow client's outcome, counted by the worker: see :func:`idle_client`, :func:`trickle`.
Outcomes = dict[str, int]


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "mongo"), default="sqlite")
    parser.add_argument("--seconds", type=float,
                        help="length of each phase (default 20; 1 with --smoke)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="quiet/slow phase pairs, interleaved")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="healthy GET /kyc/customer per second, open loop, half to each "
                             "tenant (the L1 throughput target of one process)")
    parser.add_argument("--clients", type=int, default=16,
                        help="healthy keep-alive connections, half per tenant")
    parser.add_argument("--idle", type=int, default=1000,
                        help="idle keep-alive connections held in the slow phase (L5: 1,000)")
    parser.add_argument("--trickles", type=int, default=200,
                        help="uploads trickling in the slow phase (L5: 200)")
    parser.add_argument("--trickle-bytes", type=int, default=100 * 1024,
                        help="declared size of each trickled upload (default: more than "
                             "the body timer lets through at the trickle rate)")
    parser.add_argument("--trickle-rate", type=float, default=1024.0,
                        help="body bytes per second of each trickled upload (L5: 1 KB/s)")
    parser.add_argument("--trickle-every", type=float, default=0.25,
                        help="seconds between the pieces of a trickled body (each piece "
                             "--trickle-rate x this many bytes)")
    parser.add_argument("--ramp", type=float, default=5.0,
                        help="seconds over which the slow clients open their connections")
    parser.add_argument("--idle-timeout", type=float,
                        help="the server's idle_timeout_seconds (default: the shipped 60)")
    parser.add_argument("--body-timeout", type=float,
                        help="the server's body_timeout_seconds (default: the shipped 60)")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=VALUE",
                        help="another server setting (VALUE in TOML), e.g. "
                             "busy_tenant_requests=0; repeatable")
    parser.add_argument("--niceness", type=int, default=19,
                        help="CPU niceness of the slow clients' worker process")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--smoke", action="store_true",
                        help="1 s phases, few connections: checks that the command works")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.rounds, opts.ramp = 1, 0.5
        opts.rate, opts.clients = min(opts.rate, 40.0), min(opts.clients, 4)
        opts.idle, opts.trickles = min(opts.idle, 40), min(opts.trickles, 8)
    if opts.seconds is None:
        opts.seconds = 1.0 if opts.smoke else 20.0
    if opts.clients < 2 or opts.rate <= 0:
        parser.error("--clients must be at least 2 and --rate above 0 (half per tenant)")
    if any("=" not in setting for setting in opts.setting):
        parser.error("--setting takes NAME=VALUE")
    if opts.trickle_rate * opts.trickle_every < 1:
        parser.error("--trickle-rate x --trickle-every must be at least 1 byte")
    return opts


# --- the slow clients (worker process) --------------------------------------------------


def count(outcomes: Outcomes, key: str) -> None:
    outcomes[key] = outcomes.get(key, 0) + 1


async def _first(stop: asyncio.Event, work: asyncio.Future[Any]) -> bool:
    """Wait until ``work`` is done or ``stop`` is set; True if ``work`` finished first."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([work, stopping], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    return work.done()


async def _status_of(head: asyncio.Future[bytes]) -> str:
    """An answer's status code, or ``cut``: closed without one."""
    try:
        line = (await head).split(b"\r\n", 1)[0]
        return line.split(b" ", 2)[1].decode()
    except (asyncio.IncompleteReadError, OSError, IndexError):
        return "cut"


async def idle_client(port: int, host: str, stop: asyncio.Event, outcomes: Outcomes,
                      opened: asyncio.Event | None) -> None:
    """One idle keep-alive connection, for as long as ``stop`` is not set: served one GET
    stellar.toml, then silent until the server closes it (counted ``closed_by_server``),
    then opened again. ``opened`` is set once the first connection was served."""
    request = (f"GET /.well-known/stellar.toml HTTP/1.1\r\nHost: {host}\r\n\r\n").encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            count(outcomes, "connect_error")
            await asyncio.sleep(1.0)
            continue
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            count(outcomes, f"served_{head.split(b' ', 2)[1].decode()}")
            if opened is not None:
                opened.set()
                opened = None
            if await _first(stop, asyncio.ensure_future(reader.read(1))):
                count(outcomes, "closed_by_server")
        except (OSError, asyncio.IncompleteReadError):
            count(outcomes, "connection_error")
        finally:
            writer.close()


def png_body(size: int, boundary: str) -> bytes:
    """A multipart body with one ``file`` part: a PNG by its signature, ``size`` long."""
    image = b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8)
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"id.png\"\r\nContent-Type: image/png\r\n\r\n").encode() + image + (
            f"\r\n--{boundary}--\r\n").encode()


async def trickle(port: int, host: str, token: str, body: bytes, rate: float, every: float,
                  stop: asyncio.Event, outcomes: Outcomes, started: asyncio.Event | None,
                  sent: list[int]) -> None:
    """One upload at a time, its body sent at ``rate`` bytes per second in a piece every
    ``every`` seconds, until ``stop``. Outcomes: ``cut`` (the server closed the connection without
    an answer: its body timer), the answer's status (408: the rest could not arrive before
    that timer; a refusal before the body was read; an upload that finished), ``trickling``
    (still sending when stopped)."""
    boundary = body[2:body.index(b"\r\n")].decode()
    head = (f"POST /kyc/customer/files HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    piece = max(1, int(rate * every))
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            count(outcomes, "connect_error")
            await asyncio.sleep(1.0)
            continue
        answer = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
        try:
            writer.write(head)
            if started is not None:
                started.set()
                started = None
            offset = 0
            while offset < len(body) and not answer.done() and not stop.is_set():
                writer.write(body[offset:offset + piece])
                offset += piece
                sent[0] += piece
                await writer.drain()
                await asyncio.wait([answer], timeout=every)
            if answer.done() or (offset >= len(body) and await _first(stop, answer)):
                count(outcomes, await _status_of(answer))
            else:
                count(outcomes, "trickling")
        except OSError:
            count(outcomes, "cut")
        finally:
            answer.cancel()
            writer.close()


async def slow_worker() -> None:
    """``--slow-worker``: holds the slow clients of one slow phase. Reads a JSON spec line on
    stdin, prints ``ready`` once every client has opened its connection (spread over the
    spec's ``ramp`` seconds), runs until ``stop`` arrives, then prints the outcomes as JSON."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    spec = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    stop = asyncio.Event()
    idle: Outcomes = {}
    uploads: Outcomes = {}
    sent = [0]
    ready: list[asyncio.Event] = []
    tasks = []
    port, hosts, tokens = spec["port"], spec["hosts"], spec["tokens"]
    body = png_body(spec["trickle_bytes"], "kycslow")
    total = spec["idle"] + spec["trickles"]
    for index in range(total):
        event = asyncio.Event()
        ready.append(event)
        if index < spec["idle"]:
            tasks.append(asyncio.ensure_future(
                idle_client(port, hosts[index % 2], stop, idle, event)))
        else:
            serial = index - spec["idle"]
            tasks.append(asyncio.ensure_future(
                trickle(port, hosts[0], tokens[serial % len(tokens)], body,
                        spec["trickle_rate"], spec["trickle_every"], stop, uploads, event,
                        sent)))
        await asyncio.sleep(spec["ramp"] / total)
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 60)
    say("ready")
    await loop.run_in_executor(None, sys.stdin.readline)  # "stop" (or EOF)
    stop.set()
    await asyncio.gather(*tasks)
    say(json.dumps({"idle": idle, "uploads": uploads, "upload_bytes_sent": sent[0],
                    "fd_limit": [soft, hard]}))


@dataclasses.dataclass
class TimedDeployment(Deployment):
    """The benchmarks' deployment, with the settings the command line asks for."""

    settings: dict[str, str] = dataclasses.field(default_factory=dict)

    def write_config(self, public_port: int, admin_port: int,
                     tenants_dir: Path | None = None) -> Path:
        config = super().write_config(public_port, admin_port, tenants_dir)
        with config.open("a") as fh:
            fh.writelines(f"{name} = {value}\n" for name, value in self.settings.items())
        return config


def server_settings(opts: argparse.Namespace) -> dict[str, str]:
    """The settings the command line changes (TOML values), beyond the benchmarks' own."""
    chosen = {f"{name}_timeout_seconds": repr(value)
              for name, value in (("idle", opts.idle_timeout), ("body", opts.body_timeout))
              if value is not None}
    chosen.update(setting.split("=", 1) for setting in opts.setting)
    return chosen


# --- measuring --------------------------------------------------------------------------


def sockets(pids: list[int]) -> int:
    """Open sockets of ``pids`` (from /proc/<pid>/fd)."""
    total = 0
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        with contextlib.suppress(OSError):
            for fd in fds.iterdir():
                with contextlib.suppress(OSError):
                    total += os.readlink(fd).startswith("socket:")
    return total


def rss_mib(pids: list[int]) -> float:
    return round(sum(status_kb(p, "VmRSS") for p in pids) / 1024, 1)


async def healthy(server: ServerProcess, tokens: dict[str, list[str]],
                  opts: argparse.Namespace, phases: dict[str, Phase], **extra: Any) -> None:
    """Both tenants' healthy clients for one phase, at once; adds a round to ``phases``
    (``both`` pooled, and one per host)."""
    hosts = list(tokens)
    load = os.getloadavg()[0]
    lag0 = loop_lag(server.admin_port)
    cpu0 = sum(cpu_seconds(p) for p in server.all_pids())
    results = await asyncio.gather(*(
        measure_b(server.public_port, tokens[host], opts.seconds, opts.clients // 2,
                  opts.rate / 2, host=host) for host in hosts))
    lag = lag_delta(lag0, loop_lag(server.admin_port))
    pids = server.all_pids()
    cores = (sum(cpu_seconds(p) for p in pids) - cpu0) / opts.seconds
    extra = {**extra, "load_average_1m": load, "loop_lag": lag,
             "server_cores": round(cores, 3),
             "server_sockets": sockets(pids), "server_rss_mib": rss_mib(pids)}
    for host, (latencies, statuses) in zip(hosts, results, strict=True):
        phases[host].add(latencies, statuses, opts.seconds)
    phases["both"].add([x for r in results for x in r[0]],
                       {s: sum(r[1].get(s, 0) for r in results)
                        for s in {s for r in results for s in r[1]}},
                       opts.seconds, **extra)


async def scenario(server: ServerProcess, hosts: list[str],
                   opts: argparse.Namespace) -> dict[str, Any]:
    port = server.public_port
    tokens = {host: await wallets(port, host, 8) for host in hosts}
    conn = Connection(port)
    try:
        for host in hosts:
            for serial, token in enumerate(tokens[host]):
                await put_customer(conn, host, token, customer_fields(serial))
    finally:
        await conn.close()
    upload_tokens = await wallets(port, hosts[0], min(opts.trickles, 200))
    spec = {"port": port, "hosts": hosts, "tokens": upload_tokens, "idle": opts.idle,
            "trickles": opts.trickles, "trickle_bytes": opts.trickle_bytes,
            "trickle_rate": opts.trickle_rate, "trickle_every": opts.trickle_every,
            "ramp": opts.ramp}
    await asyncio.gather(*(measure_b(port, tokens[h], min(1.0, opts.seconds), 2, 20.0, host=h)
                           for h in hosts))  # warm-up
    quiet = {key: Phase() for key in ("both", *hosts)}
    slow = {key: Phase() for key in ("both", *hosts)}
    for _ in range(opts.rounds):
        await healthy(server, tokens, opts, quiet)
        worker = await WorkerProcess.start(__file__, "--slow-worker", spec,
                                           child_limits(opts.niceness))
        try:
            await asyncio.sleep(1.0)
            await healthy(server, tokens, opts, slow)
        finally:
            outcome = await worker.stop()
        slow["both"].rounds[-1]["slow_clients"] = outcome
        await asyncio.sleep(2.0)  # the server sees the slow clients' connections go
    q, s = quiet["both"].figures(), slow["both"].figures()
    ratio = s["p95_ms"] / q["p95_ms"] if q["p95_ms"] else None
    error_rate = s["errors"] / s["requests"] if s["requests"] else None
    stalls = sum(r["loop_lag"]["over_100ms"] for r in s["rounds"])
    return {
        "quiet": q, "slow": s,
        "by_tenant": {host: {"quiet": quiet[host].figures(), "slow": slow[host].figures()}
                      for host in hosts},
        "p95_ratio": None if ratio is None else round(ratio, 3),
        "round_p95_ratios": [round(b["p95_ms"] / a["p95_ms"], 3) if a["p95_ms"] else None
                             for a, b in zip(q["rounds"], s["rounds"], strict=True)],
        "tenant_p95_ratios": {
            host: round(slow[host].figures()["p95_ms"] / quiet[host].figures()["p95_ms"], 3)
            for host in hosts if quiet[host].figures()["p95_ms"]},
        "target": "slow p95 <= 1.2 x quiet p95 (L5: healthy clients keep their L1 p95 "
                  "within 20 %); no event-loop stall over 100 ms",
        "meets_target": None if ratio is None else ratio <= 1.2,
        "slow_error_rate": error_rate,
        "loop_lag_samples_over_100ms_slow": stalls,
    }


def print_table(report: dict[str, Any]) -> None:
    quiet, slow = report["quiet"], report["slow"]
    say(f"slow clients: backend {report['backend']}, {report['rounds']} rounds x "
        f"{report['seconds']} s per phase; healthy GET /kyc/customer open loop at "
        f"{report['rate_per_s']:g}/s (half per tenant) on {report['clients']} connections; "
        f"slow phase: {report['idle']} idle keep-alive connections + {report['trickles']} "
        f"uploads of {report['trickle_bytes']} bytes at {report['trickle_rate']:g} B/s "
        f"(a piece every {report['trickle_every']:g} s), opened over {report['ramp']:g} s "
        f"(worker at nice {report['niceness']}); server settings "
        f"{report['server_settings'] or 'as shipped'}; load 1/5/15 min before "
        f"{report['load_before']} after {report['load_after']}")
    say(f"{'healthy GET':<16}{'requests':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'errors':>8}")
    for name, phase in (("quiet", quiet), ("slow", slow)):
        say(f"{name:<16}{phase['requests']:>9}{phase['p50_ms']:>9}{phase['p95_ms']:>9}"
            f"{phase['p99_ms']:>9}{phase['errors']:>8}")
    say(f"p95 ratio slow/quiet {report['p95_ratio']} (target <= 1.2: "
        f"{'met' if report['meets_target'] else 'NOT met'}); per round "
        f"{report['round_p95_ratios']}; per tenant {report['tenant_p95_ratios']}; "
        f"loop-lag samples over 100 ms in the slow phases: "
        f"{report['loop_lag_samples_over_100ms_slow']:g}")
    for index, (q, s) in enumerate(zip(quiet["rounds"], slow["rounds"], strict=True)):
        clients = s["slow_clients"]
        say(f"  round {index + 1}: quiet p95 {q['p95_ms']} ms ({q['server_sockets']} sockets, "
            f"{q['server_rss_mib']} MiB, {q['server_cores']} cores), slow p95 {s['p95_ms']} ms "
            f"({s['server_sockets']} sockets, {s['server_rss_mib']} MiB, {s['server_cores']} "
            f"cores); loop lag over 10/100 ms quiet "
            f"{q['loop_lag']['over_10ms']:g}/{q['loop_lag']['over_100ms']:g}, slow "
            f"{s['loop_lag']['over_10ms']:g}/{s['loop_lag']['over_100ms']:g} of "
            f"{s['loop_lag']['samples']:g} (largest so far {s['loop_lag']['process_max_ms']} "
            f"ms); idle clients {clients['idle']}; uploads {clients['uploads']}, "
            f"{clients['upload_bytes_sent']} body bytes sent")


def main(argv: list[str] | None = None) -> int:
    if (sys.argv[1:] if argv is None else argv) == ["--slow-worker"]:
        asyncio.run(slow_worker())
        return 0
    opts = parse(argv)
    command = shlex.join([sys.executable, *sys.argv] if argv is None
                         else [sys.executable, __file__, *argv])
    load_before = loads()
    workdir = Path(tempfile.mkdtemp(prefix="kyc-slow-"))
    horizon = HorizonStub()
    horizon.start()
    try:
        with contextlib.ExitStack() as stack:
            mongo_base = None
            if opts.backend == "mongo":
                mongo_base, _ = stack.enter_context(mongo_server(workdir / "ferretdb"))
            deploy = TimedDeployment(workdir, storage_url(opts.backend, workdir, mongo_base),
                                     settings=server_settings(opts))
            hosts = [t.host for t in write_tenants(deploy.tenants_dir, 2, horizon.url, "s")]
            server = ServerProcess(deploy, workers=1)
            server.start(timeout=120)
            stack.callback(server.stop)
            try:
                figures = asyncio.run(scenario(server, hosts, opts))
            except (HttpError, OSError, TimeoutError, RuntimeError) as exc:
                say(f"benchmark failed: {exc!r}\n{server.log_tail()}")
                return 1
            figures["server_errors_logged"] = len(server.errors_logged())
    finally:
        horizon.stop()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "slow_clients", "command": command, "backend": opts.backend,
              "seconds": opts.seconds, "rounds": opts.rounds, "rate_per_s": opts.rate,
              "clients": opts.clients, "idle": opts.idle, "trickles": opts.trickles,
              "trickle_bytes": opts.trickle_bytes, "trickle_rate": opts.trickle_rate,
              "trickle_every": opts.trickle_every, "ramp": opts.ramp,
              "niceness": opts.niceness, "hosts": hosts,
              "server_settings": server_settings(opts),
              "load_before": load_before, "load_after": loads(),
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              **figures}
    print_table(report)
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
