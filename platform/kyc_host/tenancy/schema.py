"""The tenant document: one schema for tenant files (TOML) and the management API (JSON).

:func:`parse_tenant` turns a document into a frozen :class:`TenantConfig` or raises a
ConfigError naming the source, key and value. Unknown keys are errors. The document itself
(not the parsed object) is what the store keeps, so a tenant reads back exactly as written.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from kyc_host.callbacks.config import (
    CallbackPolicy,
    WebhookEndpoint,
    parse_callbacks,
    parse_webhooks,
)
from kyc_host.ratelimit.config import RateLimits, parse_rates
from kyc_host.retention.config import Retention, parse_retention
from kyc_host.sep import sep9
from kyc_host.tenancy.reader import Table, plain_json

TESTNET = "Test SDF Network ; September 2015"
PUBLIC = "Public Global Stellar Network ; September 2015"
NETWORKS = MappingProxyType({"testnet": TESTNET, "public": PUBLIC})
DEFAULT_HORIZON = MappingProxyType({
    TESTNET: "https://horizon-testnet.stellar.org",
    PUBLIC: "https://horizon.stellar.org",
})

TENANT_ID = r"[a-z0-9][a-z0-9-]{0,39}"
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
HOSTNAME = rf"{_LABEL}(\.{_LABEL})*"
# SEP-10 puts "<home_domain> auth" in a ManageData key of at most 64 bytes.
MAX_HOME_DOMAIN_BYTES = 59
MIB = 1024 * 1024

DOCUMENTATION_KEYS = frozenset({
    "ORG_NAME", "ORG_DBA", "ORG_URL", "ORG_LOGO", "ORG_DESCRIPTION", "ORG_PHYSICAL_ADDRESS",
    "ORG_PHYSICAL_ADDRESS_ATTESTATION", "ORG_PHONE_NUMBER", "ORG_PHONE_NUMBER_ATTESTATION",
    "ORG_KEYBASE", "ORG_TWITTER", "ORG_GITHUB", "ORG_OFFICIAL_EMAIL", "ORG_SUPPORT_EMAIL",
    "ORG_LICENSING_AUTHORITY", "ORG_LICENSE_TYPE", "ORG_LICENSE_NUMBER",
})
CURRENCY_KEYS = frozenset({
    "code", "code_template", "issuer", "contract", "status", "display_decimals", "name", "desc",
    "conditions", "image", "fixed_number", "max_number", "is_unlimited", "is_asset_anchored",
    "anchor_asset_type", "anchor_asset", "attestation_of_reserve", "redemption_instructions",
    "collateral_addresses", "collateral_address_messages", "collateral_address_signatures",
    "regulated", "approval_server", "approval_criteria",
})
PRINCIPAL_KEYS = frozenset({
    "name", "email", "keybase", "telegram", "twitter", "github", "id_photo_hash",
    "verification_photo_hash",
})
DEFAULT_FILE_TYPES = ("image/jpeg", "image/png", "application/pdf")
KNOWN_FILE_TYPES = frozenset({*DEFAULT_FILE_TYPES, "image/webp", "image/heic", "video/mp4"})


@dataclass(frozen=True, slots=True)
class FieldOverride:
    """A tenant's own wording (per ISO 639-1 language) or narrower choices for one field."""

    descriptions: Mapping[str, str] = field(default_factory=dict)
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class CustomerType:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    #: ``[customer_types.<type>.fields.<field>]`` overrides, by field name as listed.
    fields: Mapping[str, FieldOverride] = field(default_factory=dict)


DEFAULT_MAX_FILE_BYTES = 10 * MIB  # SEP-12's suggested per-file limit
DEFAULT_MAX_REQUEST_BYTES = 25 * MIB
DEFAULT_HOOK_TIMEOUT = 2.0
DEFAULT_PLUGIN_MEMORY_MIB = 256
DEFAULT_PLUGIN_WORKERS = 2
#: Customers one Stellar account may hold through memos (a custodial wallet's omnibus account
#: needs many; an attacker rotating memos must not create customers without bound).
DEFAULT_MAX_CUSTOMERS_PER_ACCOUNT = 10_000
#: Files one identity (account + memo) may have stored, attached or awaiting attachment.
DEFAULT_MAX_FILES_PER_IDENTITY = 50
#: Upload body bytes per second one tenant may send to one server process (ratelimit/pacing.py):
#: a 10 MB document in 2.5 s, while a tenant flooding uploads keeps most of the CPU free
#: for the others (BENCHMARKS.md, noisy neighbour).
DEFAULT_UPLOAD_BYTES_PER_SECOND = 4 * MIB


@dataclass(frozen=True, slots=True)
class Limits:
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    allowed_file_types: tuple[str, ...] = DEFAULT_FILE_TYPES
    hook_timeout_seconds: float = DEFAULT_HOOK_TIMEOUT
    #: Request rates (ratelimit/config.py documents the keys and defaults).
    rates: RateLimits = field(default_factory=RateLimits)
    max_customers_per_account: int = DEFAULT_MAX_CUSTOMERS_PER_ACCOUNT
    max_files_per_identity: int = DEFAULT_MAX_FILES_PER_IDENTITY
    upload_bytes_per_second: int = DEFAULT_UPLOAD_BYTES_PER_SECOND


@dataclass(frozen=True, slots=True)
class PluginIsolation:
    """``[plugin_isolation]``: how far the platform trusts the tenant's plugin.

    ``mode = "process"`` marks the plugin untrusted: its hooks run in ``workers`` separate
    processes capped at ``memory_mib`` of address space each (hooks/isolation.py), so a
    plugin that blocks, hangs or hogs memory cannot slow other tenants (reliability-plan F8).
    """

    mode: str = "in_process"  # or "process"
    memory_mib: int = DEFAULT_PLUGIN_MEMORY_MIB
    workers: int = DEFAULT_PLUGIN_WORKERS

    @property
    def untrusted(self) -> bool:
        return self.mode == "process"


@dataclass(frozen=True, slots=True)
class Sep10Settings:
    """``[sep10]``: how this tenant's web auth issues tokens and treats client domains."""

    jwt_algorithm: str = "EdDSA"  # or HS256 with a per-tenant 32-byte secret
    jwt_lifetime_seconds: int = 3600
    challenge_timeout_seconds: int = 900
    client_domain_required: bool = False
    client_domain_allow: tuple[str, ...] = ()  # empty: any domain not denied
    client_domain_deny: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StellarTomlExtra:
    """Content published in the tenant's stellar.toml beside the generated keys."""

    documentation: Mapping[str, Any] = field(default_factory=dict)
    currencies: tuple[Mapping[str, Any], ...] = ()
    principals: tuple[Mapping[str, Any], ...] = ()
    accounts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TenantConfig:
    id: str
    name: str
    hosts: tuple[str, ...]
    home_domain: str
    network_passphrase: str
    horizon_url: str
    customer_types: Mapping[str, CustomerType]
    default_customer_type: str
    status: str = "active"
    plugin: str | None = None
    plugin_settings: Mapping[str, Any] = field(default_factory=dict)
    plugin_isolation: PluginIsolation = field(default_factory=PluginIsolation)
    signing_key_env: str | None = None
    limits: Limits = field(default_factory=Limits)
    sep10: Sep10Settings = field(default_factory=Sep10Settings)
    stellar_toml: StellarTomlExtra = field(default_factory=StellarTomlExtra)
    #: ``[callbacks]`` (SEP-12 callback policy) and ``[[webhooks]]`` (see callbacks/config.py).
    callbacks: CallbackPolicy = field(default_factory=CallbackPolicy)
    webhooks: tuple[WebhookEndpoint, ...] = ()
    #: ``[retention]``: how long erased customers are held before shredding (retention/).
    retention: Retention = field(default_factory=Retention)


def parse_tenant(doc: Mapping[str, Any], source: str) -> TenantConfig:
    """Validate a tenant document (from a file or the API) into a TenantConfig."""
    top = Table(doc, source)
    tenant_id = top.string("id", pattern=TENANT_ID,
                        what="lower-case letters, digits and '-', at most 40 chars")
    hosts = _hosts(top)
    home_domain = _home_domain(top)
    passphrase = _network(top)
    horizon = top.string("horizon_url", DEFAULT_HORIZON.get(passphrase), pattern=r"https?://\S+",
                      what="an http(s) URL")
    if horizon is None:
        raise top.error("horizon_url", "is required when network is a custom passphrase")
    types, default_type = _customer_types(top)
    plugin_settings = plain_json(top.raw("plugin_settings", {}), source, "plugin_settings")
    if not isinstance(plugin_settings, Mapping):  # checked before MappingProxyType sees it
        raise top.error("plugin_settings", "expected a table", plugin_settings)
    config = TenantConfig(
        id=tenant_id,
        name=top.string("name", tenant_id, max_len=200),
        hosts=hosts,
        home_domain=home_domain,
        network_passphrase=passphrase,
        horizon_url=horizon.rstrip("/"),
        customer_types=MappingProxyType(types),
        default_customer_type=default_type,
        status=top.choice("status", ("active", "suspended"), "active"),
        plugin=top.string("plugin", None, pattern=r"[A-Za-z_][A-Za-z0-9_]{0,63}",
                       what="a Python module name"),
        plugin_settings=MappingProxyType(plugin_settings),
        plugin_isolation=_plugin_isolation(top.table("plugin_isolation")),
        signing_key_env=top.string("signing_key_env", None, pattern=r"[A-Z_][A-Z0-9_]{0,127}",
                                what="an environment variable name"),
        limits=_limits(top.table("limits")),
        sep10=_sep10(top.table("sep10")),
        stellar_toml=_stellar_toml(top.table("stellar_toml")),
        callbacks=parse_callbacks(top.table("callbacks")),
        webhooks=parse_webhooks(top),
        retention=parse_retention(top.table("retention"), types),
    )
    top.finish()
    return config


def _hosts(top: Table) -> tuple[str, ...]:
    hosts = top.strings("hosts", max_items=50)
    normalized: list[str] = []
    for host in hosts:
        name = host.lower().removesuffix(".")
        if not _is_hostname(name):
            raise top.error("hosts", "each host must be a DNS name without port or path", host)
        if name in normalized:
            raise top.error("hosts", "host listed twice", host)
        normalized.append(name)
    if not normalized:
        raise top.error("hosts", "at least one host is required")
    return tuple(normalized)


def _is_hostname(name: str) -> bool:
    return len(name) <= 253 and re.fullmatch(HOSTNAME, name) is not None


def _home_domain(top: Table) -> str:
    value: str = top.string("home_domain")
    domain = value.lower()
    host, _, port = domain.partition(":")
    if not _is_hostname(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise top.error("home_domain", "expected a domain name, optionally with :port", value)
    if len(domain.encode()) > MAX_HOME_DOMAIN_BYTES:
        raise top.error("home_domain", f"at most {MAX_HOME_DOMAIN_BYTES} bytes (SEP-10 puts "
                        "'<home_domain> auth' in a 64-byte ManageData key)", value)
    return domain


def _network(top: Table) -> str:
    value: str = top.string("network", max_len=200)
    if value in NETWORKS:
        return NETWORKS[value]
    if value.lower() in NETWORKS:
        return NETWORKS[value.lower()]
    if " ; " not in value:
        raise top.error("network", "expected testnet, public or a full network passphrase", value)
    return value


def _customer_types(top: Table) -> tuple[dict[str, CustomerType], str]:
    table = top.table("customer_types", required=True)
    types: dict[str, CustomerType] = {}
    for name in list(table.data):
        if not isinstance(name, str) or not _is_type_name(name):
            raise table.error(str(name), "customer type names use a-z, 0-9, '-', '_', '.'")
        section = table.table(name)
        required = _field_names(section, "required")
        optional = _field_names(section, "optional")
        both = set(required) & set(optional)
        if both:
            raise section.error("optional", "field is also required", sorted(both)[0])
        overrides = _field_overrides(section, {*required, *optional})
        section.finish()
        types[name] = CustomerType(name, required, optional, MappingProxyType(overrides))
    if not types:
        raise top.error("customer_types", "at least one customer type is required")
    default = top.string("default_customer_type", next(iter(types)))
    if default not in types:
        raise top.error("default_customer_type", "is not one of customer_types", default)
    return types, default


def _field_overrides(section: Table, listed: set[str]) -> dict[str, FieldOverride]:
    """``fields.<name>.description.<lang>`` and ``fields.<name>.choices`` of one type."""
    table = section.table("fields")
    overrides: dict[str, FieldOverride] = {}
    for name in list(table.data):
        if name not in listed:
            raise table.error(str(name), "not a required or optional field of this type")
        entry = table.table(name)
        texts = entry.table("description")
        descriptions: dict[str, str] = {}
        for lang in list(texts.data):
            if not isinstance(lang, str) or not re.fullmatch(r"[a-z]{2}", lang):
                raise texts.error(str(lang), "expected an ISO 639-1 language code like en")
            descriptions[lang] = texts.string(lang, max_len=500)
        texts.finish()
        choices = entry.strings("choices", None, max_items=200)
        if choices is not None:
            _check_choices(entry, name, choices)
        entry.finish()
        overrides[name] = FieldOverride(MappingProxyType(descriptions), choices)
    table.finish()
    return overrides


def _check_choices(entry: Table, name: str, choices: tuple[str, ...]) -> None:
    """Choices narrow a field: each must be a valid value of it, in normalized form."""
    spec = sep9.FIELDS[name]
    if spec.type is sep9.FieldType.BINARY:
        raise entry.error("choices", "binary fields take files, not choices")
    for choice in choices:
        try:
            valid = sep9.validate(spec, choice)
        except sep9.FieldValueError as exc:
            raise entry.error("choices", exc.reason, choice) from None
        if valid != choice:
            raise entry.error("choices", f"write it as {valid!r}", choice)


def _is_type_name(name: str) -> bool:
    return re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", name) is not None


def _field_names(section: Table, key: str) -> tuple[str, ...]:
    names: tuple[str, ...] = section.strings(key, (), max_items=200)
    for name in names:
        spec = sep9.get(name)
        if spec is None:
            raise section.error(key, "not a SEP-9 field name", name)
        if name.endswith("_file_id"):
            raise section.error(key, "list the binary field itself, not its _file_id", name)
    if len(set(names)) != len(names):
        raise section.error(key, "a field is listed twice", list(names))
    return names


def _limits(table: Table) -> Limits:
    max_file = table.integer("max_file_bytes", DEFAULT_MAX_FILE_BYTES, min=1024, max=100 * MIB)
    max_request = table.integer("max_request_bytes", max(DEFAULT_MAX_REQUEST_BYTES, max_file + MIB),
                            min=max_file, max=500 * MIB)
    types = table.strings("allowed_file_types", DEFAULT_FILE_TYPES, max_items=20)
    for media_type in types:
        if media_type not in KNOWN_FILE_TYPES:
            raise table.error("allowed_file_types",
                              f"supported types: {', '.join(sorted(KNOWN_FILE_TYPES))}",
                              media_type)
    timeout = table.number("hook_timeout_seconds", DEFAULT_HOOK_TIMEOUT,
                           min=0.05, max=30.0)
    rates = parse_rates(table)
    max_customers = table.integer("max_customers_per_account", DEFAULT_MAX_CUSTOMERS_PER_ACCOUNT,
                                  min=1, max=10_000_000)
    max_files = table.integer("max_files_per_identity", DEFAULT_MAX_FILES_PER_IDENTITY,
                              min=1, max=100_000)
    upload_rate = table.integer("upload_bytes_per_second", DEFAULT_UPLOAD_BYTES_PER_SECOND,
                                min=64 * 1024, max=1024 * MIB)
    table.finish()
    return Limits(max_file, max_request, types, timeout, rates, max_customers, max_files,
                  upload_rate)


def _plugin_isolation(table: Table) -> PluginIsolation:
    isolation = PluginIsolation(
        mode=table.choice("mode", ("in_process", "process"), "in_process"),
        # Below ~64 MiB the worker's interpreter and platform modules alone do not fit.
        memory_mib=table.integer("memory_mib", DEFAULT_PLUGIN_MEMORY_MIB, min=64, max=8192),
        workers=table.integer("workers", DEFAULT_PLUGIN_WORKERS, min=1, max=8),
    )
    table.finish()
    return isolation


def _sep10(table: Table) -> Sep10Settings:
    defaults = Sep10Settings()
    settings = Sep10Settings(
        jwt_algorithm=table.choice("jwt_algorithm", ("EdDSA", "HS256"), defaults.jwt_algorithm),
        # 24 h at most: signer changes after issuance are not seen (SEP-10 §3.8).
        jwt_lifetime_seconds=table.integer("jwt_lifetime_seconds",
                                           defaults.jwt_lifetime_seconds, min=60, max=86400),
        challenge_timeout_seconds=table.integer(
            "challenge_timeout_seconds", defaults.challenge_timeout_seconds, min=30, max=900),
        client_domain_required=table.boolean("client_domain_required",
                                             defaults.client_domain_required),
        client_domain_allow=_domains(table, "client_domain_allow"),
        client_domain_deny=_domains(table, "client_domain_deny"),
    )
    table.finish()
    return settings


def _domains(table: Table, key: str) -> tuple[str, ...]:
    domains: tuple[str, ...] = table.strings(key, (), max_items=1000)
    for domain in domains:
        if not _is_hostname(domain.lower()):
            raise table.error(key, "expected domain names", domain)
    return tuple(d.lower() for d in domains)


def _stellar_toml(table: Table) -> StellarTomlExtra:
    documentation = table.table("documentation")
    for key in documentation.data:
        if key not in DOCUMENTATION_KEYS:
            raise documentation.error(str(key), "not a SEP-1 [DOCUMENTATION] key",
                                      documentation.data[key])
    docs = plain_json(documentation.data, table.source, documentation.path)
    currencies = tuple(_entries(table, "currencies", CURRENCY_KEYS, required="code"))
    principals = tuple(_entries(table, "principals", PRINCIPAL_KEYS, required="name"))
    accounts: tuple[str, ...] = table.strings("accounts", (), max_items=100)
    for account in accounts:
        if not (len(account) == 56 and account.startswith("G")):
            raise table.error("accounts", "expected G... account ids", account)
    table.finish()
    return StellarTomlExtra(MappingProxyType(docs), currencies, principals, accounts)


def _entries(table: Table, key: str, allowed: frozenset[str],
             required: str) -> list[Mapping[str, Any]]:
    entries: list[Mapping[str, Any]] = []
    for entry in table.tables(key):
        for name in entry.data:
            if name not in allowed:
                raise entry.error(str(name), f"not a SEP-1 {key} key", entry.data[name])
        if required not in entry.data:
            raise entry.error(required, "is required")
        entries.append(MappingProxyType(plain_json(entry.data, entry.source, entry.path)))
    return entries

