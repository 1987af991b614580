"""Platform settings: defaults < file < KYC_HOST_* env < flags; every bad value named precisely."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from kyc_host.errors import ConfigError
from kyc_host.settings import SETTINGS, Listen, load_settings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "config" / "kyc-host.toml"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "kyc-host.toml"
    path.write_text(text)
    return path


def assert_one_line_naming(exc: ConfigError, *parts: str) -> None:
    message = str(exc)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_defaults() -> None:
    settings = load_settings(None, environ={})
    assert settings.public_listen == Listen("127.0.0.1", 8000)
    assert settings.admin_listen == Listen("127.0.0.1", 8001)
    assert settings.storage_url == "sqlite:///.kyc-host/store.db"
    assert settings.master_key_file == Path(".kyc-host/master.key")
    assert settings.master_key_env == "KYC_HOST_MASTER_KEY"
    assert settings.tenants_dir == Path("tenants")
    assert settings.plugins_dir == Path("plugins")
    assert settings.dev_mode is False
    assert settings.log_level == "INFO"
    assert settings.busy_tenant_requests == 16
    assert settings.upload_bytes_in_flight == 256 * 1024 * 1024
    assert settings.source == "defaults"


def test_file_values(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
public_listen = "10.0.0.5:9000"
admin_listen = "[::1]:9001"
storage_url = "mongodb://db.internal:27017/kyc"
tenants_dir = "/etc/kyc/tenants"
dev_mode = true
tenant_refresh_seconds = 2
log_level = "debug"
""")
    settings = load_settings(path, environ={})
    assert settings.public_listen == Listen("10.0.0.5", 9000)
    assert settings.admin_listen == Listen("::1", 9001)
    assert str(settings.admin_listen) == "[::1]:9001"
    assert settings.storage_url == "mongodb://db.internal:27017/kyc"
    assert settings.tenants_dir == Path("/etc/kyc/tenants")
    assert settings.dev_mode is True
    assert settings.tenant_refresh_seconds == 2.0
    assert settings.log_level == "DEBUG"
    assert settings.source == str(path)
    # Keys the file does not set keep their defaults.
    assert settings.plugins_dir == Path("plugins")


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'public_listen = "0.0.0.0:9000"\ndev_mode = true\n')
    env = {"KYC_HOST_PUBLIC_LISTEN": "127.0.0.1:7000", "KYC_HOST_DEV_MODE": "false",
           "KYC_HOST_STORAGE_URL": "sqlite:////var/lib/kyc/store.db"}
    settings = load_settings(path, environ=env)
    assert settings.public_listen == Listen("127.0.0.1", 7000)
    assert settings.dev_mode is False
    assert settings.storage_url == "sqlite:////var/lib/kyc/store.db"


def test_flags_override_env(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'public_listen = "0.0.0.0:9000"\n')
    env = {"KYC_HOST_PUBLIC_LISTEN": "127.0.0.1:7000", "KYC_HOST_TENANTS_DIR": "env-tenants"}
    settings = load_settings(path, {"public_listen": "127.0.0.1:6000", "tenants_dir": None},
                             environ=env)
    assert settings.public_listen == Listen("127.0.0.1", 6000)
    # A flag that was not given (None) leaves the env value in place.
    assert settings.tenants_dir == Path("env-tenants")


def test_unknown_key_names_file_key_and_value(tmp_path: Path) -> None:
    path = write_config(tmp_path, 'public_listen = "127.0.0.1:8000"\npublic_lisen = "x:1"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert_one_line_naming(info.value, str(path), "public_lisen", "'x:1'", "unknown")


@pytest.mark.parametrize(("key", "toml_value", "shown"), [
    ("public_listen", '"8000"', "'8000'"),
    ("public_listen", '"127.0.0.1:70000"', "'127.0.0.1:70000'"),
    ("admin_listen", "8001", "8001"),
    ("storage_url", '"postgres://db/x"', "'postgres://db/x'"),
    ("storage_url", '"sqlite:///"', "'sqlite:///'"),
    ("storage_url", '"sqlite://relative.db"', "'sqlite://relative.db'"),
    ("dev_mode", '"maybe"', "'maybe'"),
    ("dev_mode", "1", "1"),
    ("tenant_refresh_seconds", '"soon"', "'soon'"),
    ("tenant_refresh_seconds", "0", "0"),
    ("shutdown_timeout_seconds", "-5", "-5"),
    ("shutdown_timeout_seconds", "true", "True"),
    ("master_key_env", '"lower-case"', "'lower-case'"),
    ("log_level", '"loud"', "'loud'"),
    ("tenants_dir", '""', "''"),
    ("busy_tenant_requests", "-1", "-1"),
    ("busy_tenant_requests", "2.5", "2.5"),
    ("busy_tenant_requests", '"many"', "'many'"),
    ("busy_tenant_requests", "false", "False"),
    ("upload_bytes_in_flight", "1000", "1000"),  # below 1 MiB: a typo, not a bound
    ("upload_bytes_in_flight", '"256MiB"', "'256MiB'"),
    ("upload_bytes_in_flight", "-1", "-1"),
    ("serve_tenants", "[]", "[]"),
    ("serve_tenants", '["Acme"]', "'Acme'"),
    ("serve_tenants", '["a.b"]', "'a.b'"),
    ("serve_tenants", '["[ab]*"]', "'[ab]*'"),
    ("serve_tenants", "[1]", "[1]"),
])
def test_bad_file_value_names_file_key_and_value(
    tmp_path: Path, key: str, toml_value: str, shown: str
) -> None:
    path = write_config(tmp_path, f"{key} = {toml_value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert_one_line_naming(info.value, str(path), key, shown)


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"KYC_HOST_ADMIN_LISTEN": "nowhere"})
    assert_one_line_naming(info.value, "KYC_HOST_ADMIN_LISTEN", "admin_listen", "'nowhere'")


def test_bad_flag_value_names_the_command_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, {"storage_url": "redis://x"}, environ={})
    assert_one_line_naming(info.value, "command line", "storage_url", "'redis://x'")


def test_missing_and_invalid_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "nope.toml", environ={})
    assert_one_line_naming(info.value, str(tmp_path / "nope.toml"), "not found")
    path = write_config(tmp_path, "public_listen = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert_one_line_naming(info.value, str(path), "not valid TOML")


def test_shipped_config_loads_and_documents_every_key() -> None:
    settings = load_settings(SHIPPED_CONFIG, environ={})
    defaults = load_settings(None, environ={})
    # The shipped file states the defaults (its header says so).
    assert settings == dataclasses.replace(defaults, source=str(SHIPPED_CONFIG))
    lines = SHIPPED_CONFIG.read_text().splitlines()
    for setting in SETTINGS:
        index = next((i for i, line in enumerate(lines)
                      if line.split("=")[0].strip() == setting.key), None)
        assert index is not None, f"{setting.key} missing from {SHIPPED_CONFIG}"
        # The key's own comment sits directly above it, or above the key block it belongs to.
        above = index - 1
        while above >= 0 and "=" in lines[above] and not lines[above].startswith("#"):
            above -= 1
        assert above >= 0, f"{setting.key} in {SHIPPED_CONFIG} has no comment line above it"
        assert lines[above].startswith("#"), f"{setting.key} has no comment line above it"


def test_readme_settings_table_names_every_key() -> None:
    rows = [line for line in (ROOT / "README.md").read_text().splitlines()
            if line.startswith("| `")]
    for setting in SETTINGS:
        assert any(f"`{setting.key}`" in row.split(" | ")[0] for row in rows), (
            f"{setting.key} missing from the README's settings table")


def test_callback_attempt_timeout_cannot_exceed_the_outbound_clients_limit() -> None:
    assert load_settings(None, environ={"KYC_HOST_CALLBACKS_ATTEMPT_TIMEOUT_SECONDS": "5"}
                         ).callbacks_attempt_timeout_seconds == 5.0
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ={"KYC_HOST_CALLBACKS_ATTEMPT_TIMEOUT_SECONDS": "6"})
    assert_one_line_naming(info.value, "callbacks_attempt_timeout_seconds")


def test_busy_tenant_requests_from_env_and_off() -> None:
    assert load_settings(None, environ={"KYC_HOST_BUSY_TENANT_REQUESTS": "64"}
                         ).busy_tenant_requests == 64
    assert load_settings(None, environ={"KYC_HOST_BUSY_TENANT_REQUESTS": "0"}
                         ).busy_tenant_requests == 0


def test_upload_bytes_in_flight_from_env_and_off() -> None:
    assert load_settings(None, environ={"KYC_HOST_UPLOAD_BYTES_IN_FLIGHT": "1048576"}
                         ).upload_bytes_in_flight == 1048576
    assert load_settings(None, environ={"KYC_HOST_UPLOAD_BYTES_IN_FLIGHT": "0"}
                         ).upload_bytes_in_flight == 0


def test_serve_tenants_from_file_env_and_flag(tmp_path: Path) -> None:
    assert load_settings(None, environ={}).serve_tenants == ("*",)
    path = write_config(tmp_path, 'serve_tenants = ["acme", "big-*"]\n')
    assert load_settings(path, environ={}).serve_tenants == ("acme", "big-*")
    env = {"KYC_HOST_SERVE_TENANTS": " a , b?c ,"}
    assert load_settings(path, environ=env).serve_tenants == ("a", "b?c")
    assert load_settings(path, {"serve_tenants": "x"}, environ=env).serve_tenants == ("x",)
