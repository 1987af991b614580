"""Prometheus metrics, exported on the admin listener at ``/metrics``.

One :class:`Metrics` object per process holds every metric in its own registry (no globals,
so tests can run several servers in one process). With ``serve --workers N`` the supervisor
sets ``PROMETHEUS_MULTIPROC_DIR`` before forking; each worker then writes its samples there
and ``/metrics`` (answered by whichever worker gets the scrape) aggregates all of them.

Label cardinality is bounded on purpose: the request counter carries the tenant id, but
latency histograms are per route only (1,000 tenants x routes x buckets would be too many
series). Routes are handler class names, never raw paths (which carry account ids).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: event created -> delivered: from an immediate delivery to a day of retries.
CALLBACK_LATENCY_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86400.0)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: how late the event loop ran a timer (looplag.py); 0.1 s is the F8/L5 stall limit.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    def __init__(self) -> None:
        # In multi-process mode samples live in files; the registry used for a scrape is
        # built per request by MultiProcessCollector instead.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = None if multiprocess() else self.registry
        self.requests = Counter(
            "kyc_http_requests", "HTTP requests answered, by tenant, route and status.",
            ["tenant", "route", "method", "status"], registry=registry)
        self.latency = Histogram(
            "kyc_http_request_duration_seconds", "Time to answer a request, by route.",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.store_errors = Counter(
            "kyc_store_unavailable", "Requests failed because the store was unavailable.",
            ["tenant"], registry=registry)
        self.logins = Counter(
            "kyc_sep10_logins", "SEP-10 token requests by result (issued, rejected, error).",
            ["tenant", "result"], registry=registry)
        self.hook_calls = Counter(
            "kyc_hook_calls", "Plugin hook calls by tenant, hook and outcome (ok, rejected, "
            "failed, timeout, unavailable).",
            ["tenant", "hook", "outcome"], registry=registry)
        self.hook_latency = Histogram(
            "kyc_hook_duration_seconds", "Plugin hook durations by hook.", ["hook"],
            buckets=_LATENCY_BUCKETS, registry=registry)
        # Per tenant, a count and a sum only (the mean; two series per tenant and hook):
        # buckets per tenant would be the cardinality the module docstring rules out.
        self.hook_tenant_seconds = Summary(
            "kyc_hook_tenant_duration_seconds", "Plugin hook time by tenant and hook.",
            ["tenant", "hook"], registry=registry)
        self.upload_paced = Counter(
            "kyc_upload_paced_seconds", "Time uploads were held back by their tenant's "
            "upload_bytes_per_second, by tenant.", ["tenant"], registry=registry)
        self.busy_tenant_turns = Counter(
            "kyc_busy_tenant_turns_total", "Requests of a busy tenant (busy_tenant_requests "
            "or more in flight in this process, and more than twice the other tenants' "
            "average) that let other tenants' ready work go first (web/turns.py), by "
            "tenant.", ["tenant"], registry=registry)
        self.steps_held = Counter(
            "kyc_loop_steps_held_total", "Steps of busy tenants' work (a task's next step, a "
            "future's callbacks) the event loop held back until other ready work had run "
            "(web/turns.py); counted every event-loop lag probe (0.1 s).", registry=registry)
        self.upload_admission_wait = Counter(
            "kyc_upload_admission_wait_seconds", "Time uploads waited for their turn in their "
            "tenant's upload_bytes_per_second before their body was read, by tenant.",
            ["tenant"], registry=registry)
        self.upload_budget_wait = Counter(
            "kyc_upload_memory_wait_seconds", "Time uploads waited for room in their "
            "process's upload_bytes_in_flight before their body was read, by tenant.",
            ["tenant"], registry=registry)
        self.upload_budget_refused = Counter(
            "kyc_upload_memory_refused_total", "Uploads answered 503 because no room in "
            "their process's upload_bytes_in_flight came in time, by tenant.", ["tenant"],
            registry=registry)
        self.upload_too_slow = Counter(
            "kyc_upload_too_slow_total", "Uploads answered 408 because the rest of their body "
            "could not arrive within body_timeout_seconds even at twice its rate so far "
            "(ratelimit/bodyrate.py), by tenant.", ["tenant"], registry=registry)
        self.upload_bytes_in_flight = Gauge(
            "kyc_upload_bytes_in_flight", "Upload body bytes held now (declared lengths of "
            "uploads being received or processed); across workers the sum of the live ones.",
            multiprocess_mode="livesum", registry=registry)
        self.rate_limited = Counter(
            "kyc_rate_limited", "Requests refused with 429 by a tenant limit, by limit name.",
            ["tenant", "limit"], registry=registry)
        self.callback_events = Counter(
            "kyc_callback_events",
            "SEP-12 callback and webhook attempts by tenant and outcome (delivered, retried, "
            "dead_lettered, disabled).", ["tenant", "outcome"], registry=registry)
        self.callback_latency = Histogram(
            "kyc_callback_delivery_seconds",
            "Time from a status change (its event) to its successful delivery.",
            buckets=CALLBACK_LATENCY_BUCKETS, registry=registry)
        # Every process reads the same outbox: the value is the one last seen by any of
        # them (not a sum). "live": a worker that died no longer counts (the supervisor
        # marks it dead), else its last value would stay in the result for good.
        self.callback_pending = Gauge(
            "kyc_callback_events_pending", "Callback and webhook events not yet delivered, "
            "dead-lettered or disabled, by tenant (as last seen by the worker).", ["tenant"],
            multiprocess_mode="livemostrecent", registry=registry)
        self.loop_lag = Histogram(
            "kyc_event_loop_lag_seconds", "How late the event loop ran a periodic timer "
            "(a stall delays it by about the stall's length).", buckets=LOOP_LAG_BUCKETS,
            registry=registry)
        # Since the process started, never reset by a scrape (looplag.py says why); across
        # workers the largest of the live ones.
        self.loop_lag_max = Gauge(
            "kyc_event_loop_lag_max_seconds", "Largest event-loop lag since the process "
            "started.", multiprocess_mode="livemax", registry=registry)
        self.requests_shed = Counter(
            "kyc_requests_shed_total", "Public requests refused with 503 because the event "
            "loop was behind by more than overload_lag_seconds.", registry=registry)
        self.tenants = Gauge(
            "kyc_tenants_loaded", "Tenants this process serves.", multiprocess_mode="livemax",
            registry=registry)

    def render(self) -> bytes:
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)
