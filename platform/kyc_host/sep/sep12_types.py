"""SEP-12 values shared by the platform, the store and plugins: statuses and decisions.

Pure data, no I/O, so every layer (store, hooks, handlers) may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

#: Longest ``message`` / field ``error`` text a decision may carry (it is shown to wallets).
MAX_MESSAGE_CHARS = 1000


class CustomerStatus(StrEnum):
    """Customer statuses of SEP-12 §GET /customer (there is no APPROVED or PENDING)."""

    ACCEPTED = "ACCEPTED"
    PROCESSING = "PROCESSING"
    NEEDS_INFO = "NEEDS_INFO"
    REJECTED = "REJECTED"


class FieldStatus(StrEnum):
    """Statuses of ``provided_fields`` entries (SEP-12 v1.7.0+; NOT_PROVIDED was removed)."""

    ACCEPTED = "ACCEPTED"
    PROCESSING = "PROCESSING"
    REJECTED = "REJECTED"
    VERIFICATION_REQUIRED = "VERIFICATION_REQUIRED"


@dataclass(frozen=True, slots=True)
class FieldDecision:
    """A reviewer's (or plugin's) verdict on one provided field; ``error`` says why."""

    status: FieldStatus
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """A review decision for one customer type.

    ``status`` None leaves the customer status to the platform's rules; ``fields`` holds
    verdicts on single fields (a REJECTED field sends the customer back to NEEDS_INFO so it
    can be resubmitted). SEP-12 requires a ``message`` with REJECTED.
    """

    status: CustomerStatus | None = None
    message: str | None = None
    fields: Mapping[str, FieldDecision] = field(default_factory=lambda: MappingProxyType({}))

    def check(self) -> None:
        """Raise ValueError unless this decision is well-formed (types, lengths, REJECTED)."""
        if self.status is not None and not isinstance(self.status, CustomerStatus):
            raise ValueError("decision status must be a CustomerStatus")
        if self.message is not None and (
                not isinstance(self.message, str) or len(self.message) > MAX_MESSAGE_CHARS):
            raise ValueError("decision message must be a string of at most 1000 chars")
        if self.status is CustomerStatus.REJECTED and not self.message:
            raise ValueError("a REJECTED decision needs a message (SEP-12)")
        for name, verdict in self.fields.items():
            if not isinstance(name, str) or not isinstance(verdict, FieldDecision):
                raise ValueError("decision fields must map names to FieldDecision")
            if not isinstance(verdict.status, FieldStatus):
                raise ValueError("field decision status must be a FieldStatus")
            if verdict.error is not None and (
                    not isinstance(verdict.error, str) or len(verdict.error) > MAX_MESSAGE_CHARS):
                raise ValueError("field decision error must be a string of at most 1000 chars")

    def to_doc(self) -> dict[str, Any]:
        return {
            "status": None if self.status is None else str(self.status),
            "message": self.message,
            "fields": [{"name": n, "status": str(v.status), "error": v.error}
                       for n, v in self.fields.items()],
        }

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Decision:
        status = doc.get("status")
        return cls(
            status=None if status is None else CustomerStatus(status),
            message=doc.get("message"),
            fields=MappingProxyType({
                f["name"]: FieldDecision(FieldStatus(f["status"]), f.get("error"))
                for f in doc.get("fields", [])}),
        )
