"""Limit values in tenant files and the trusted_proxies setting: defaults, and bad values
rejected with one line naming the file, the key and the value. Plus the client-IP rule."""

from __future__ import annotations

from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from tornado.httputil import HTTPHeaders

from conftest import make_tenant_doc
from kyc_host.errors import ConfigError
from kyc_host.ratelimit.client_ip import client_ip
from kyc_host.ratelimit.config import Rate, RateLimits, parse_rate
from kyc_host.settings import load_settings
from kyc_host.tenancy.schema import parse_tenant
from kyc_host.tenancy.service import read_tenant_files


def one_line(exc: ConfigError, *parts: str) -> None:
    message = str(exc)
    assert "\n" not in message
    for part in parts:
        assert part in message, (part, message)


def test_defaults_apply_without_limit_keys() -> None:
    limits = parse_tenant(make_tenant_doc("t1", ["a.test"]), "test").limits
    assert limits.rates == RateLimits()
    assert limits.rates.failed_logins_per_ip == Rate(20, 60)
    assert limits.max_customers_per_account == 10_000
    assert limits.max_files_per_identity == 50


@pytest.mark.parametrize(("text", "rate"), [
    ("60/min", Rate(60, 60)), ("5/10s", Rate(5, 10)), ("1000/h", Rate(1000, 3600)),
    ("3/day", Rate(3, 86400)), ("20/15minute", Rate(20, 900)), ("off", None)])
def test_rate_syntax(text: str, rate: Rate | None) -> None:
    assert parse_rate(text) == rate
    doc = make_tenant_doc("t1", ["a.test"], limits={"uploads_per_ip": text})
    assert parse_tenant(doc, "test").limits.rates.uploads_per_ip == rate


@pytest.mark.parametrize(("key", "value", "says"), [
    ("auth_per_ip", "60", "<count>/<window>"),
    ("auth_per_ip", "0/min", "count must be"),
    ("failed_logins_per_ip", "5/2day", "from 1 second to 1 day"),
    ("customer_puts_per_account", 30, "expected a string"),
    ("uploads_per_account", "lots", "<count>/<window>"),
    ("auth_per_account", "-1/min", "<count>/<window>"),
    ("max_files_per_identity", 0, "whole number"),
    ("max_customers_per_account", "many", "whole number"),
    ("requests_per_ip", "5/min", "unknown key"),
])
def test_bad_limit_in_a_tenant_file_is_one_line(tmp_path: Path, key: str, value: Any,
                                                says: str) -> None:
    path = tmp_path / "t1.toml"
    path.write_text(tomli_w.dumps(make_tenant_doc("t1", ["a.test"], limits={key: value})))
    with pytest.raises(ConfigError) as info:
        read_tenant_files(path)
    one_line(info.value, str(path), f"limits.{key}", says)


def test_trusted_proxies_setting(tmp_path: Path) -> None:
    assert load_settings(None, environ={}).trusted_proxies == ()
    config = tmp_path / "kyc-host.toml"
    config.write_text('trusted_proxies = ["10.0.0.0/8", "::1", "192.0.2.7"]\n')
    assert load_settings(config, environ={}).trusted_proxies == (
        ip_network("10.0.0.0/8"), ip_network("::1/128"), ip_network("192.0.2.7/32"))
    from_env = load_settings(None, environ={"KYC_HOST_TRUSTED_PROXIES": "10.1.0.0/16, fd00::/8"})
    assert from_env.trusted_proxies == (ip_network("10.1.0.0/16"), ip_network("fd00::/8"))
    assert load_settings(None, environ={"KYC_HOST_RATE_LIMITS": "off"}).rate_limits is False


@pytest.mark.parametrize("value", ['["10.0.0.1/8"]', '["proxy.example"]', "42"])
def test_bad_trusted_proxies_is_one_line(tmp_path: Path, value: str) -> None:
    config = tmp_path / "kyc-host.toml"
    config.write_text(f"trusted_proxies = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, environ={})
    one_line(info.value, str(config), "trusted_proxies")


PROXIES = (ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))


@pytest.mark.parametrize(("peer", "headers", "client"), [
    # Untrusted peers: headers are ignored whatever they say.
    ("203.0.113.9", {"X-Forwarded-For": "1.2.3.4"}, "203.0.113.9"),
    ("203.0.113.9", {"Forwarded": "for=1.2.3.4"}, "203.0.113.9"),
    # Trusted peer: the right-most address that is not a trusted proxy.
    ("127.0.0.1", {"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.0.0.3"}, "198.51.100.7"),
    ("127.0.0.1", {"X-Forwarded-For": "198.51.100.7:5555"}, "198.51.100.7"),
    ("127.0.0.1", {"Forwarded": 'for=6.6.6.6, for="[2001:db9::5]:80";proto=https'},
     "2001:db9::5"),
    ("127.0.0.1", {}, "127.0.0.1"),  # no header: the proxy itself
    ("127.0.0.1", {"X-Forwarded-For": "10.0.0.2"}, "10.0.0.2"),  # only proxies: left-most
    ("127.0.0.1", {"X-Forwarded-For": "junk, 10.0.0.2"}, "10.0.0.2"),  # unreadable: stop
    ("2001:db8::1", {"X-Forwarded-For": "::ffff:198.51.100.9"}, "198.51.100.9"),
])
def test_client_ip(peer: str, headers: dict[str, str], client: str) -> None:
    assert client_ip(peer, HTTPHeaders(headers), PROXIES) == client


def test_client_ip_without_trusted_proxies_is_the_peer() -> None:
    assert client_ip("127.0.0.1", HTTPHeaders({"X-Forwarded-For": "1.2.3.4"}), ()) == "127.0.0.1"
