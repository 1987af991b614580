"""Calling a tenant's hooks: timeout, error mapping and output checks.

Every hook runs as its own task, bounded by the tenant's ``limits.hook_timeout_seconds``.
Only the request that called the hook waits for it: a hook that hangs holds that request
until its timeout and nothing else, because nothing here is shared between tenants or
requests (reliability-plan F7). When the time is up the request answers at once; the task is
cancelled without waiting for it, so a hook that swallows the cancellation cannot hold the
request either.

Outcomes: ``HookRejected(msg)`` -> 400 with ``msg``; the store's StoreUnavailable (raised
under the hook by ``ctx.customers``) -> 503 as anywhere else; any other exception, a timeout
or a return value of the wrong type -> generic 500, with the detail logged under the tenant
id (exception type and traceback only: exception text may quote customer data).

Each call of a plugin's hook (not the platform's defaults) is counted once bound to the
process's metrics (:meth:`HookRunner.bind_metrics`): ``kyc_hook_calls{tenant, hook, outcome}``
with outcome ``ok``, ``rejected`` (HookRejected), ``failed`` (raised, invalid value, worker
died), ``timeout``, ``unavailable`` (an untrusted plugin's worker cannot load it, or the store
failed under the hook: a 503, not the plugin's fault) or
``cancelled`` (the request went away), and its time in ``kyc_hook_duration_seconds{hook}``
and ``kyc_hook_tenant_duration_seconds{tenant, hook}``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from kyc_host.errors import ApiError, BadRequest, ServiceUnavailable
from kyc_host.hooks.context import TenantContext
from kyc_host.hooks.contract import CustomerHooks, HookRejected
from kyc_host.store.base import StoreUnavailable
from kyc_host.web.turns import take_turn

if TYPE_CHECKING:
    from kyc_host.metrics import Metrics

log = logging.getLogger("kyc_host.hooks")
T = TypeVar("T")

#: Longest HookRejected message passed to a wallet.
MAX_REJECT_MESSAGE = 500


class HookFailed(ApiError):
    """A plugin failed (raised, timed out or returned nonsense); the wallet sees only this."""

    status = 500

    def __init__(self, log_detail: str, outcome: str = "failed") -> None:
        super().__init__("internal server error", log_detail=log_detail)
        #: The ``outcome`` label of ``kyc_hook_calls``: "failed" or "timeout".
        self.outcome = outcome


class HookRunner:
    """Runs one tenant's hooks. Cheap to build; one per tenant version."""

    def __init__(self, hooks: CustomerHooks, ctx: TenantContext, timeout: float) -> None:
        self.hooks = hooks
        self.ctx = ctx
        self.timeout = timeout
        self.metrics: Metrics | None = None

    def bind_metrics(self, metrics: Metrics) -> None:
        """Report hook calls to ``metrics`` (the first binding wins: one server per runner)."""
        if self.metrics is None:
            self.metrics = metrics

    def overrides(self, name: str) -> bool:
        """Whether the plugin replaces the platform's default for hook ``name``."""
        return getattr(type(self.hooks), name) is not getattr(CustomerHooks, name)

    async def call(self, name: str, check: Callable[[Any], bool], *args: Any) -> Any:
        """Run hook ``name`` with ``(ctx, *args)``; ``check`` validates what it returns."""
        method: Callable[..., Awaitable[Any]] = getattr(self.hooks, name)
        if not self.overrides(name):
            return await method(self.ctx, *args)  # the platform's own default: trusted
        started = time.monotonic()
        outcome = "failed"
        try:
            result = await self._invoke(name, *args)
            if not check(result):
                raise self._failed(name, f"returned an invalid {type(result).__name__}")
            outcome = "ok"
            return result
        except HookFailed as exc:
            outcome = exc.outcome
            # A hung plugin's callers come back together, at its timeout (web/turns.py).
            await take_turn()
            raise
        except BadRequest:
            outcome = "rejected"
            raise
        except (ServiceUnavailable, StoreUnavailable):
            outcome = "unavailable"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._observe(name, outcome, time.monotonic() - started)

    def _observe(self, name: str, outcome: str, seconds: float) -> None:
        metrics = self.metrics
        if metrics is None:
            return
        tenant_id = self.ctx.tenant_id
        metrics.hook_calls.labels(tenant_id, name, outcome).inc()
        metrics.hook_latency.labels(name).observe(seconds)
        metrics.hook_tenant_seconds.labels(tenant_id, name).observe(seconds)

    async def _invoke(self, name: str, *args: Any) -> Any:
        """Run the plugin's hook ``name`` here, under the timeout; raises BadRequest for
        HookRejected and HookFailed for anything else (hooks/isolation.py runs it in a
        worker process instead)."""
        method: Callable[..., Awaitable[Any]] = getattr(self.hooks, name)
        task = asyncio.ensure_future(method(self.ctx, *args))
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            task.cancel()
            task.add_done_callback(_discard_result)
            raise self._failed(name, f"timed out after {self.timeout:g}s", timeout=True)
        try:
            result = task.result()
        except HookRejected as exc:
            raise BadRequest(_public(exc.message), log_detail=f"hook {name} rejected") from None
        except asyncio.CancelledError:
            raise self._failed(name, "was cancelled") from None
        except StoreUnavailable:
            # The store failed under the hook (ctx.customers): the platform's outage, not
            # the plugin's fault -- a 503 with Retry-After, as without a plugin (F1).
            raise
        except Exception as exc:
            raise self._failed(name, f"raised {type(exc).__name__}", exc) from None
        return result

    def _failed(self, name: str, what: str, exc: BaseException | None = None, *,
                timeout: bool = False) -> HookFailed:
        # The platform's log formatter keeps an exception's type and traceback, never its
        # message (which may quote customer data).
        detail = f"plugin hook {name} of tenant {self.ctx.tenant_id} {what}"
        log.error(detail, exc_info=exc, extra={"tenant": self.ctx.tenant_id})
        return HookFailed(detail, "timeout" if timeout else "failed")


def _public(message: object) -> str:
    if not isinstance(message, str) or not message.strip():
        return "request refused"
    text = message.strip()
    return text if len(text) <= MAX_REJECT_MESSAGE else text[:MAX_REJECT_MESSAGE - 3] + "..."


def _discard_result(task: asyncio.Future[Any]) -> None:
    # Retrieve the outcome of an abandoned hook so asyncio does not log it as never retrieved.
    if not task.cancelled():
        task.exception()


def any_result(value: object) -> bool:
    """For hooks whose return value the platform ignores."""
    return True


def returns(kind: type[Any] | tuple[type[Any], ...]) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return isinstance(value, kind)

    return check
