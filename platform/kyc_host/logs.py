"""Structured logging: one JSON object per line on stderr.

Every line written while a request is served carries that request's ``tenant`` and
``request_id``: :func:`bind_request` (called by ``BaseHandler.prepare``) stores them in a
context variable, which the request's task and every task it starts (hook calls) inherit, and
:class:`JsonFormatter` adds them to lines whose caller did not pass them in ``extra`` (an
explicit value wins: a background job names its own tenant).

Messages must never contain PII values, tokens, secrets or file contents; pass identifiers
(tenant id, customer id, field *names*) only. JSON encoding escapes CR/LF and control
characters, so a value injected by a client cannot forge a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}
#: (tenant id or None, request id) of the request whose task is running, if any.
_REQUEST: ContextVar[tuple[str | None, str] | None] = ContextVar("kyc_request", default=None)


def bind_request(request_id: str, tenant: str | None) -> None:
    """Tag every line logged from now on in this task (and tasks it starts) with the request.

    Call it from the request's own task (Tornado runs each handler's ``_execute`` as one):
    the value then ends with that task and never leaks into the connection's next request.
    """
    _REQUEST.set((tenant, request_id))


def current_request() -> tuple[str | None, str] | None:
    """(tenant id or None, request id) bound by :func:`bind_request` in the running context,
    or None outside any request (background jobs). Lets observers (store traces in tests)
    attribute work to the request it was done for."""
    return _REQUEST.get()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        bound = _REQUEST.get()
        if bound is not None:
            tenant, request_id = bound
            if entry.get("tenant") is None and tenant is not None:
                entry["tenant"] = tenant
            if entry.get("request_id") is None:
                entry["request_id"] = request_id
        if record.exc_info and record.exc_info[0] is not None:
            # The type and traceback only: exception messages may quote input values.
            entry["exc_type"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatTraceback(record)
        return json.dumps(entry, default=str, ensure_ascii=True)

    def formatTraceback(self, record: logging.LogRecord) -> str:
        import traceback

        exc_type, _, tb = record.exc_info or (None, None, None)
        frames = traceback.format_tb(tb)
        return "".join(frames) + (exc_type.__name__ if exc_type else "")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Tornado's own access log is replaced by web.base.log_request (no query strings).
    logging.getLogger("tornado.access").setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime
