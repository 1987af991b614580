"""Calling a tenant's hooks: timeout, error mapping and output checks.

Every hook runs as its own task, bounded by the tenant's ``limits.hook_timeout_seconds``.
Only the request that called the hook waits for it: a hook that hangs holds that request
until its timeout and nothing else, because nothing here is shared between tenants or
requests (reliability-plan F7). When the time is up the request answers at once; the task is
cancelled without waiting for it, so a hook that swallows the cancellation cannot hold the
request either.

Outcomes: ``HookRejected(msg)`` -> 400 with ``msg``; any other exception, a timeout or a return
value of the wrong type -> generic 500, with the detail logged under the tenant id (exception
type and traceback only: exception text may quote customer data).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kyc_host.errors import ApiError, BadRequest
from kyc_host.hooks.context import TenantContext
from kyc_host.hooks.contract import CustomerHooks, HookRejected

log = logging.getLogger("kyc_host.hooks")
T = TypeVar("T")

#: Longest HookRejected message passed to a wallet.
MAX_REJECT_MESSAGE = 500


class HookFailed(ApiError):
    """A plugin failed (raised, timed out or returned nonsense); the wallet sees only this."""

    status = 500

    def __init__(self, log_detail: str) -> None:
        super().__init__("internal server error", log_detail=log_detail)


class HookRunner:
    """Runs one tenant's hooks. Cheap to build; one per tenant version."""

    def __init__(self, hooks: CustomerHooks, ctx: TenantContext, timeout: float) -> None:
        self.hooks = hooks
        self.ctx = ctx
        self.timeout = timeout

    def overrides(self, name: str) -> bool:
        """Whether the plugin replaces the platform's default for hook ``name``."""
        return getattr(type(self.hooks), name) is not getattr(CustomerHooks, name)

    async def call(self, name: str, check: Callable[[Any], bool], *args: Any) -> Any:
        """Run hook ``name`` with ``(ctx, *args)``; ``check`` validates what it returns."""
        method: Callable[..., Awaitable[Any]] = getattr(self.hooks, name)
        if not self.overrides(name):
            return await method(self.ctx, *args)  # the platform's own default: trusted
        result = await self._invoke(name, *args)
        if not check(result):
            raise self._failed(name, f"returned an invalid {type(result).__name__}")
        return result

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
            raise self._failed(name, f"timed out after {self.timeout:g}s")
        try:
            result = task.result()
        except HookRejected as exc:
            raise BadRequest(_public(exc.message), log_detail=f"hook {name} rejected") from None
        except asyncio.CancelledError:
            raise self._failed(name, "was cancelled") from None
        except Exception as exc:
            raise self._failed(name, f"raised {type(exc).__name__}", exc) from None
        return result

    def _failed(self, name: str, what: str, exc: BaseException | None = None) -> HookFailed:
        # The platform's log formatter keeps an exception's type and traceback, never its
        # message (which may quote customer data).
        detail = f"plugin hook {name} of tenant {self.ctx.tenant_id} {what}"
        log.error(detail, exc_info=exc, extra={"tenant": self.ctx.tenant_id})
        return HookFailed(detail)


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
