"""How the MongoDB store names a server's failure: 503-worthy (StoreUnavailable), a duplicate,
or the platform's own fault (StoreError, a 500).

The failures are PyMongo's own exception objects as the driver raises them from a server's
reply (code, codeName, errorLabels); a server cannot be made to send most of them on demand.
That a StoreUnavailable becomes a 503 with Retry-After over HTTP is shown against a frozen
FerretDB in tests/faults/test_store_outage.py.
"""

from __future__ import annotations

import pytest
from pymongo.errors import OperationFailure

from kyc_host.store.base import DuplicateKeyError, StoreError, StoreUnavailable
from kyc_host.store.mongo import _errors

#: A server message that quotes a document's value: it must not reach the error's text.
CANARY = "alice.canary@example.com"


def failure(code: int, name: str, *, labels: tuple[str, ...] = (),
            message: str = f"failed on {CANARY}") -> OperationFailure:
    details = {"ok": 0, "errmsg": message, "code": code, "codeName": name,
               "errorLabels": list(labels)}
    return OperationFailure(message, code, details)


def translated(exc: OperationFailure) -> StoreError:
    with pytest.raises(StoreError) as raised, _errors:
        raise exc
    return raised.value


@pytest.mark.parametrize(("code", "name"), [
    (1, "InternalError"),  # what FerretDB reports for its SQLite engine's failures
    (112, "WriteConflict"),
    (24, "LockTimeout"),
    (91, "ShutdownInProgress"),
    (189, "PrimarySteppedDown"),
    (10107, "NotWritablePrimary"),
    (11600, "InterruptedAtShutdown"),
    (262, "ExceededTimeLimit"),
])
def test_a_failure_of_the_store_itself_is_unavailable(code: int, name: str) -> None:
    error = translated(failure(code, name))
    assert type(error) is StoreUnavailable
    assert str(error) == f"mongodb: code {code} ({name})"


def test_a_failure_the_server_labels_retryable_is_unavailable() -> None:
    for label in ("RetryableWriteError", "TransientTransactionError"):
        error = translated(failure(9999, "SomethingNew", labels=(label,)))
        assert type(error) is StoreUnavailable, label
    # Any other label does not make it transient.
    assert type(translated(failure(9999, "SomethingNew", labels=("NoWritesPerformed",)))) \
        is StoreError


@pytest.mark.parametrize(("code", "name"), [
    (2, "BadValue"), (9, "FailedToParse"), (14, "TypeMismatch"), (52, "DollarPrefixedFieldName"),
])
def test_a_request_the_server_refuses_stays_the_platforms_fault(code: int, name: str) -> None:
    """A malformed command is the platform's bug: a 500 and an error log, not a 503 that
    tells wallets to come back."""
    error = translated(failure(code, name))
    assert type(error) is StoreError
    assert str(error) == f"mongodb operation failed: code {code} ({name})"


def test_ferretdbs_unique_violation_is_a_duplicate_not_a_transient_failure() -> None:
    error = translated(failure(1, "InternalError",
                               message="UNIQUE constraint failed: index 'account_1'"))
    assert type(error) is DuplicateKeyError


def test_the_servers_message_never_reaches_the_error_text() -> None:
    for exc in (failure(1, "InternalError"), failure(2, "BadValue"),
                OperationFailure(f"no details: {CANARY}", 2, None)):
        error = translated(exc)
        assert CANARY not in str(error)
        assert error.__cause__ is None  # nor chained in, for a traceback to print
        assert error.__suppress_context__
    assert str(translated(OperationFailure("bare", 2, None))) == \
        "mongodb operation failed: code 2 (no code name)"
