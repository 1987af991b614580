"""Tenant documents: the shipped examples parse; every bad document is one precise line.

Each rejection is checked through a real file on disk (read_tenant_files), so the message is
what an operator sees: ``<file>: <dotted key>: <problem> (got <value>)``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from conftest import make_tenant_doc
from kyc_host.errors import ConfigError
from kyc_host.tenancy.schema import MAX_HOME_DOMAIN_BYTES, PUBLIC, TESTNET, parse_tenant
from kyc_host.tenancy.service import read_tenant_files

ROOT = Path(__file__).resolve().parents[2]
GOOD_ISSUER = "GBBD47IF6LWK7P7MDEVSCWR7DPUWV3NY3DTQEVFL4NAT4AQH3ZLLFLA5"

Doc = dict[str, Any]


def write_doc(tmp_path: Path, doc: Doc, name: str = "tenant.toml") -> Path:
    path = tmp_path / name
    path.write_text(tomli_w.dumps(doc))
    return path


def base_doc() -> Doc:
    return make_tenant_doc("t1", ["a.test"])


def reject(tmp_path: Path, doc: Doc) -> tuple[Path, str]:
    path = write_doc(tmp_path, doc)
    with pytest.raises(ConfigError) as info:
        read_tenant_files(path)
    message = str(info.value)
    assert "\n" not in message, message
    return path, message


def test_shipped_tenant_files_parse() -> None:
    docs = {d.config.id: d for d in read_tenant_files(ROOT / "tenants")}
    assert set(docs) >= {"demo", "acme"}
    demo, acme = docs["demo"].config, docs["acme"].config
    assert demo.hosts == ("demo.localhost",)
    assert demo.home_domain == "demo.localhost"
    assert demo.network_passphrase == TESTNET
    assert set(demo.customer_types) == {"individual", "sep31-receiver"}
    assert demo.customer_types["individual"].required[:2] == ("first_name", "last_name")
    assert demo.stellar_toml.currencies[0]["code"] == "USDC"
    assert demo.stellar_toml.documentation["ORG_NAME"] == "Demo Anchor"
    assert acme.hosts == ("acme.localhost", "kyc.acme.localhost")
    assert acme.default_customer_type == "sep31-sender"
    assert acme.limits.max_file_bytes == 5 * 1024 * 1024
    assert docs["demo"].manager == f"file:{ROOT / 'tenants' / 'demo.toml'}"
    # The two examples never collide on a host.
    assert not set(demo.hosts) & set(acme.hosts)


def _set(path: str, value: Any) -> Callable[[Doc], None]:
    """A mutation that sets a dotted path (creating tables on the way)."""

    def mutate(doc: Doc) -> None:
        *parents, last = path.split("/")
        node = doc
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


TOO_LONG_DOMAIN = "a" * 52 + ".example"  # 60 bytes
assert len(TOO_LONG_DOMAIN) == MAX_HOME_DOMAIN_BYTES + 1

# (case id, mutation, dotted key named in the message, value shown in the message)
REJECTIONS: list[tuple[str, Callable[[Doc], None], str, str]] = [
    ("unknown-top-level", _set("colour", "blue"), "colour", "'blue'"),
    ("unknown-in-customer-type", _set("customer_types/individual/requird", ["first_name"]),
     "customer_types.individual.requird", "['first_name']"),
    ("unknown-in-limits", _set("limits/max_file_byte", 5), "limits.max_file_byte", "5"),
    ("unknown-in-sep10", _set("sep10/jwt_alg", "HS256"), "sep10.jwt_alg", "'HS256'"),
    ("unknown-in-stellar-toml", _set("stellar_toml/SIGNING_KEY", GOOD_ISSUER),
     "stellar_toml.SIGNING_KEY", GOOD_ISSUER),
    ("bad-sep9-field", _set("customer_types/individual/required",
                            ["first_name", "favourite_colour"]),
     "customer_types.individual.required", "'favourite_colour'"),
    ("file-id-field", _set("customer_types/individual/optional", ["photo_id_front_file_id"]),
     "customer_types.individual.optional", "'photo_id_front_file_id'"),
    ("field-required-and-optional", _set("customer_types/individual/optional", ["first_name"]),
     "customer_types.individual.optional", "'first_name'"),
    ("home-domain-too-long", _set("home_domain", TOO_LONG_DOMAIN), "home_domain",
     repr(TOO_LONG_DOMAIN)),
    ("home-domain-not-a-domain", _set("home_domain", "https://a.test/"), "home_domain",
     "'https://a.test/'"),
    ("bad-network", _set("network", "mainnet"), "network", "'mainnet'"),
    ("duplicate-host", _set("hosts", ["a.test", "A.TEST"]), "hosts", "'A.TEST'"),
    ("host-with-port", _set("hosts", ["a.test:443"]), "hosts", "'a.test:443'"),
    ("host-with-path", _set("hosts", ["a.test/x"]), "hosts", "'a.test/x'"),
    ("host-with-userinfo", _set("hosts", ["a.test@b.test"]), "hosts", "'a.test@b.test'"),
    ("host-underscore", _set("hosts", ["a_b.test"]), "hosts", "'a_b.test'"),
    ("host-leading-dash", _set("hosts", ["-a.test"]), "hosts", "'-a.test'"),
    ("hosts-empty", _set("hosts", []), "hosts", ""),
    ("bad-customer-type-name", _set("customer_types/Individual", {"required": ["first_name"]}),
     "customer_types.Individual", ""),
    ("default-type-undefined", _set("default_customer_type", "business"),
     "default_customer_type", "'business'"),
    ("limit-too-small", _set("limits/max_file_bytes", 10), "limits.max_file_bytes", "10"),
    ("limit-not-a-number", _set("limits/max_file_bytes", "10MB"), "limits.max_file_bytes",
     "'10MB'"),
    ("limit-request-below-file", _set("limits", {"max_file_bytes": 5 * 2**20,
                                                 "max_request_bytes": 2**20}),
     "limits.max_request_bytes", str(2**20)),
    ("limit-file-type", _set("limits/allowed_file_types", ["text/html"]),
     "limits.allowed_file_types", "'text/html'"),
    ("limit-hook-timeout", _set("limits/hook_timeout_seconds", 100), "limits.hook_timeout_seconds",
     "100"),
    ("documentation-key", _set("stellar_toml/documentation/ORG_COLOUR", "red"),
     "stellar_toml.documentation.ORG_COLOUR", "'red'"),
    ("currency-key", _set("stellar_toml/currencies", [{"code": "X", "colour": "red"}]),
     "stellar_toml.currencies[0].colour", "'red'"),
    ("currency-without-code", _set("stellar_toml/currencies", [{"issuer": GOOD_ISSUER}]),
     "stellar_toml.currencies[0].code", ""),
    ("principal-key", _set("stellar_toml/principals", [{"name": "A", "ssn": "1"}]),
     "stellar_toml.principals[0].ssn", "'1'"),
    ("bad-account", _set("stellar_toml/accounts", ["GBAD"]), "stellar_toml.accounts", "'GBAD'"),
    ("bad-id", _set("id", "Acme Corp"), "id", "'Acme Corp'"),
    ("bad-status", _set("status", "paused"), "status", "'paused'"),
    ("bad-signing-key-env", _set("signing_key_env", "lower"), "signing_key_env", "'lower'"),
    ("bad-horizon", _set("horizon_url", "ftp://h"), "horizon_url", "'ftp://h'"),
    ("bad-jwt-algorithm", _set("sep10/jwt_algorithm", "none"), "sep10.jwt_algorithm", "'none'"),
    # Reliability-plan A1/A3: tokens live at most 24 h, challenges at most 15 min.
    ("jwt-lifetime-over-a-day", _set("sep10/jwt_lifetime_seconds", 86401),
     "sep10.jwt_lifetime_seconds", "86401"),
    ("jwt-lifetime-under-a-minute", _set("sep10/jwt_lifetime_seconds", 59),
     "sep10.jwt_lifetime_seconds", "59"),
    ("challenge-timeout-over-15-minutes", _set("sep10/challenge_timeout_seconds", 901),
     "sep10.challenge_timeout_seconds", "901"),
    ("challenge-timeout-under-30-seconds", _set("sep10/challenge_timeout_seconds", 29),
     "sep10.challenge_timeout_seconds", "29"),
]


@pytest.mark.parametrize(("mutate", "key", "shown"),
                         [pytest.param(m, k, s, id=i) for i, m, k, s in REJECTIONS])
def test_rejection_names_file_key_and_value(
    tmp_path: Path, mutate: Callable[[Doc], None], key: str, shown: str
) -> None:
    doc = base_doc()
    mutate(doc)
    path, message = reject(tmp_path, doc)
    assert message.startswith(f"{path}: {key}: "), message
    assert shown in message


def test_custom_passphrase_needs_horizon_url(tmp_path: Path) -> None:
    doc = base_doc()
    doc["network"] = "Private Test Net ; 2024"
    path, message = reject(tmp_path, doc)
    assert message.startswith(f"{path}: horizon_url: ")
    assert "custom passphrase" in message
    doc["horizon_url"] = "https://horizon.private.example/"
    config = parse_tenant(doc, "test")
    assert config.network_passphrase == "Private Test Net ; 2024"
    assert config.horizon_url == "https://horizon.private.example"


def test_named_networks() -> None:
    assert parse_tenant(base_doc() | {"network": "public"}, "t").network_passphrase == PUBLIC
    assert parse_tenant(base_doc() | {"network": PUBLIC}, "t").horizon_url == (
        "https://horizon.stellar.org")


def test_sep10_lifetimes_at_their_limits_are_accepted() -> None:
    doc = base_doc() | {"sep10": {"jwt_lifetime_seconds": 86400,
                                  "challenge_timeout_seconds": 900}}
    sep10 = parse_tenant(doc, "t").sep10
    assert (sep10.jwt_lifetime_seconds, sep10.challenge_timeout_seconds) == (86400, 900)


def test_home_domain_of_exactly_59_bytes_is_accepted(tmp_path: Path) -> None:
    domain = "a" * 51 + ".example"
    assert len(domain.encode()) == MAX_HOME_DOMAIN_BYTES
    doc = base_doc() | {"home_domain": domain}
    [parsed] = read_tenant_files(write_doc(tmp_path, doc))
    assert parsed.config.home_domain == domain


def test_hosts_are_normalized_to_lower_case_without_trailing_dot() -> None:
    config = parse_tenant(base_doc() | {"hosts": ["A.Test.", "KYC.a.test"]}, "t")
    assert config.hosts == ("a.test", "kyc.a.test")


def test_missing_required_keys(tmp_path: Path) -> None:
    for key in ("id", "hosts", "home_domain", "network", "customer_types"):
        doc = base_doc()
        del doc[key]
        path, message = reject(tmp_path, doc)
        assert message.startswith(f"{path}: {key}: "), message


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('id = "x"\nhosts = [\n')
    with pytest.raises(ConfigError) as info:
        read_tenant_files(path)
    assert str(info.value).startswith(f"{path}: not valid TOML")
    assert "\n" not in str(info.value)


def test_directory_with_one_bad_file_is_rejected_whole(tmp_path: Path) -> None:
    write_doc(tmp_path, base_doc(), "a.toml")
    bad = base_doc() | {"id": "t2", "hosts": ["b.test"], "network": "moon"}
    bad_path = write_doc(tmp_path, bad, "b.toml")
    with pytest.raises(ConfigError) as info:
        read_tenant_files(tmp_path)
    assert str(info.value).startswith(f"{bad_path}: network: ")


def test_same_id_in_two_files_is_rejected(tmp_path: Path) -> None:
    write_doc(tmp_path, base_doc(), "a.toml")
    other = copy.deepcopy(base_doc()) | {"hosts": ["b.test"]}
    second = write_doc(tmp_path, other, "b.toml")
    with pytest.raises(ConfigError) as info:
        read_tenant_files(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{second}: id: ")
    assert str(tmp_path / "a.toml") in message
    assert "'t1'" in message


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        read_tenant_files(tmp_path / "nope.toml")
    assert str(tmp_path / "nope.toml") in str(info.value)
