"""Demo anchor plugin: what a tenant's SEP-12 rules look like in code.

Select it in a tenant file with ``plugin = "demo_anchor"`` and tune it in
``[plugin_settings]``:

    sanctions_list = ["Ivan Sanctioned"]      # full names screened at every PUT
    auto_accept_email_domains = ["example.com"]  # complete customers with these emails: ACCEPTED
    verify_email = false                      # also ask for email_address_verification
    sandbox_code = "000000"                   # testnet only: this code verifies any field

The platform has already checked the token, the ownership of the customer, every SEP-9 value
and the files before a hook runs; it stores what the hooks decide. Hooks only add the
anchor's own rules:

- ``put``: a vendor-style screening check (a sanctions-list name match) that rejects the
  customer with a message, and an auto-accept rule for complete customers;
- ``get``: a friendlier message while the customer waits for review;
- ``verification_fields`` / ``check_verification``: a custom verification policy.
"""

from __future__ import annotations

import dataclasses
import hmac
import unicodedata

from kyc_host.hooks import (
    DEFAULT_VERIFICATION_FIELDS,
    CheckCodeRequest,
    CustomerHooks,
    CustomerStatus,
    Decision,
    GetRequest,
    PutRequest,
    StatusResult,
    TenantContext,
)
from kyc_host.tenancy.schema import TESTNET

DEFAULT_SANCTIONS_LIST = ("Ivan Sanctioned", "Jane Blocked")
REJECTED_MESSAGE = "We cannot offer this service to you."
REVIEW_MESSAGES = {
    "en": "Thank you. Your information is being reviewed.",
    "es": "Gracias. Estamos revisando su información.",
}


def normalize_name(name: str) -> str:
    """Case-, accent- and spacing-insensitive form of a name, for list matching."""
    decomposed = unicodedata.normalize("NFKD", name)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(letters.casefold().split())


class Hooks(CustomerHooks):
    async def put(self, ctx: TenantContext, request: PutRequest) -> Decision | None:
        full_name = f"{request.data.get('first_name', '')} {request.data.get('last_name', '')}"
        if self._sanctioned(ctx, full_name):
            # Never log the name itself: the log says what happened, not to whom.
            ctx.log.warning("screening match: customer rejected",
                            extra={"customer_id": request.customer_id})
            return Decision(CustomerStatus.REJECTED, REJECTED_MESSAGE)
        if not request.missing and self._auto_accept(ctx, request.data.get("email_address")):
            return Decision(CustomerStatus.ACCEPTED)
        return None

    async def get(self, ctx: TenantContext, request: GetRequest,
                  result: StatusResult) -> StatusResult:
        if result.status is CustomerStatus.PROCESSING and not result.message:
            message = REVIEW_MESSAGES.get(request.lang, REVIEW_MESSAGES["en"])
            return dataclasses.replace(result, message=message)
        return result

    async def verification_fields(self, ctx: TenantContext, type_name: str) -> frozenset[str]:
        if ctx.settings.get("verify_email"):
            return DEFAULT_VERIFICATION_FIELDS | {"email_address"}
        return DEFAULT_VERIFICATION_FIELDS

    async def check_verification(self, ctx: TenantContext, request: CheckCodeRequest) -> bool:
        # People type codes as "123 456" or "123-456".
        submitted = request.submitted.replace(" ", "").replace("-", "")
        if self._is_sandbox_code(ctx, submitted):
            return True
        if request.expected is None:
            return False
        return hmac.compare_digest(submitted.encode(), request.expected.encode())

    @staticmethod
    def _is_sandbox_code(ctx: TenantContext, submitted: str) -> bool:
        """On testnet only, a fixed code from the settings verifies any field."""
        sandbox = ctx.settings.get("sandbox_code")
        return (isinstance(sandbox, str) and ctx.config.network_passphrase == TESTNET
                and hmac.compare_digest(submitted.encode(), sandbox.encode()))

    @staticmethod
    def _sanctioned(ctx: TenantContext, full_name: str) -> bool:
        listed = ctx.settings.get("sanctions_list", DEFAULT_SANCTIONS_LIST)
        wanted = normalize_name(full_name)
        return bool(wanted) and any(normalize_name(str(n)) == wanted for n in listed)

    @staticmethod
    def _auto_accept(ctx: TenantContext, email: str | None) -> bool:
        domains = ctx.settings.get("auto_accept_email_domains", ())
        if not email or "@" not in email:
            return False
        return email.rsplit("@", 1)[1].lower() in {str(d).lower() for d in domains}
