"""Noisy neighbour (reliability-plan L4/F8, issue 9): does tenant A's trouble slow tenant B?

    python tests/benchmarks/noisy_neighbour.py                     # SQLite, 3 rounds of 5 s
    python tests/benchmarks/noisy_neighbour.py --backend mongo --json noisy.json
    python tests/benchmarks/noisy_neighbour.py --plugin sleep      # A's hook sleeps, not spins
    python tests/benchmarks/noisy_neighbour.py --smoke             # tiny: checks it works

One real ``kyc-host serve`` process (1 worker) hosts two tenants:

- **A** (noisy): its plugin is marked untrusted (``[plugin_isolation] mode = "process"``) and
  its ``get`` hook never returns: it spins on CPU (``--plugin spin``, the worst case on a
  shared machine) or blocks in ``time.sleep`` (``--plugin sleep``). A's hook timeout is 2 s.
  A's tenant file also sets tight rate limits (``[limits]``, issue 9 item 2).
- **B** (victim): the demo plugin, in-process.

Each of ``--rounds`` rounds has two phases, in the same run and interleaved so that the
shared machine's other load drifts over both alike. Quiet: B's ``GET /kyc/customer`` latency
from ``--clients`` keep-alive connections for ``--seconds``. Noisy: wrk floods A with
``GET /kyc/customer`` on ``--flood-connections`` connections (every request enters the
hanging hook and is answered 500 at its timeout) and a second wrk floods A's
``PUT /kyc/customer`` (new data each time) past A's rate limit (429); B is measured again the
same way meanwhile. Prints B's p95 over all quiet and all noisy phases, their ratio (target:
within 20 %, i.e. <= 1.2) and each round's, with the load average and the CPU spent by the
server and by A's plugin workers; writes JSON. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_client import (  # noqa: E402
    Connection,
    HttpError,
    bearer,
    customer_fields,
    login,
    percentile,
    put_customer,
)
from bench_server import (  # noqa: E402
    CLK_TCK,
    ROOT,
    Deployment,
    HorizonStub,
    ServerProcess,
    children,
    cpu_seconds,
    mongo_server,
    storage_url,
)
from bench_wrk import RequestSet, WrkResult, run_wrk  # noqa: E402
from stellar_sdk import Keypair  # noqa: E402

A_HOST, B_HOST = "noisy.bench.localhost", "victim.bench.localhost"
HOOK_TIMEOUT = 2.0

NOISY_PLUGIN = '''
import time

from kyc_host.hooks import CustomerHooks


class Hooks(CustomerHooks):
    """Every GET hook runs forever: busy CPU ("spin") or a blocked loop ("sleep")."""

    async def get(self, ctx, request, result):
        end = time.monotonic() + 600
        if ctx.settings.get("mode") == "spin":
            while time.monotonic() < end:
                pass
        time.sleep(600)
        return result
'''


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def tenant_file(tenant_id: str, host: str, horizon: str, extra: str) -> str:
    return f'''id = "{tenant_id}"
hosts = ["{host}"]
home_domain = "{host}"
network = "testnet"
horizon_url = "{horizon}"
{extra}
[customer_types.individual]
required = ["first_name", "last_name", "email_address"]
optional = ["mobile_number", "birth_date"]
'''


def noisy_extra(mode: str) -> str:
    # Logins of the benchmark's own wallets must pass; the PUT flood must not.
    return f'''plugin = "noisy"

[plugin_isolation]
mode = "process"
workers = 2

[plugin_settings]
mode = "{mode}"

[limits]
hook_timeout_seconds = {HOOK_TIMEOUT}
auth_per_ip = "600/min"
auth_per_account = "600/min"
customer_puts_per_ip = "60/min"
customer_puts_per_account = "10/min"
'''


VICTIM_EXTRA = '''plugin = "demo_anchor"
[limits]
auth_per_ip = "600/min"
auth_per_account = "600/min"
'''


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "mongo"), default="sqlite")
    parser.add_argument("--plugin", choices=("spin", "sleep"), default="spin")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3,
                        help="quiet/noisy phase pairs, interleaved")
    parser.add_argument("--clients", type=int, default=4, help="B's keep-alive connections")
    parser.add_argument("--flood-connections", type=int, default=64)
    parser.add_argument("--put-rate", type=float, default=5.0,
                        help="A's PUT /kyc/customer per second, paced: 5 x its 60/min limit "
                             "(reliability-plan L4); 0: none")
    parser.add_argument("--put-flood-connections", type=int, default=0,
                        help="also flood A's PUT with wrk at full speed (all 429)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument("--smoke", action="store_true",
                        help="1 s phases, few connections: checks that the command works")
    opts = parser.parse_args(argv)
    if opts.smoke:
        opts.seconds, opts.clients, opts.flood_connections, opts.rounds = 1.0, 2, 4, 1
        opts.put_flood_connections = min(opts.put_flood_connections, 1)
    return opts


async def wallets(port: int, host: str, count: int) -> list[str]:
    """``count`` fresh wallets logged in on ``host`` (SEP-10 via the Horizon stub)."""
    conn = Connection(port)
    try:
        return [(await login(conn, host, Keypair.random()))[0] for _ in range(count)]
    finally:
        await conn.close()


async def measure_b(port: int, tokens: list[str], seconds: float,
                    clients: int) -> tuple[list[float], dict[int, int]]:
    """B's GET /kyc/customer latencies (seconds) and statuses from ``clients`` sequential
    keep-alive clients during ``seconds``."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def client(index: int) -> None:
        conn = Connection(port)
        try:
            while time.perf_counter() < deadline:
                token = tokens[(index + len(latencies)) % len(tokens)]
                started = time.perf_counter()
                answer = await conn.request("GET", "/kyc/customer", B_HOST, headers=bearer(token))
                latencies.append(time.perf_counter() - started)
                statuses[answer.status] = statuses.get(answer.status, 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies, statuses


def summary(latencies: list[float], statuses: dict[int, int], seconds: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    errors = sum(n for status, n in statuses.items() if status != 200)
    return {"requests": len(ordered), "requests_per_s": round(len(ordered) / seconds, 1),
            "p50_ms": round(1000 * percentile(ordered, 50), 2),
            "p95_ms": round(1000 * percentile(ordered, 95), 2),
            "p99_ms": round(1000 * percentile(ordered, 99), 2),
            "max_ms": round(1000 * (ordered[-1] if ordered else 0.0), 2),
            "errors": errors, "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def flood_figures(result: WrkResult) -> dict[str, Any]:
    figures: dict[str, Any] = dict(result.figures())
    figures["non_2xx"] = int(result.raw.get("status_errors", 0))
    return figures


def children_cpu(pid: int) -> float:
    """CPU seconds of ``pid``'s children: reaped ones (cutime + cstime) plus live ones."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / CLK_TCK
    return reaped + sum(cpu_seconds(child) for child in children(pid))


class Phase:
    """Latencies and statuses of B, pooled over the rounds of one phase kind."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.seconds = 0.0
        self.rounds: list[dict[str, Any]] = []

    def add(self, latencies: list[float], statuses: dict[int, int], seconds: float,
            **extra: Any) -> None:
        self.latencies += latencies
        for status, n in statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + n
        self.seconds += seconds
        self.rounds.append({**summary(latencies, statuses, seconds), **extra})

    def figures(self) -> dict[str, Any]:
        return {**summary(self.latencies, self.statuses, self.seconds), "rounds": self.rounds}


async def paced_puts(port: int, tokens: list[str], rate: float, seconds: float,
                     offset: int) -> dict[str, int]:
    """A's PUT /kyc/customer (a change every time) at ``rate`` per second; statuses counted."""
    statuses: dict[str, int] = {}
    if rate <= 0:
        return statuses
    conns = [Connection(port) for _ in tokens]
    started = time.perf_counter()
    sent: list[asyncio.Task[None]] = []

    async def one(serial: int) -> None:
        index = serial % len(tokens)
        body = json.dumps({**customer_fields(offset + serial), "last_name": f"N{serial}"})
        try:
            answer = await conns[index].request(
                "PUT", "/kyc/customer", A_HOST, body=body.encode(),
                headers={**bearer(tokens[index]), "Content-Type": "application/json"})
            key = str(answer.status)
        except HttpError:
            key = "connection_error"
        statuses[key] = statuses.get(key, 0) + 1

    busy: dict[int, asyncio.Task[None]] = {}
    serial = 0
    while time.perf_counter() - started < seconds:
        index = serial % len(tokens)
        if index in busy and not busy[index].done():  # its connection still waits (hook)
            statuses["skipped"] = statuses.get("skipped", 0) + 1
        else:
            busy[index] = asyncio.ensure_future(one(serial))
            sent.append(busy[index])
        serial += 1
        await asyncio.sleep(1 / rate)
    await asyncio.gather(*sent)
    for conn in conns:
        await conn.close()
    return statuses


async def noisy_round(server: ServerProcess, a_tokens: list[str], b_tokens: list[str],
                      opts: argparse.Namespace, phase: Phase) -> None:
    """Flood A (wrk, in threads) while B is measured; the floods start 1 s earlier."""
    flood_seconds = opts.seconds + 2
    auth = [(A_HOST, f"Bearer {t}") for t in a_tokens]
    get_flood = RequestSet("GET", "/kyc/customer", auth)
    floods = [asyncio.to_thread(run_wrk, server.public_port, get_flood, seconds=flood_seconds,
                                connections=opts.flood_connections, timeout=10.0)]
    if opts.put_flood_connections:
        prefix = b'{"first_name": "Ada", "email_address": "ada@example.com", "last_name": "N'
        put_flood = RequestSet("PUT", "/kyc/customer", auth, content_type="application/json",
                               prefix=prefix, suffix=b'"}',
                               unique_offset=1000000 * (1 + len(phase.rounds)))
        floods.append(asyncio.to_thread(run_wrk, server.public_port, put_flood,
                                        seconds=flood_seconds,
                                        connections=opts.put_flood_connections, timeout=10.0))
    running = [asyncio.ensure_future(f) for f in floods]
    paced = asyncio.ensure_future(paced_puts(server.public_port, a_tokens, opts.put_rate,
                                             flood_seconds, 1000 * (1 + len(phase.rounds))))
    await asyncio.sleep(1.0)
    server0, plugins0 = cpu_seconds(server.supervisor), children_cpu(server.supervisor)
    load = os.getloadavg()[0]
    latencies, statuses = await measure_b(server.public_port, b_tokens, opts.seconds,
                                          opts.clients)
    cpu = {"server_cpu_s": round(cpu_seconds(server.supervisor) - server0, 2),
           "plugin_workers_cpu_s": round(children_cpu(server.supervisor) - plugins0, 2)}
    results = await asyncio.gather(*running)
    phase.add(latencies, statuses, opts.seconds, load_average_1m=load, **cpu,
              paced_puts=await paced,
              get_flood=flood_figures(results[0]),
              put_flood=flood_figures(results[1]) if len(results) > 1 else None)
    await asyncio.sleep(HOOK_TIMEOUT + 1)  # A's requests cut by wrk's stop end their hooks


async def scenario(server: ServerProcess, opts: argparse.Namespace) -> dict[str, Any]:
    """``rounds`` times: B quiet, then B while A is flooded (interleaved, so the machine's
    other load drifts over both kinds alike); p95s pooled over the rounds."""
    port = server.public_port
    b_tokens = await wallets(port, B_HOST, 8)
    conn = Connection(port)
    try:
        for serial, token in enumerate(b_tokens):
            await put_customer(conn, B_HOST, token, customer_fields(serial))
    finally:
        await conn.close()
    a_tokens = await wallets(port, A_HOST, 8)
    await measure_b(port, b_tokens, min(1.0, opts.seconds), opts.clients)  # warm-up
    quiet, noisy = Phase(), Phase()
    for _ in range(opts.rounds):
        load = os.getloadavg()[0]
        server0 = cpu_seconds(server.supervisor)
        latencies, statuses = await measure_b(port, b_tokens, opts.seconds, opts.clients)
        quiet.add(latencies, statuses, opts.seconds, load_average_1m=load,
                  server_cpu_s=round(cpu_seconds(server.supervisor) - server0, 2))
        await noisy_round(server, a_tokens, b_tokens, opts, noisy)
    q, n = quiet.figures(), noisy.figures()
    ratio = n["p95_ms"] / q["p95_ms"] if q["p95_ms"] else None
    return {"quiet": q, "noisy": n,
            "p95_ratio": None if ratio is None else round(ratio, 3),
            "round_p95_ratios": [round(b["p95_ms"] / a["p95_ms"], 3) if a["p95_ms"] else None
                                 for a, b in zip(q["rounds"], n["rounds"], strict=True)],
            "target": "noisy p95 <= 1.2 x quiet p95 (reliability-plan L4)",
            "meets_target": None if ratio is None else ratio <= 1.2}


class LimitedDeployment(Deployment):
    """The benchmarks' deployment with rate limits on (they are off in the shared config
    because every load generator sends from 127.0.0.1; here only A is flooded, and B's GETs
    are not rate limited)."""

    def write_config(self, public_port: int, admin_port: int,
                     tenants_dir: Path | None = None) -> Path:
        config = super().write_config(public_port, admin_port, tenants_dir)
        text = config.read_text().replace("rate_limits = false", "rate_limits = true")
        if "rate_limits" not in text:
            text += "rate_limits = true\n"
        config.write_text(text)
        return config


@contextlib.contextmanager
def deployment(opts: argparse.Namespace, workdir: Path,
               horizon: HorizonStub) -> Iterator[ServerProcess]:
    with contextlib.ExitStack() as stack:
        mongo_base = None
        if opts.backend == "mongo":
            mongo_base, _ = stack.enter_context(mongo_server(workdir / "ferretdb"))
        deploy = LimitedDeployment(workdir / "server",
                                   storage_url(opts.backend, workdir, mongo_base))
        deploy.workdir.mkdir(parents=True, exist_ok=True)
        plugins = deploy.workdir / "plugins"
        plugins.mkdir(exist_ok=True)
        (plugins / "noisy.py").write_text(NOISY_PLUGIN)
        shutil.copy(ROOT / "plugins" / "demo_anchor.py", plugins / "demo_anchor.py")
        deploy.tenants_dir.mkdir(exist_ok=True)
        (deploy.tenants_dir / "noisy.toml").write_text(
            tenant_file("noisy", A_HOST, horizon.url, noisy_extra(opts.plugin)))
        (deploy.tenants_dir / "victim.toml").write_text(
            tenant_file("victim", B_HOST, horizon.url, VICTIM_EXTRA))
        server = ServerProcess(deploy, workers=1)
        server.start(timeout=120)
        try:
            yield server
        finally:
            left = children(server.supervisor)
            server.stop()
            stack.callback(_check_gone, left)


def _check_gone(pids: list[int]) -> None:
    alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    if alive:
        say(f"WARNING: processes of the server still alive after stop: {alive}")


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    workdir = Path(tempfile.mkdtemp(prefix="kyc-noisy-"))
    horizon = HorizonStub()
    horizon.start()
    try:
        with deployment(opts, workdir, horizon) as server:
            try:
                figures = asyncio.run(scenario(server, opts))
            except (HttpError, OSError) as exc:
                say(f"benchmark failed: {exc}\n{server.log_tail()}")
                return 1
            figures["server_errors_logged"] = len(server.errors_logged())
    finally:
        horizon.stop()
        if not opts.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    report = {"benchmark": "noisy_neighbour", "backend": opts.backend, "plugin": opts.plugin,
              "seconds": opts.seconds, "rounds": opts.rounds, "clients": opts.clients,
              "flood_connections": opts.flood_connections,
              "put_flood_connections": opts.put_flood_connections,
              "put_rate_per_s": opts.put_rate,
              "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                          "platform": platform.platform()},
              **figures}
    quiet, noisy = report["quiet"], report["noisy"]
    say(f"B GET /kyc/customer p95 quiet {quiet['p95_ms']} ms ({quiet['requests']} req, "
        f"errors {quiet['errors']}); while A is flooded and its plugin {opts.plugin}s: "
        f"{noisy['p95_ms']} ms ({noisy['requests']} req, errors {noisy['errors']}); "
        f"ratio {report['p95_ratio']} (target <= 1.2); per round {report['round_p95_ratios']}")
    for index, (q, n) in enumerate(zip(quiet["rounds"], noisy["rounds"], strict=True)):
        get, put = n["get_flood"], n["put_flood"] or {}
        say(f"round {index + 1}: quiet p95 {q['p95_ms']} ms (load {q['load_average_1m']:.1f}), "
            f"noisy p95 {n['p95_ms']} ms (load {n['load_average_1m']:.1f}); A GET flood "
            f"{get['requests']} req ({get['non_2xx']} non-2xx), A paced PUTs "
            f"{n['paced_puts']}, A PUT wrk flood {put.get('requests')} req; server CPU "
            f"{n['server_cpu_s']} s, plugin workers CPU {n['plugin_workers_cpu_s']} s")
    if opts.json:
        opts.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
