"""kyc-host: a multi-tenant Stellar KYC server and its operator commands.

Exit codes: 0 success; 1 a runtime failure (store unreachable, ...); 2 bad settings, bad tenant
file or bad usage (an unknown tenant id included). Errors are one line on stderr that names
what is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from kyc_host.errors import ConfigError, ListenError
from kyc_host.logs import setup_logging
from kyc_host.settings import PlatformSettings, default_config_path, load_settings
from kyc_host.store.base import StoreError

EXIT_FAILURE = 1
EXIT_USAGE = 2


def _common(parser: argparse.ArgumentParser) -> None:
    """Options every command that opens the store accepts."""
    parser.add_argument("--config", type=Path, help="settings file (default: config/kyc-host.toml"
                        " if present)")
    parser.add_argument("--storage-url", help="sqlite:///path or mongodb://host/db")
    parser.add_argument("--master-key-file", help="platform master key file")
    parser.add_argument("--dev", action="store_true", default=None,
                        help="development mode (creates a missing master key)")
    parser.add_argument("--log-level", help="debug, info, warning or error")


#: The commands, in the order ``kyc-host --help`` lists them.
COMMANDS = ("serve", "tenant", "keys", "token", "audit", "customer", "callbacks", "purge")


def _description() -> str:
    return (f"{__doc__.splitlines()[0]} Commands: {', '.join(COMMANDS)}. For one command's "
            "options: kyc-host COMMAND --help. Exit codes: 0 success, 1 runtime failure, 2 bad "
            "settings, tenant file or usage (an unknown tenant id included).")


def _int_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (else a usage error)."""
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {low} to {high}, got {raw!r}")
        return value
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kyc-host", description=_description())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the server")
    _common(serve)
    serve.add_argument("--public-listen", help="HOST:PORT of the wallet-facing listener")
    serve.add_argument("--admin-listen", help="HOST:PORT of the management listener")
    serve.add_argument("--tenants-dir", help="tenant files applied at start")
    serve.add_argument("--plugins-dir", help="where tenant plugins are found")
    serve.add_argument("--serve-tenants", metavar="PATTERNS",
                       help="comma-separated tenant ids or patterns (\"big-*\") this process "
                            "serves; default every tenant")
    serve.add_argument("--workers", type=_int_range(1, 64), default=1, metavar="N",
                       help="worker processes sharing the listeners (1..64, default 1)")
    serve.set_defaults(run=_serve)

    tenant = commands.add_parser("tenant", help="manage tenants").add_subparsers(
        dest="tenant_command", required=True, metavar="ACTION")
    apply = tenant.add_parser("apply", help="validate and apply a tenant file or directory")
    _common(apply)
    apply.add_argument("path", type=Path)
    apply.set_defaults(run=_tenant_apply)
    listing = tenant.add_parser("list", help="list tenants in the store")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_tenant_list)
    for action, what in (("suspend", "suspend a tenant (503 on its hosts)"),
                         ("resume", "resume a suspended tenant")):
        sub = tenant.add_parser(action, help=what)
        _common(sub)
        sub.add_argument("tenant_id")
        sub.set_defaults(run=_tenant_status, status="suspended" if action == "suspend"
                         else "active")

    delete = tenant.add_parser(
        "delete", help="offboard a tenant: keys destroyed, data dropped, hosts freed")
    _common(delete)
    delete.add_argument("tenant_id")
    delete.add_argument("--yes", action="store_true",
                        help="required: the tenant's data cannot be recovered afterwards")
    delete.set_defaults(run=_tenant_delete)

    keys = commands.add_parser("keys", help="platform keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    gen = keys.add_parser("generate-master", help="write a new master key file (never overwrites)",
                          description="Write a new master key file (mode 0600) where the "
                          "settings' master_key_file points, or to --file; an existing file "
                          "is never overwritten.")
    gen.add_argument("--config", type=Path, help="settings file (default: config/kyc-host.toml"
                     " if present)")
    gen.add_argument("--file", "--master-key-file", dest="master_key_file", metavar="PATH",
                     help="where to write the key (default: the master_key_file setting, "
                          "from --config, KYC_HOST_MASTER_KEY_FILE or .kyc-host/master.key)")
    gen.set_defaults(run=_generate_master)
    _key_parsers(keys)
    _token_parsers(commands)
    _audit_parsers(commands)
    _customer_parsers(commands)
    _callbacks_parsers(commands)
    _purge_parser(commands)
    return parser


def _key_parsers(keys: Any) -> None:
    """``keys ...``: rotations and master key versions (kyc_host/crypto/commands.py)."""
    module = "kyc_host.crypto.commands"
    for name, command, helptext, tenant in (
            ("rotate", "keys_rotate", "new tenant key-encryption key; re-wrap every data key "
             "(resumable)", True),
            ("reindex", "keys_reindex", "new blind-index key; recompute every index "
             "(resumable)", True),
            ("rotate-master", "keys_rotate_master", "re-wrap every tenant's secrets under "
             "the newest master key version (resumable)", False),
            ("rotate-jwt", "keys_rotate_jwt", "new JWT signing key; the previous one verifies "
             "until its tokens expire", True),
            ("rotate-signing", "keys_rotate_signing", "new SEP-10 SIGNING_KEY; challenges "
             "signed before verify until they expire", True)):
        sub = keys.add_parser(name, help=helptext)
        _common(sub)
        if tenant:
            sub.add_argument("--tenant", metavar="ID", required=True)
        sub.add_argument("--quiet", action="store_true", help="no progress output")
        sub.set_defaults(run=_services_command, command=command, module=module)
    add = keys.add_parser("add-master-version", help="append a new master key version to "
                          "the key file (then: rotate-master)")
    _common(add)
    add.set_defaults(run=_services_command, command="keys_add_master_version", module=module)
    remove = keys.add_parser("remove-master-version", help="remove a master key version no "
                             "tenant uses any more")
    _common(remove)
    remove.add_argument("--version", type=_int_range(1, 2**31), required=True, metavar="N")
    remove.set_defaults(run=_services_command, command="keys_remove_master_version",
                        module=module)
    status = keys.add_parser("status", help="key versions (never key material)")
    _common(status)
    status.add_argument("--tenant", metavar="ID")
    status.set_defaults(run=_services_command, command="keys_status", module=module)


def _purge_parser(commands: Any) -> None:
    purge = commands.add_parser("purge", help="shred erased customers whose retention period "
                                "is over (the server also does this periodically)")
    _common(purge)
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", metavar="ID")
    which.add_argument("--all", action="store_true", help="every tenant")
    purge.add_argument("--dry-run", action="store_true", help="show, change nothing")
    purge.add_argument("--json", action="store_true", help="machine-readable output")
    purge.set_defaults(run=_services_command, command="purge",
                       module="kyc_host.retention.commands")


def _held_parsers(customer: Any) -> None:
    """``customer show-held | legal-hold``: the auditor path (kyc_host/retention/commands.py)."""
    module = "kyc_host.retention.commands"
    show = customer.add_parser("show-held", help="erased customers held for retention; with "
                               "--customer, their decrypted data (audited)")
    _common(show)
    show.add_argument("--tenant", metavar="ID", required=True)
    show.add_argument("--customer", metavar="CUSTOMER_ID")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(run=_services_command, command="customer_show_held", module=module)
    hold = customer.add_parser("legal-hold", help="set or clear a legal hold (pauses "
                               "shredding; applies to live and held customers)")
    _common(hold)
    hold.add_argument("--tenant", metavar="ID", required=True)
    hold.add_argument("--customer", metavar="CUSTOMER_ID", required=True)
    hold.add_argument("state", choices=("on", "off"))
    hold.set_defaults(run=_services_command, command="customer_legal_hold", module=module)


def _days(raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 3650:
        raise argparse.ArgumentTypeError("expected a whole number of days from 1 to 3650")
    return int(raw)


def _token_parsers(commands: Any) -> None:
    token = commands.add_parser("token", help="management-API tokens").add_subparsers(
        dest="token_command", required=True, metavar="ACTION")
    create = token.add_parser("create", help="create a token (printed once)")
    _common(create)
    whose = create.add_mutually_exclusive_group(required=True)
    whose.add_argument("--operator", action="store_true", help="an operator token")
    whose.add_argument("--tenant", metavar="ID", help="a tenant-admin token of tenant ID")
    create.add_argument("--scopes", nargs="+", metavar="SCOPE",
                        help="scopes, space- or comma-separated (operator default: operator)")
    create.add_argument("--expires-in", type=_days, metavar="DAYS", help="expire after DAYS")
    create.add_argument("--note", help="what the token is for (shown in listings)")
    create.add_argument("--json", action="store_true", help="machine-readable output")
    create.set_defaults(run=_services_command, command="token_create")
    listing = token.add_parser("list", help="list operator tokens, or a tenant's")
    _common(listing)
    listing.add_argument("--tenant", metavar="ID")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_services_command, command="token_list")
    revoke = token.add_parser("revoke", help="revoke a token by its prefix")
    _common(revoke)
    revoke.add_argument("prefix")
    revoke.set_defaults(run=_services_command, command="token_revoke")


def _audit_parsers(commands: Any) -> None:
    audit = commands.add_parser("audit", help="audit logs").add_subparsers(
        dest="audit_command", required=True, metavar="ACTION")
    verify = audit.add_parser("verify", help="check a hash chain (exit 1 if tampered)")
    _common(verify)
    which = verify.add_mutually_exclusive_group(required=True)
    which.add_argument("--tenant", metavar="ID")
    which.add_argument("--platform", action="store_true", help="the platform audit log")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(run=_services_command, command="audit_verify")


def _customer_parsers(commands: Any) -> None:
    customer = commands.add_parser("customer", help="review a tenant's customers").add_subparsers(
        dest="customer_command", required=True, metavar="ACTION")
    decide = customer.add_parser(
        "decide", help="set a customer's status for one type (exit 1: not found or not "
                       "allowed by the customer's data)")
    _common(decide)
    decide.add_argument("--tenant", metavar="ID", required=True)
    decide.add_argument("customer_id")
    decide.add_argument("--type", metavar="T", help="customer type (default: the tenant's)")
    decide.add_argument("--status", metavar="S", required=True,
                        help="ACCEPTED, REJECTED, NEEDS_INFO or PROCESSING")
    decide.add_argument("--message", metavar="M", help="shown to the wallet (REJECTED: "
                        "required)")
    decide.add_argument("--field", action="append", metavar="NAME=STATUS[:ERROR]",
                        help="a field verdict (ACCEPTED, REJECTED, PROCESSING); repeatable")
    decide.add_argument("--json", action="store_true", help="machine-readable output")
    decide.set_defaults(run=_services_command, command="customer_decide")
    listing = customer.add_parser("list", help="the review queue, most recently updated "
                                  "first")
    _common(listing)
    listing.add_argument("--tenant", metavar="ID", required=True)
    listing.add_argument("--status", metavar="S", help="only customers in this status")
    listing.add_argument("--type", metavar="T", help="only this customer type")
    listing.add_argument("--limit", type=_int_range(1, 200), default=50, metavar="N",
                         help="page size (1..200, default 50)")
    listing.add_argument("--cursor", help="continue from a previous page")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_services_command, command="customer_list")
    _held_parsers(customer)


def _callbacks_parsers(commands: Any) -> None:
    callbacks = commands.add_parser("callbacks", help="SEP-12 callback and webhook deliveries"
                                    ).add_subparsers(dest="callbacks_command", required=True,
                                                     metavar="ACTION")
    listing = callbacks.add_parser("list", help="a tenant's events, newest first")
    _common(listing)
    listing.add_argument("--tenant", metavar="ID", required=True)
    listing.add_argument("--state", choices=("pending", "delivered", "dead", "disabled"))
    listing.add_argument("--limit", type=_int_range(1, 200), default=50, metavar="N",
                         help="at most this many (1..200, default 50)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_services_command, command="callbacks_list",
                         module="kyc_host.callbacks.commands")
    replay = callbacks.add_parser("replay", help="send a dead-lettered event again (audited)")
    _common(replay)
    replay.add_argument("--tenant", metavar="ID", required=True)
    replay.add_argument("event_id")
    replay.set_defaults(run=_services_command, command="callbacks_replay",
                        module="kyc_host.callbacks.commands")


def _services_command(args: argparse.Namespace) -> int:
    """Run ``<args.module>.<args.command>(services, args)`` (default module:
    management.commands) with the store open; it returns the exit code. (Imported here, so
    ``--help`` stays fast.)"""
    import importlib

    commands = importlib.import_module(getattr(args, "module", "kyc_host.management.commands"))
    command = getattr(commands, args.command)

    async def go() -> int:
        services = await _with_services(args)
        try:
            code: int = await command(services, args)
        finally:
            await services.store.close()
        return code

    return _run(go())


def _settings(args: argparse.Namespace) -> PlatformSettings:
    overrides = {
        key: getattr(args, attr, None)
        for key, attr in (("storage_url", "storage_url"), ("master_key_file", "master_key_file"),
                          ("dev_mode", "dev"), ("log_level", "log_level"),
                          ("public_listen", "public_listen"), ("admin_listen", "admin_listen"),
                          ("tenants_dir", "tenants_dir"), ("plugins_dir", "plugins_dir"),
                          ("serve_tenants", "serve_tenants"))
    }
    config = args.config if args.config is not None else default_config_path()
    return load_settings(config, overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except ConfigError as exc:
        print(f"kyc-host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"kyc-host: store unavailable: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except ListenError as exc:
        print(f"kyc-host: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE


def _run(coro: Awaitable[int]) -> int:
    async def wrapper() -> int:
        return await coro

    return asyncio.run(wrapper())


def _serve(args: argparse.Namespace) -> int:
    from kyc_host.app import run

    settings = _settings(args)
    setup_logging(settings.log_level)
    return run(settings, args.workers)


async def _with_services(args: argparse.Namespace, apply_files: bool = False) -> Any:
    from kyc_host.app import build_services

    settings = _settings(args)
    setup_logging(settings.log_level if args.log_level else "WARNING")
    return await build_services(settings, apply_tenant_files=apply_files)


def _tenant_apply(args: argparse.Namespace) -> int:
    from kyc_host.tenancy.service import read_tenant_files

    docs = read_tenant_files(args.path)  # validate everything before opening the store

    async def go() -> int:
        services = await _with_services(args)
        try:
            for result in await services.tenants.apply(docs):
                moved = ("" if result.moved_from is None else
                         f" (now managed by this file; was {result.moved_from})")
                print(f"{result.tenant_id}: {result.action}{moved}")
        finally:
            await services.store.close()
        return 0

    return _run(go())


def _tenant_list(args: argparse.Namespace) -> int:
    async def go() -> int:
        services = await _with_services(args)
        try:
            rows = []
            for record in await services.tenants.list_all():
                tenant = services.registry.get(record["_id"])
                rows.append({
                    "id": record["_id"], "status": record["status"],
                    "hosts": record["config"].get("hosts", []),
                    "manager": record["manager"],
                    "signing_key": tenant.secrets.signing_keypair.public_key if tenant else None,
                })
        finally:
            await services.store.close()
        if args.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print("no tenants")
        else:
            for row in rows:
                print(f"{row['id']:<20} {row['status']:<10} {','.join(row['hosts']):<40} "
                      f"{row['signing_key']}  ({row['manager']})")
        return 0

    return _run(go())


def _tenant_status(args: argparse.Namespace) -> int:
    async def go() -> int:
        services = await _with_services(args)
        try:
            found = await services.tenants.set_status(args.tenant_id, args.status)
        finally:
            await services.store.close()
        if not found:
            print(f"kyc-host: no tenant {args.tenant_id!r}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{args.tenant_id}: {args.status}")
        return 0

    return _run(go())


def _tenant_delete(args: argparse.Namespace) -> int:
    if not args.yes:
        print(f"kyc-host: deleting tenant {args.tenant_id!r} destroys its keys and data for "
              "good; add --yes to confirm", file=sys.stderr)
        return EXIT_USAGE

    async def go() -> int:
        from kyc_host.crypto.jobs import JobBusy
        from kyc_host.management.tenants import offboard_tenant

        services = await _with_services(args)
        try:
            record = await offboard_tenant(services, args.tenant_id, "cli")
        except JobBusy:
            print(f"kyc-host: tenant {args.tenant_id!r} is being offboarded by another run; "
                  "it finishes on its own", file=sys.stderr)
            return 1
        finally:
            await services.store.close()
        if record is None:  # never existed, or already deleted
            print(f"kyc-host: no tenant {args.tenant_id!r}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{args.tenant_id}: deleted (keys destroyed, data dropped, hosts freed)")
        manager = str(record.get("manager", ""))
        if manager.startswith("file:"):
            print(f"note: remove {manager.removeprefix('file:')} or the next `serve` / "
                  "`tenant apply` creates the tenant again, with new keys", file=sys.stderr)
        return 0

    return _run(go())


def _generate_master(args: argparse.Namespace) -> int:
    from kyc_host.crypto.master import write_new_key_file

    # The same file every other command reads (settings file, env, flag), so the hint of a
    # missing key ("create one with `kyc-host keys generate-master`") leads to it.
    settings: PlatformSettings | None
    try:
        settings = _settings(args)
    except ConfigError:
        if args.master_key_file is None:
            raise
        settings = None  # an explicit --file needs no valid settings
    key_file = Path(args.master_key_file) if settings is None else settings.master_key_file
    try:
        write_new_key_file(key_file)
    except FileExistsError:
        print(f"kyc-host: {key_file} exists; refusing to overwrite a master key",
              file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        print(f"kyc-host: cannot write {key_file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"wrote a new master key to {key_file} (mode 0600); back it up")
    if settings is not None and os.environ.get(settings.master_key_env):
        print(f"kyc-host: note: ${settings.master_key_env} is set, and servers use it rather "
              "than this file", file=sys.stderr)
    return 0
