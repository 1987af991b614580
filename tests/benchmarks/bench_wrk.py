"""Fixed-request load with ``wrk`` (Debian package ``wrk``), which costs far less CPU per request
than any Python client: it rotates over many (Host, Authorization) pairs through
``wrk_rotate.lua`` and reports totals and latency percentiles as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench_server import child_limits

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "wrk_rotate.lua"


class WrkMissing(RuntimeError):
    pass


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkMissing("wrk is not installed: apt-get install -y wrk (Debian package 'wrk')")
    return found


@dataclass(frozen=True)
class RequestSet:
    """What wrk sends: one method and path, rotated over ``items`` (host, token or "")."""

    method: str
    path: str
    items: Sequence[tuple[str, str]]
    content_type: str | None = None
    body: bytes | None = None
    #: With a unique body, each body is prefix + SERIAL + suffix (SERIAL unique in the run,
    #: starting above ``unique_offset``).
    prefix: bytes | None = None
    suffix: bytes | None = None
    unique_offset: int = 0

    @property
    def body_size(self) -> int:
        if self.prefix is not None and self.suffix is not None:
            return len(self.prefix) + len(self.suffix) + 12
        return len(self.body or b"")


@dataclass(frozen=True)
class WrkResult:
    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_seconds: float
    raw: dict[str, float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def figures(self) -> dict[str, float]:
        return {"requests_per_s": round(self.per_second, 1), "p50_ms": self.p50_ms,
                "p90_ms": self.p90_ms, "p99_ms": self.p99_ms, "max_ms": self.max_ms,
                "requests": self.requests, "errors": self.errors,
                "loadgen_cpu_s": round(self.client_cpu_seconds, 2)}


def _lua_string(value: str) -> str:
    """A Lua string literal for ASCII ``value`` (tokens, hosts, paths, file names)."""
    out = []
    for ch in value:
        if ch.isalnum() or ch in " -_.:/=+,;@!?*()[]{}<>|~^&%$#'":
            out.append(ch)
        else:
            out.append(f"\\{ord(ch):03d}" if ord(ch) < 256 else "?")
    return '"' + "".join(out) + '"'


def _write_spec(requests: RequestSet, directory: Path) -> Path:
    lines = ["return {", f"method = {_lua_string(requests.method)},",
             f"path = {_lua_string(requests.path)},"]
    if requests.content_type:
        lines.append(f"content_type = {_lua_string(requests.content_type)},")
    for name in ("body", "prefix", "suffix"):
        data = getattr(requests, name)
        if data is not None:
            path = directory / f"{name}.bin"
            path.write_bytes(data)
            key = "body_file" if name == "body" else f"{name}_file"
            lines.append(f"{key} = {_lua_string(str(path))},")
    lines.append(f"unique_offset = {requests.unique_offset},")
    lines.append("items = {")
    lines += [f"{{{_lua_string(host)}, {_lua_string(auth)}}}," for host, auth in requests.items]
    lines.append("}}")
    spec = directory / "spec.lua"
    spec.write_text("\n".join(lines) + "\n")
    return spec


def run_wrk(port: int, requests: RequestSet, *, seconds: float, connections: int,
            threads: int = 2, timeout: float = 10.0, niceness: int = 0,
            cpus: frozenset[int] | None = None) -> WrkResult:
    """Run wrk against 127.0.0.1:port for ``seconds``; raises if wrk fails. ``niceness``
    lowers wrk's CPU priority (a load generator sharing the server's cores); ``cpus`` keeps
    it on those CPUs."""
    binary = wrk_binary()
    threads = max(1, min(threads, connections))
    with tempfile.TemporaryDirectory(prefix="kyc-wrk-") as tmp:
        spec = _write_spec(requests, Path(tmp))
        out = Path(tmp) / "out.txt"
        with out.open("wb") as fh:
            process = subprocess.Popen(
                [binary, "-t", str(threads), "-c", str(connections),
                 "-d", f"{max(1, round(seconds))}s", "--timeout", f"{timeout:g}s",
                 "-s", str(SCRIPT), f"http://127.0.0.1:{port}/", "--", str(spec)],
                stdout=fh, stderr=subprocess.STDOUT,
                preexec_fn=child_limits(niceness, cpus))
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        text = out.read_text(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk exited with {process.returncode}:\n{text}")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{text}")
    raw: dict[str, float] = json.loads(line.removeprefix("WRKJSON "))
    errors = int(raw["connect_errors"] + raw["read_errors"] + raw["write_errors"]
                 + raw["status_errors"] + raw["timeouts"])
    return WrkResult(
        seconds=raw["duration_us"] / 1e6, requests=int(raw["requests"]), errors=errors,
        p50_ms=raw["p50_us"] / 1000, p90_ms=raw["p90_us"] / 1000, p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000, client_cpu_seconds=usage.ru_utime + usage.ru_stime,
        raw=raw)
