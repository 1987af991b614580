"""``kyc-host`` argument parsing: the top-level help names every command in plain text, and
numeric options outside their documented range are usage errors (exit 2) before anything
runs."""

from __future__ import annotations

import argparse

import pytest

from kyc_host.cli import build_parser


def _commands(parser: argparse.ArgumentParser) -> list[str]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(sub.choices)


def test_top_level_help_names_every_command_in_plain_text() -> None:
    parser = build_parser()
    commands = _commands(parser)
    assert {"serve", "tenant", "keys", "token", "audit", "customer", "callbacks",
            "purge"} <= set(commands)
    description = parser.description or ""
    for command in commands:
        assert command in description, command
    assert "``" not in parser.format_help()


TENANT = ["--tenant", "t1"]


@pytest.mark.parametrize("argv", [
    ["customer", "list", *TENANT, "--limit", "500"],
    ["customer", "list", *TENANT, "--limit", "0"],
    ["customer", "list", *TENANT, "--limit", "ten"],
    ["callbacks", "list", *TENANT, "--limit", "0"],
    ["callbacks", "list", *TENANT, "--limit", "201"],
    ["callbacks", "list", *TENANT, "--limit", "-5"],
    ["serve", "--workers", "0"],
    ["serve", "--workers", "65"],
    ["keys", "remove-master-version", "--version", "0"],
])
def test_out_of_range_numbers_are_usage_errors(argv: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "expected a whole number from" in last, last


@pytest.mark.parametrize(("argv", "attr", "value"), [
    (["customer", "list", *TENANT, "--limit", "200"], "limit", 200),
    (["customer", "list", *TENANT], "limit", 50),
    (["callbacks", "list", *TENANT, "--limit", "1"], "limit", 1),
    (["serve", "--workers", "64"], "workers", 64),
    (["keys", "remove-master-version", "--version", "3"], "version", 3),
])
def test_numbers_in_range_are_accepted(argv: list[str], attr: str, value: int) -> None:
    assert getattr(build_parser().parse_args(argv), attr) == value
