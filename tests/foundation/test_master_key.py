"""The platform master key: where it comes from, dev-mode creation, versions, bad files."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from kyc_host.crypto.aead import DecryptionError, new_key
from kyc_host.crypto.master import (
    format_key_line,
    load_key_provider,
    write_new_key_file,
)
from kyc_host.errors import ConfigError

ENV = "KYC_HOST_MASTER_KEY"


def test_dev_mode_creates_missing_key_file_0600_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key_file = tmp_path / "state" / "master.key"
    with caplog.at_level(logging.WARNING, logger="kyc_host.crypto.master"):
        provider = load_key_provider(key_file, ENV, dev_mode=True, environ={})
    assert key_file.is_file()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(key_file) in warnings[0].getMessage()
    # The created key works, and a second start reads the same key back.
    wrapped = provider.wrap(b"secret", "ctx")
    again = load_key_provider(key_file, ENV, dev_mode=True, environ={})
    assert again.unwrap(wrapped, "ctx") == b"secret"


def test_missing_key_outside_dev_mode_names_file_and_env(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    with pytest.raises(ConfigError) as info:
        load_key_provider(key_file, ENV, dev_mode=False, environ={})
    message = str(info.value)
    assert str(key_file) in message
    assert ENV in message
    assert "\n" not in message
    assert not key_file.exists()


def test_env_variable_takes_precedence_over_file(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    write_new_key_file(key_file)
    env_key = new_key()
    from_env = load_key_provider(key_file, ENV, dev_mode=False,
                                 environ={ENV: format_key_line(1, env_key)})
    from_file = load_key_provider(key_file, ENV, dev_mode=False, environ={})
    wrapped = from_env.wrap(b"secret", "ctx")
    with pytest.raises(DecryptionError):
        from_file.unwrap(wrapped, "ctx")
    # Outside dev mode the env variable alone is enough: no file needed.
    only_env = load_key_provider(tmp_path / "absent.key", ENV, dev_mode=False,
                                 environ={ENV: format_key_line(1, env_key)})
    assert only_env.unwrap(wrapped, "ctx") == b"secret"


@pytest.mark.parametrize("content", [
    "",
    "# only a comment\n",
    "not a key line\n",
    "1:%%%%\n",
    "1:c2hvcnQ=\n",  # valid base64, but 5 bytes
    "one:" + "A" * 44 + "\n",
])
def test_malformed_key_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_key_provider(key_file, ENV, dev_mode=True, environ={})
    message = str(info.value)
    assert message.startswith(f"{key_file}: master key: ")
    assert "\n" not in message
    # The file is never replaced, even in dev mode.
    assert key_file.read_text() == content


def test_malformed_env_key_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_key_provider(tmp_path / "master.key", ENV, dev_mode=True, environ={ENV: "garbage"})
    assert f"environment {ENV}" in str(info.value)
    assert "garbage" not in str(info.value)  # key material is never echoed


def test_highest_version_wraps_and_older_versions_still_unwrap(tmp_path: Path) -> None:
    v1, v2, v3 = new_key(), new_key(), new_key()
    old_file = tmp_path / "old.key"
    old_file.write_text(format_key_line(1, v1) + "\n")
    old = load_key_provider(old_file, ENV, dev_mode=False, environ={})
    sealed_by_v1 = old.wrap(b"tenant secrets", "tenant-secrets|t1")
    assert sealed_by_v1.version == 1

    rotated_file = tmp_path / "rotated.key"
    rotated_file.write_text("# rotated\n" + "\n".join(
        format_key_line(v, k) for v, k in ((2, v2), (1, v1), (3, v3))) + "\n")
    rotated = load_key_provider(rotated_file, ENV, dev_mode=False, environ={})
    fresh = rotated.wrap(b"new secrets", "tenant-secrets|t1")
    assert fresh.version == 3
    assert rotated.unwrap(sealed_by_v1, "tenant-secrets|t1") == b"tenant secrets"
    assert rotated.unwrap(fresh, "tenant-secrets|t1") == b"new secrets"
    # The context is bound: the same blob under another tenant's context does not open.
    with pytest.raises(DecryptionError):
        rotated.unwrap(fresh, "tenant-secrets|t2")
    # A process that lacks v3 cannot open what v3 sealed, and says which version is missing.
    with pytest.raises(DecryptionError, match="v3"):
        old.unwrap(fresh, "tenant-secrets|t1")


def test_comma_separated_versions_in_env() -> None:
    v1, v2 = new_key(), new_key()
    value = f"{format_key_line(1, v1)},{format_key_line(2, v2)}"
    provider = load_key_provider(Path("/nonexistent/master.key"), ENV, dev_mode=False,
                                 environ={ENV: value})
    assert provider.wrap(b"x", "c").version == 2


def test_write_new_key_file_never_overwrites(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    write_new_key_file(key_file)
    before = key_file.read_text()
    with pytest.raises(FileExistsError):
        write_new_key_file(key_file)
    assert key_file.read_text() == before
