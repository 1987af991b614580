"""Structured logging: one JSON object per line on stderr.

Log records carry ``tenant`` and ``request_id`` when the caller passes them in ``extra``.
Messages must never contain PII values, tokens, secrets or file contents; pass identifiers
(tenant id, customer id, field *names*) only. JSON encoding escapes CR/LF and control
characters, so a value injected by a client cannot forge a log line.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


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
