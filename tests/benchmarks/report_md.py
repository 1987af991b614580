"""Render the figures of one or more ``run.py --json`` files as Markdown tables (for
BENCHMARKS.md), the issue's targets and the reference figures beside them.

    python tests/benchmarks/report_md.py sqlite.json mongo.json > figures.md

Columns follow the order of the files; a figure a file lacks shows as "-".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: (label, scenario, dotted figure key, unit, target text, reference django-polaris figure)
ROWS: list[tuple[str, str, str, str, str, str]] = [
    ("GET stellar.toml (HTTP baseline)", "toml", "requests_per_s", "req/s", "", ""),
    ("  p50 / p99", "toml", "p50_ms|p99_ms", "ms", "", ""),
    ("  server CPU per request", "toml", "server_cpu_ms_per_request", "ms", "", ""),
    ("SEP-10 logins", "sep10", "logins_per_s", "/s", ">= 600", "140"),
    ("  p50 / p99 of a login", "sep10", "p50_ms|p99_ms", "ms", "", ""),
    ("  server CPU per login", "sep10", "server_cpu_ms_per_login", "ms", "", ""),
    ("  client CPU (signing, same cores)", "sep10", "client_cpu_cores", "cores", "", ""),
    ("GET /kyc/customer", "get_customer", "requests_per_s", "req/s", ">= 3,000", "510"),
    ("  p50 / p99", "get_customer", "p50_ms|p99_ms", "ms", "p99 <= 20", "p99 ~ 50"),
    ("  server CPU per request", "get_customer", "server_cpu_ms_per_request", "ms", "", ""),
    ("PUT /kyc/customer JSON, new customers", "put_customer", "requests_per_s", "req/s",
     ">= 1,000", "160"),
    ("  p50 / p99", "put_customer", "p50_ms|p99_ms", "ms", "", ""),
    ("  server CPU per request", "put_customer", "server_cpu_ms_per_request", "ms", "", ""),
    ("PUT multipart, 1 MiB JPEG", "put_multipart", "upload_mib_per_s", "MiB/s", "", ""),
    ("  requests, p50 / p99", "put_multipart", "requests_per_s|p50_ms|p99_ms", "/s, ms", "",
     ""),
    ("  workers' RSS before / peak (sum)", "put_multipart",
     "workers_rss_before_kb|workers_rss_peak_kb", "KiB", "", ""),
    ("  largest worker peak RSS (VmHWM)", "put_multipart", "max_worker_hwm_kb", "KiB", "", ""),
    ("GET, 1 worker", "workers", "1.requests_per_s", "req/s", "", ""),
    ("  p50 / p99", "workers", "1.p50_ms|1.p99_ms", "ms", "", ""),
    ("GET, 2 workers", "workers", "2.requests_per_s", "req/s", ">= 3,000", ""),
    ("  p50 / p99", "workers", "2.p50_ms|2.p99_ms", "ms", "p99 <= 20", ""),
    ("  CPU shares of the 2 workers", "workers", "2.worker_cpu_shares", "", "", ""),
]

TENANT_ROWS: list[tuple[str, str, str, str]] = [
    ("start-up, tenant files applied (first start)", "startup_s", "s", "<= 5 s"),
    ("start-up, same files again (all unchanged)", "restart_unchanged_s", "s", "<= 5 s"),
    ("start-up, tenants only in the store", "restart_store_only_s", "s", "<= 5 s"),
    ("RSS per worker after start", "rss_after_start_kb", "KiB", ""),
    ("RSS per worker after warming every tenant", "rss_after_warm_kb", "KiB", ""),
    ("GET stellar.toml over all tenants", "toml.requests_per_s", "req/s", ""),
    ("  p50 / p99", "toml.p50_ms|toml.p99_ms", "ms", ""),
    ("GET /kyc/customer over all tenants", "customer.requests_per_s", "req/s", ""),
    ("  p50 / p99", "customer.p50_ms|customer.p99_ms", "ms", ""),
]


def lookup(figures: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(figures, dict) or part not in figures:
            return None
        figures = figures[part]
    return figures


def shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " / ".join(f"{v:g}" for v in value)
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def cell(figures: Any, keys: str) -> str:
    return " / ".join(shown(lookup(figures, k)) for k in keys.split("|"))


def render(reports: list[dict[str, Any]]) -> str:
    names = [f"{r['backend']} ({r['workers']} workers)" for r in reports]
    out = ["| figure | " + " | ".join(names) + " | target | django-polaris |",
           "|---|" + "---|" * len(reports) + "---|---|"]
    for label, scenario, keys, unit, target, reference in ROWS:
        values = [cell(r["scenarios"].get(scenario), keys) for r in reports]
        if all(v.replace(" / ", "").replace("-", "") == "" for v in values):
            continue
        out.append(f"| {label} ({unit}) | " + " | ".join(values)
                   + f" | {target} | {reference} |" if unit else
                   f"| {label} | " + " | ".join(values) + f" | {target} | {reference} |")
    out.append("")
    for report in reports:
        tenants = report["scenarios"].get("tenants")
        if not tenants:
            continue
        counts = [k for k in tenants if k.isdigit()]
        out += [f"Tenant scaling, {report['backend']}, {tenants.get('workers', '?')} worker "
                "process(es):", "",
                "| figure | " + " | ".join(f"{c} tenant(s)" for c in counts) + " | target |",
                "|---|" + "---|" * len(counts) + "---|"]
        for label, keys, unit, target in TENANT_ROWS:
            values = [cell(tenants[c], keys) for c in counts]
            if all(v.replace(" / ", "").replace("-", "") == "" for v in values):
                continue
            out.append(f"| {label} ({unit}) | " + " | ".join(values) + f" | {target} |")
        out += ["", f"- extra RSS per tenant (warm, per worker): "
                f"{shown(tenants.get('extra_kb_per_tenant'))} KiB (target <= 200 KB); cold: "
                f"{shown(tenants.get('extra_kb_per_tenant_cold'))} KiB",
                f"- p50 ratio largest / 1 tenant: stellar.toml "
                f"{shown(tenants.get('toml_p50_ratio'))}, GET /kyc/customer "
                f"{shown(tenants.get('customer_p50_ratio'))} (target <= 1.10)", ""]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args(argv)
    reports = [json.loads(p.read_text()) for p in args.files]
    sys.stdout.write(render(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
