"""One error family for everything a client can see.

Handlers and services *raise* these; ``BaseHandler.write_error`` renders them once as
``{"error": public_message}``. ``log_detail`` goes to the log only. Any other exception
becomes a generic 500: its text never reaches a client (it may hold PII or internals).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class ApiError(Exception):
    """An error with an HTTP status and a message that is safe to show to the client."""

    status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        log_detail: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.log_detail = log_detail
        self.headers: Mapping[str, str] = headers or {}


class BadRequest(ApiError):
    status = 400


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class NotFound(ApiError):
    status = 404


class RequestTimeout(ApiError):
    status = 408


class Conflict(ApiError):
    status = 409


class MisdirectedRequest(ApiError):
    """RFC 9110 §15.5.20: this server does not serve the request's host (a tenant another
    group of processes serves, and the load balancer sent it here)."""

    status = 421


class PayloadTooLarge(ApiError):
    status = 413


class UnsupportedMediaType(ApiError):
    status = 415


class TooManyRequests(ApiError):
    status = 429


class LimitExceeded(TooManyRequests):
    """A tenant limit (``limits.<limit>``) is used up; counted per tenant and limit in
    ``kyc_rate_limited``. Rates send ``Retry-After``; quotas do not: they free up when the
    client deletes or replaces data (or, for files, when its unattached uploads expire a
    day later), so no wait would make the same request succeed and a Retry-After would only
    invite automatic retries (RFC 6585 §4 makes it optional)."""

    def __init__(self, limit: str, message: str, *, retry_after: int | None = None) -> None:
        headers = None if retry_after is None else {"Retry-After": str(retry_after)}
        super().__init__(message, headers=headers)
        self.limit = limit


class ServiceUnavailable(ApiError):
    """The platform (or a dependency such as the store) cannot serve right now; retry later."""

    status = 503

    def __init__(
        self,
        message: str = "service temporarily unavailable",
        *,
        log_detail: str | None = None,
        retry_after: int = 5,
    ) -> None:
        super().__init__(message, log_detail=log_detail, headers={"Retry-After": str(retry_after)})


class BadGateway(ApiError):
    """An upstream we depend on (Horizon, a wallet's server) answered wrongly."""

    status = 502


class ConfigError(Exception):
    """A settings or tenant document is invalid.

    ``str()`` is one line naming the source (file or API), the key and the offending value,
    so an operator can fix it without reading code.
    """

    def __init__(self, source: str, key: str, problem: str, value: object = None) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        self.value = value
        shown = "" if value is None else f" (got {_short_repr(value)})"
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}{shown}")


class ListenError(Exception):
    """A listener's address cannot be bound at start-up (in use, not permitted, no such
    address here). ``str()`` is one line naming the listener, its address and the reason."""

    def __init__(self, listener: str, address: str, error: OSError) -> None:
        self.listener = listener
        self.address = address
        reason = error.strerror or str(error) or type(error).__name__
        super().__init__(f"cannot listen on {address} ({listener}): "
                         f"{reason[:1].lower()}{reason[1:]}")


def _short_repr(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
