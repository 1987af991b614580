"""Platform settings: declared once, read from ``config/kyc-host.toml``, env and flags.

Precedence, lowest first: built-in defaults < the config file < ``KYC_HOST_<KEY>`` environment
variables < command-line flags. Every key is declared once below with its type, default and
help; unknown keys and bad values raise :class:`ConfigError` naming the file, key and value.
Relative paths are resolved against the working directory the server is started from.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kyc_host.errors import ConfigError

ENV_PREFIX = "KYC_HOST_"


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PlatformSettings:
    """Validated, frozen platform settings. Build with :func:`load_settings`."""

    public_listen: Listen
    admin_listen: Listen
    storage_url: str
    master_key_file: Path
    master_key_env: str
    tenants_dir: Path
    plugins_dir: Path
    dev_mode: bool
    tenant_refresh_seconds: float
    shutdown_timeout_seconds: float
    log_level: str
    source: str = "defaults"
    # Callback delivery (kyc_host/callbacks/worker.py); defaults suit production.
    callbacks_poll_seconds: float = 1.0
    callbacks_sweep_seconds: float = 30.0
    callbacks_lease_seconds: float = 60.0
    callbacks_attempt_timeout_seconds: float = 5.0
    callbacks_retry_base_seconds: float = 30.0
    callbacks_retry_max_seconds: float = 0.0
    callbacks_dead_retention_days: int = 30
    # Retention purge job (kyc_host/retention/purge.py).
    purge_interval_seconds: float = 3600.0
    # Rate limits (kyc_host/ratelimit/): on/off, and the proxies whose client-address
    # headers (X-Forwarded-For, Forwarded) are believed.
    rate_limits: bool = True
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    # Slow clients (kyc_host/web/serving.py): how long a request's headers, a connection
    # waiting for its next request, and a request body may take.
    header_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 60.0
    body_timeout_seconds: float = 60.0
    # Public requests are refused (503 + Retry-After) while the event loop is this many
    # seconds behind (looplag.py); 0 disables shedding.
    overload_lag_seconds: float = 0.5
    # MongoDB: what one wallet request's store operations may take in all (store/bounded.py);
    # 0: only the client's 4 s per operation.
    request_store_seconds: float = 4.0
    # A tenant with this many requests in flight in one process lets the other tenants'
    # ready work go first (web/turns.py); 0 disables it.
    busy_tenant_requests: int = 16
    # Upload body bytes one process holds at once, all tenants (ratelimit/budget.py); 0: no
    # bound.
    upload_bytes_in_flight: int = 256 * 1024 * 1024
    # Dev mode only: host names the outbound client sends to a local address instead of
    # resolving them (net/safe_http.py static_hosts), as (name, ip, port).
    dev_static_hosts: tuple[tuple[str, str, int], ...] = ()
    # Which tenants this process serves on the public listener and runs callbacks and
    # purges for (tenant-id patterns; tenancy/registry.py TenantRegistry.serves).
    serve_tenants: tuple[str, ...] = ("*",)

    @property
    def public_port(self) -> int:
        return self.public_listen.port


# --- value parsers: each takes the raw value and returns the typed one or raises ValueError ---


def _parse_listen(raw: object) -> Listen:
    if not isinstance(raw, str):
        raise ValueError("expected a string HOST:PORT")
    match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", raw)
    if not match:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8000 or [::1]:8000")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if port > 65535:
        raise ValueError("port must be 0..65535")
    return Listen(host, port)


def _parse_storage_url(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    scheme = urlsplit(raw).scheme
    if scheme == "sqlite":
        if not raw.startswith("sqlite:///") or raw == "sqlite:///":
            raise ValueError("expected sqlite:///relative/path or sqlite:////absolute/path")
        return raw
    if scheme in ("mongodb", "mongodb+srv"):
        return raw
    raise ValueError("expected a sqlite:/// or mongodb:// URL")


def _parse_path(raw: object) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ValueError("expected a non-empty path string")
    return Path(raw)


def _parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on",
                                                "0", "false", "no", "off"):
        return raw.lower() in ("1", "true", "yes", "on")
    raise ValueError("expected true or false")


def _positive_float(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError("expected a number")
    value = float(raw)
    if not 0 < value < 3600:
        raise ValueError("expected a number of seconds between 0 and 3600")
    return value


def _seconds(low: float, high: float, *, zero: bool = False) -> Callable[[object], float]:
    def parse(raw: object) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError("expected a number")
        value = float(raw)
        if not (low <= value <= high or (zero and value == 0)):
            raise ValueError(f"expected a number of seconds from {low:g} to {high:g}"
                             + (" (or 0)" if zero else ""))
        return value

    return parse


def _count(low: int, high: int, *, zero: bool = False) -> Callable[[object], int]:
    def parse(raw: object) -> int:
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise ValueError("expected a whole number")
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected a whole number") from None
        if not (low <= value <= high or (zero and value == 0)):
            raise ValueError(f"expected a whole number from {low} to {high}"
                             + (" (or 0)" if zero else ""))
        return value

    return parse


def _parse_env_name(raw: object) -> str:
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Z_][A-Z0-9_]*", raw):
        raise ValueError("expected an environment variable name like KYC_HOST_MASTER_KEY")
    return raw


def _parse_networks(raw: object) -> tuple[IPv4Network | IPv6Network, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a list of CIDRs such as [\"10.0.0.0/8\", \"::1/128\"]")
    networks: list[IPv4Network | IPv6Network] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR with its host bits "
                             "zero (e.g. 10.0.0.0/8)") from None
    return tuple(networks)


def _parse_static_hosts(raw: object) -> tuple[tuple[str, str, int], ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a list of \"name=IP:PORT\" such as "
                         "[\"wallet.test=127.0.0.1:8123\"]")
    hosts: list[tuple[str, str, int]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, address = (part.strip() for part in item.partition("="))
        ip, _, port = address.rpartition(":")
        try:
            ip = str(ipaddress.IPv4Address(ip))
        except ValueError:
            ip = ""
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name) or not ip \
                or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{item!r} is not \"name=IP:PORT\" (a lower-case host name, an "
                             "IPv4 address and a port), e.g. \"wallet.test=127.0.0.1:8123\"")
        hosts.append((name, ip, int(port)))
    return tuple(hosts)


def _parse_tenant_patterns(raw: object) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise ValueError("expected a list of tenant ids or patterns such as [\"*\"] or "
                         "[\"acme\", \"big-*\"]")
    patterns = tuple(item.strip() for item in items if item.strip())
    if not patterns:
        raise ValueError("expected at least one tenant id or pattern (\"*\": every tenant)")
    for pattern in patterns:
        # Tenant ids are [a-z0-9-]; * matches any run of them, ? one character.
        if not re.fullmatch(r"[a-z0-9*?-]{1,40}", pattern):
            raise ValueError(f"{pattern!r} is not a tenant id or a pattern of lower-case "
                             "letters, digits, '-', '*' and '?'")
    return patterns


def _parse_log_level(raw: object) -> str:
    if not isinstance(raw, str) or raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected one of debug, info, warning, error")
    return raw.upper()


@dataclass(frozen=True, slots=True)
class Setting:
    key: str
    parse: Callable[[object], Any]
    default: object
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting("public_listen", _parse_listen, "127.0.0.1:8000",
            "Address of the wallet-facing listener (tenant hosts: SEP-1, SEP-10, SEP-12)."),
    Setting("admin_listen", _parse_listen, "127.0.0.1:8001",
            "Address of the management listener (health, readiness, management API)."),
    Setting("storage_url", _parse_storage_url, "sqlite:///.kyc-host/store.db",
            "sqlite:///path (embedded, the default) or mongodb://host/dbname (production)."),
    Setting("master_key_file", _parse_path, ".kyc-host/master.key",
            "File holding the platform master key; used when the env variable below is unset."),
    Setting("master_key_env", _parse_env_name, "KYC_HOST_MASTER_KEY",
            "Name of the environment variable that may hold the master key instead of the file."),
    Setting("tenants_dir", _parse_path, "tenants",
            "Directory of tenant TOML files that `kyc-host serve` applies at start."),
    Setting("plugins_dir", _parse_path, "plugins",
            "Directory searched for tenant plugin modules."),
    Setting("dev_mode", _parse_bool, False,
            "Development mode: creates a missing master key, serves *.localhost over http://."),
    Setting("tenant_refresh_seconds", _positive_float, 1.0,
            "How often each process polls the store for tenant changes."),
    Setting("shutdown_timeout_seconds", _positive_float, 20.0,
            "On SIGTERM, how long in-flight requests may take before the process exits."),
    Setting("log_level", _parse_log_level, "info", "debug, info, warning or error."),
    Setting("callbacks_poll_seconds", _seconds(0.01, 60), 1.0,
            "How often each process looks for callback events that are due."),
    Setting("callbacks_sweep_seconds", _seconds(0.05, 3600), 30.0,
            "How often each process checks every tenant (and relays events a crash left)."),
    Setting("callbacks_lease_seconds", _seconds(0.5, 3600), 60.0,
            "How long a claimed delivery attempt stays exclusive (must exceed the timeout)."),
    Setting("callbacks_attempt_timeout_seconds", _seconds(0.1, 5), 5.0,
            "Time limit of one delivery attempt (the outbound client caps it at 5 s)."),
    Setting("callbacks_retry_base_seconds", _seconds(0.01, 3600), 30.0,
            "Wait after the first failed attempt; it doubles with each further failure."),
    Setting("callbacks_retry_max_seconds", _seconds(0.01, 86400, zero=True), 0.0,
            "Longest wait between attempts; 0 derives it from each tenant's retry horizon."),
    Setting("callbacks_dead_retention_days", _count(1, 3650, zero=True), 30,
            "Days a dead-lettered or disabled callback event is kept for replay; 0: for good."),
    Setting("purge_interval_seconds", _seconds(0.05, 86400), 3600.0,
            "How often each process shreds erased customers whose retention period is over."),
    Setting("rate_limits", _parse_bool, True,
            "Enforce each tenant's [limits] request rates (429 with Retry-After)."),
    Setting("trusted_proxies", _parse_networks, [],
            "CIDRs of your load balancers: only from these peers is X-Forwarded-For read."),
    Setting("header_timeout_seconds", _seconds(0.05, 3600), 10.0,
            "Once a request's first byte arrived, its headers must be complete within this."),
    Setting("idle_timeout_seconds", _seconds(0.05, 3600), 60.0,
            "How long a connection may wait for its next request's headers (keep-alive idle)."),
    Setting("body_timeout_seconds", _seconds(0.05, 3600), 60.0,
            "Total time a request body may take to arrive; a slower body is cut unread."),
    Setting("overload_lag_seconds", _seconds(0.01, 60, zero=True), 0.5,
            "Shed load: public requests get 503 + Retry-After while this process's event loop "
            "is this many seconds behind (0: never shed)."),
    Setting("request_store_seconds", _seconds(0.1, 600, zero=True), 4.0,
            "MongoDB: what one wallet request's store operations may take in all, each "
            "getting what is left as its timeout; past it, 503 + Retry-After (0: 4 s each)."),
    Setting("busy_tenant_requests", _count(1, 100_000, zero=True), 16,
            "A tenant with this many requests in flight in one process, and more than "
            "twice the average of the other tenants with requests in flight, is busy: its "
            "further requests let other tenants' ready work go first (0: never)."),
    Setting("upload_bytes_in_flight", _count(1024 * 1024, 1 << 40, zero=True),
            256 * 1024 * 1024,
            "Upload body bytes (declared lengths) one process holds at once, all tenants; "
            "further uploads wait unread, fairly across tenants, then get 503 (0: no bound)."),
    Setting("dev_static_hosts", _parse_static_hosts, [],
            "Dev mode only: \"name=IP:PORT\" entries; outbound fetches of https://name/ "
            "(client_domain's stellar.toml) go to IP:PORT over plain HTTP (local stand-ins)."),
    Setting("serve_tenants", _parse_tenant_patterns, ["*"],
            "Tenant ids (\"*\" and \"?\" patterns) this process serves on the public "
            "listener and delivers callbacks and purges for; other tenants' hosts are "
            "answered 421. Run groups of processes for groups of tenants behind a load "
            "balancer that routes by Host, so a busy tenant has its own CPU."),
)
_BY_KEY = {s.key: s for s in SETTINGS}


def load_settings(
    config_path: Path | None,
    overrides: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
) -> PlatformSettings:
    """Build the settings from defaults, the TOML file, ``KYC_HOST_*`` env vars and overrides.

    ``overrides`` are command-line values (``None`` values are ignored). Raises ConfigError.
    """
    raw: dict[str, tuple[object, str]] = {s.key: (s.default, "default") for s in SETTINGS}
    source = "defaults"
    if config_path is not None:
        source = str(config_path)
        for key, value in _read_toml(config_path).items():
            if key not in _BY_KEY:
                raise ConfigError(source, key, f"unknown setting; known: {', '.join(_BY_KEY)}",
                                  value)
            raw[key] = (value, source)
    env = os.environ if environ is None else environ
    for setting in SETTINGS:
        name = ENV_PREFIX + setting.key.upper()
        if name in env:
            raw[setting.key] = (env[name], f"environment {name}")
    for key, value in (overrides or {}).items():
        if key not in _BY_KEY:
            raise ConfigError("command line", key, "unknown setting", value)
        if value is not None:
            raw[key] = (value, "command line")
    values: dict[str, object] = {}
    for key, (value, origin) in raw.items():
        try:
            values[key] = _BY_KEY[key].parse(value)
        except ValueError as exc:
            raise ConfigError(origin, key, str(exc), value) from None
    if values["dev_static_hosts"] and not values["dev_mode"]:
        # A name -> address override bypasses the SSRF checks by design: dev mode only.
        value, origin = raw["dev_static_hosts"]
        raise ConfigError(origin, "dev_static_hosts", "only allowed with dev_mode = true", value)
    return PlatformSettings(**values, source=source)  # type: ignore[arg-type]


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None


def default_config_path() -> Path | None:
    """``config/kyc-host.toml`` under the working directory, if it exists."""
    path = Path("config") / "kyc-host.toml"
    return path if path.is_file() else None


def with_overrides(settings: PlatformSettings, **changes: object) -> PlatformSettings:
    """A copy with some fields replaced (tests and the CLI use this)."""
    return dataclasses.replace(settings, **changes)  # type: ignore[arg-type]
