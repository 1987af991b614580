"""SEP-12 for one tenant: the platform's rules around the tenant's plugin.

Each operation runs in the same order (design.md §3): parse and validate everything,
resolve the customer and check ownership (unknown or foreign -> 404, identical either way),
call the plugin, and only then write. A request refused at any step has written nothing
(the one deliberate exception: a wrong verification code is counted, so codes cannot be
guessed without limit).

One :class:`Sep12Service` serves one tenant version; ``sep12_tenant.service_for`` builds it
on first use and keeps it on ``tenant.cache``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from kyc_host.errors import ApiError, BadRequest, LimitExceeded, NotFound
from kyc_host.hooks.context import customer_data, file_ref
from kyc_host.hooks.contract import (
    CallbackRequest,
    Caller,
    CheckCodeRequest,
    DeleteRequest,
    FileRef,
    GetRequest,
    PutRequest,
    SendCodeRequest,
)
from kyc_host.hooks.runner import HookRunner, any_result, returns
from kyc_host.retention.erasure import ErasureResult, Erasures
from kyc_host.sep import sep12_params as params
from kyc_host.sep.sep10_tokens import Identity
from kyc_host.sep.sep12_body import Body
from kyc_host.sep.sep12_files import check_upload, file_object
from kyc_host.sep.sep12_params import (
    CUSTOMER_NOT_FOUND,
    FILE_NOT_FOUND,
    Principal,
    check_callback_url,
)
from kyc_host.sep.sep12_put import (
    MAX_CODE_ATTEMPTS,
    PutInput,
    collected_fields,
    new_code,
    split_put,
    validate_values,
)
from kyc_host.sep.sep12_status import assess, canonical, check_result, missing_required, render
from kyc_host.sep.sep12_types import CustomerStatus, Decision
from kyc_host.store.customers import CustomerRecord, CustomerRepository, Verification, new_id
from kyc_host.store.files import FileInfo, FileRepository
from kyc_host.tenancy.schema import TenantConfig


def _caller(identity: Identity) -> Caller:
    return Caller(identity.account, identity.memo, identity.client_domain)


def record_identity(record: CustomerRecord) -> Identity:
    """The customer's first identity as a token would carry it (for hooks run on the
    customer's behalf outside a request, e.g. building a callback body)."""
    key = min(record.identities.values(), default="|")
    account, _, memo = key.partition("|")
    memo_type, _, value = memo.partition(":")
    memo_id = value if memo_type == "id" else None
    sub = account if memo_id is None else f"{account}:{memo_id}"
    return Identity(sub=sub, account=account, memo=memo_id, muxed=None,
                    client_domain=record.client_domain, jti="", expires_at=0)


def _decision_or_none(value: object) -> bool:
    if value is None:
        return True
    if not isinstance(value, Decision):
        return False
    try:
        value.check()
    except ValueError:
        return False
    return True


def _field_set(value: object) -> bool:
    return isinstance(value, frozenset | set) and all(isinstance(v, str) for v in value)


@dataclass(slots=True)
class _Changes:
    """What a PUT changes, computed before anything is written."""

    submitted: dict[str, str]  # canonical name -> validated value, as sent in this PUT
    values: dict[str, str]  # the submitted values that differ from the stored ones
    uploads: dict[str, tuple[bytes, str, str]]  # binary field -> (contents, media, digest)
    linked: dict[str, FileInfo]  # binary field -> an existing file now referenced
    codes: dict[str, str]  # field -> new verification code to issue
    verified: set[str]  # fields whose submitted code was right

    @property
    def data_changed(self) -> bool:
        return bool(self.values or self.uploads or self.linked)

    @property
    def any(self) -> bool:
        return self.data_changed or bool(self.codes or self.verified)


class Sep12Service:
    def __init__(self, config: TenantConfig, customers: CustomerRepository,
                 files: FileRepository, runner: HookRunner, *, dev_mode: bool,
                 erasures: Erasures) -> None:
        self.config = config
        self.customers = customers
        self.files = files
        #: Crypto-shredding and retention (retention/erasure.py): every erasure goes there.
        self.erasures = erasures
        self.runner = runner
        self.dev_mode = dev_mode
        self.collected = collected_fields(config)

    # --- GET /customer ---

    async def get_customer(self, identity: Identity, query: Mapping[str, str]) -> dict[str, object]:
        type_name = params.check_type(self.config, query.get("type"))
        transaction_id = params.check_transaction_id(query.get("transaction_id") or None,
                                                      bool(query.get("type")))
        lang = params.check_lang(query.get("lang"))
        _, record = await self._locate(identity, query)
        await self._check_transaction(transaction_id, record)
        return await self._status_body(identity, record, type_name, lang, transaction_id)

    async def _status_body(self, identity: Identity, record: CustomerRecord | None,
                           type_name: str, lang: str,
                           transaction_id: str | None) -> dict[str, object]:
        ctype = self.config.customer_types[type_name]
        result = assess(ctype, record)
        if self.runner.overrides("get"):
            customer = None if record is None else customer_data(record,
                                                                 await self._file_infos(record))
            request = GetRequest(_caller(identity), customer, type_name, lang, transaction_id,
                                 missing_required(ctype, record))
            computed = result
            result = await self.runner.call(
                "get", lambda r: check_result(r, computed, ctype, record), request, result)
        return render(ctype, record, result, lang)

    async def callback_body(self, record: CustomerRecord, type_name: str) -> dict[str, object]:
        """What GET /customer answers for ``record`` and ``type_name`` now: the body of its
        SEP-12 callback (§4.8), built by the same code as GET (the ``get`` hook included,
        called as the customer's own wallet). A failing hook must not block the status change
        that needs this body, so then the platform's own status is sent."""
        try:
            return await self._status_body(record_identity(record), record, type_name, "en",
                                           None)
        except ApiError:
            ctype = self.config.customer_types[type_name]
            return render(ctype, record, assess(ctype, record), "en")

    # --- PUT /customer ---

    async def put_customer(self, identity: Identity, body: Body) -> str:
        put = split_put(body)
        type_name = params.check_type(self.config, put.control.get("type"))
        transaction_id = params.check_transaction_id(put.control.get("transaction_id"),
                                                     "type" in put.control)
        principal, record = await self._locate(identity, put.control)
        await self._check_transaction(transaction_id, record)
        if record is None:
            await self._check_customer_quota(principal.account)
        changes = await self._changes(identity, put, record, type_name)
        if changes.uploads:
            replaced = sum(1 for n in changes.uploads if record is not None and n in record.files)
            await self._check_file_quota(identity, len(changes.uploads) - replaced)
        decision = None
        if record is None or changes.data_changed:
            decision = await self._put_hook(identity, put, record, changes, type_name,
                                            transaction_id)
        await self._send_codes(identity, record, changes)
        if record is not None and not changes.any and decision is None:
            return record.id  # an identical PUT: same id, nothing written (idempotent)
        record = await self._claim(principal, record)
        await self._write(identity, record, changes, decision, type_name)
        if transaction_id is not None:
            await self.customers.bind_transaction(transaction_id, record.id, record.cipher)
        return record.id

    async def _changes(self, identity: Identity, put: PutInput, record: CustomerRecord | None,
                       type_name: str) -> _Changes:
        stored_format = None if record is None else record.fields.get("mobile_number_format")
        values = validate_values(put, self.collected, stored_format,
                                 self.config.customer_types[type_name])
        uploads = {n: (d, check_upload(n, d, self.config.limits), await self.files.digest(d))
                   for n, d in put.uploads.items()}
        linked = {n: await self._linkable_file(identity, record, fid)
                  for n, fid in put.file_ids.items()}
        current = {} if record is None else await self._file_infos(record)
        changes = _Changes(
            submitted=values,
            values={n: v for n, v in values.items() if record is None or record.fields.get(n) != v},
            uploads={n: u for n, u in uploads.items()
                     if not _same_file(record, current, n, u[2])},
            linked={n: f for n, f in linked.items()
                    if record is None or record.files.get(n) != f.id},
            codes={}, verified=set())
        changes.verified = await self._check_codes(identity, record, put, changes)
        changes.codes = await self._new_codes(record, values, changes, type_name)
        return changes

    async def _linkable_file(self, identity: Identity, record: CustomerRecord | None,
                             file_id: str) -> FileInfo:
        """A file this PUT may reference: the caller's own unreferenced upload, or already
        this customer's. Anything else -> 404 ("file not found", the same for every case)."""
        params.check_file_id(file_id)
        info = await self.files.get(file_id)
        if info is None:
            raise NotFound(FILE_NOT_FOUND)
        if record is not None and info.customer_id == record.id:
            return info
        if info.expires_at is not None and self._uploaded_by(identity, info):
            return info
        raise NotFound(FILE_NOT_FOUND)

    async def _check_codes(self, identity: Identity, record: CustomerRecord | None,
                           put: PutInput, changes: _Changes) -> set[str]:
        """Check ``<field>_verification`` codes; a wrong one is counted, saved, then 400."""
        verified: set[str] = set()
        for name, code in put.codes.items():
            pending = None if record is None else record.verifications.get(name)
            if record is None or pending is None or pending.verified or name in changes.values:
                raise BadRequest(f"{name}_verification: no verification is pending for {name}")
            if pending.attempts >= MAX_CODE_ATTEMPTS:
                raise BadRequest(f"{name}_verification: too many wrong codes; send {name} "
                                 "again to get a new code")
            request = CheckCodeRequest(_caller(identity), record.id, name,
                                       record.fields.get(name, ""), code, pending.code)
            if not await self.runner.call("check_verification", returns(bool), request):
                pending.attempts += 1
                await self.customers.save(record)  # only the counter: nothing else changed
                raise BadRequest(f"{name}_verification: wrong verification code")
            verified.add(name)
        return verified

    async def _new_codes(self, record: CustomerRecord | None, values: Mapping[str, str],
                         changes: _Changes, type_name: str) -> dict[str, str]:
        """Codes to issue: for new values of fields the plugin wants verified, and again for
        a resent value whose code was used up by wrong guesses."""
        candidates = set(changes.values)
        if record is not None:
            candidates |= {n for n in values if (v := record.verifications.get(n)) is not None
                           and not v.verified and v.attempts >= MAX_CODE_ATTEMPTS}
        if not candidates:
            return {}
        wanted = await self.runner.call("verification_fields", _field_set, type_name)
        return {name: new_code() for name in sorted(candidates) if name in wanted}

    async def _send_codes(self, identity: Identity, record: CustomerRecord | None,
                          changes: _Changes) -> None:
        """Deliver new codes (plugin hook) before anything is stored: a failed delivery
        leaves no code behind that the customer could never receive."""
        for name, code in changes.codes.items():
            request = SendCodeRequest(_caller(identity), None if record is None else record.id,
                                      name, changes.submitted[name], code)
            await self.runner.call("send_verification", any_result, request)

    async def _put_hook(self, identity: Identity, put: PutInput, record: CustomerRecord | None,
                        changes: _Changes, type_name: str,
                        transaction_id: str | None) -> Decision | None:
        data = {**({} if record is None else record.fields), **changes.values}
        files: dict[str, FileRef] = {}
        if record is not None:
            infos = await self._file_infos(record)
            files = {n: file_ref(infos[f]) for n, f in record.files.items() if f in infos}
        files.update({n: file_ref(f) for n, f in changes.linked.items()})
        files.update({n: FileRef(None, media, len(d))
                      for n, (d, media, _) in changes.uploads.items()})
        ctype = self.config.customer_types[type_name]
        missing = tuple(n for n in ctype.required
                        if canonical(n) not in data and canonical(n) not in files)
        request = PutRequest(
            _caller(identity), None if record is None else record.id, type_name,
            transaction_id, MappingProxyType(dict(changes.values)), MappingProxyType(data),
            MappingProxyType(files), missing)
        decision: Decision | None = await self.runner.call("put", _decision_or_none, request)
        return decision

    async def _claim(self, principal: Principal, record: CustomerRecord | None) -> CustomerRecord:
        """The record to write: the loaded one, or a new customer for this identity.

        Two first PUTs for one identity race on the identity's unique ``_id``; the loser
        adopts the winner's customer, so both answer with one id (reliability-plan F4).
        """
        if record is not None:
            return record
        mine = new_id()
        customer_id = await self.customers.claim_identity(principal.key, principal.account, mine)
        existing = None if customer_id == mine else await self.customers.load(customer_id)
        record = existing or self.customers.new(customer_id)
        self.customers.add_identity(record, self.customers.identity_index(principal.key),
                                    principal.key)
        return record

    async def _write(self, identity: Identity, record: CustomerRecord, changes: _Changes,
                     decision: Decision | None, type_name: str) -> None:
        replaced = set(record.files.values())
        owner = params.token_principal(identity)
        if identity.client_domain:  # selects the tenant's default callback URL for this wallet
            record.client_domain = identity.client_domain
        # New and linked files keep expiring until the record naming them is written, and
        # the files it stops naming expire from before that write: a PUT cut anywhere leaves
        # no unnamed file that never expires, and the purge job attaches an expired file its
        # customer's record names (store/files.py purge_expired).
        to_attach: list[str] = []
        for name, info in changes.linked.items():
            record.files[name] = info.id
            if info.expires_at is not None:
                # Also renews its expiry: a purge from now on keeps it, and one since
                # _linkable_file read it may have deleted it (404, before the record's write).
                if not await self.files.claim(info.id, record.id):
                    raise NotFound(FILE_NOT_FOUND)
                to_attach.append(info.id)
        for name, (data, media, digest) in changes.uploads.items():
            info = await self.files.create(
                data, media, owner_ix=self.customers.identity_index(owner.key),
                account_ix=self.customers.account_index(owner.account), customer_id=record.id,
                owner_key=owner.key, digest=digest)
            record.files[name] = info.id
            to_attach.append(info.id)
        record.fields.update(changes.values)
        for name, code in changes.codes.items():
            record.verifications[name] = Verification(code)
        for name in changes.verified:
            record.verifications[name] = Verification(None, verified=True)
        if changes.data_changed:
            _reset_decisions(record, {*changes.values, *changes.uploads, *changes.linked})
        if decision is not None:
            record.type_state(type_name).decision = decision
        gone = sorted(replaced - set(record.files.values()))
        for file_id in gone:
            await self.files.detach(file_id)
        await self._save_status(record, type_name)
        for file_id in to_attach:
            await self.files.attach(file_id, record.id)
        await self.files.delete(gone)

    async def _save_status(self, record: CustomerRecord, type_name: str) -> CustomerStatus:
        """Recompute ``type_name``'s status and write the record: the one path by which a
        customer's data or review decision changes (status-change callbacks belong here).
        Returns the new status."""
        ctype = self.config.customer_types[type_name]
        status = assess(ctype, record).status
        record.type_state(type_name).status = str(status)
        await self.customers.save(record)
        return status

    # --- review decisions (management API, ``kyc-host customer decide``) ---

    async def decide(self, record: CustomerRecord, type_name: str,
                     decision: Decision) -> CustomerStatus:
        """Store a reviewer's decision for one customer type, replacing the previous one,
        and return the status the wallet now sees. The caller validated it against the
        record (management/review.py); raises ValueError for a malformed decision."""
        decision.check()
        record.type_state(type_name).decision = decision
        return await self._save_status(record, type_name)

    # --- PUT /customer/verification (deprecated since SEP-12 v1.12.0) ---

    async def put_verification(self, identity: Identity, body: Body) -> dict[str, object]:
        put = split_put(body)
        if put.has_data:
            raise BadRequest("only <field>_verification values are accepted here; "
                             "send data with PUT /customer")
        if not put.codes:
            raise BadRequest("no <field>_verification value given")
        type_name = params.check_type(self.config, put.control.get("type"))
        _, record = await self._locate(identity, put.control)
        if record is None:
            raise NotFound(CUSTOMER_NOT_FOUND)
        changes = _Changes({}, {}, {}, {}, {}, set())
        changes.verified = await self._check_codes(identity, record, put, changes)
        await self._write(identity, record, changes, None, type_name)
        return await self._status_body(identity, record, type_name,
                                       params.check_lang(put.control.get("lang")), None)

    # --- DELETE /customer/{account} ---

    async def delete_customer(self, identity: Identity, account: str, body: Body,
                              request_id: str | None = None) -> None:
        put = split_put(body)
        if put.has_data or put.codes or set(put.control) - {"memo", "memo_type"}:
            raise BadRequest("DELETE takes only memo and memo_type in the body")
        principal = params.resolve_principal(identity, account, put.control.get("memo"),
                                             put.control.get("memo_type"))
        customer_id = await self.customers.customer_id_for(principal.key)
        record = None if customer_id is None else await self.customers.load(customer_id)
        if record is None:
            raise NotFound(CUSTOMER_NOT_FOUND)
        await self.erase_customer(record, _caller(identity), actor="wallet",
                                  request_id=request_id)

    async def erase_customer(self, record: CustomerRecord, caller: Caller, *,
                             actor: str = "wallet",
                             request_id: str | None = None) -> ErasureResult:
        """Erase a customer: the one erasure path of the wallet's DELETE and the management
        API's. The plugin's ``delete`` hook runs first and may refuse (400). Then the
        tenant's retention policy either shreds the customer's data keys, records and files
        at once or holds them (out of the wallet's reach) for the legal period; either way
        a proof-of-deletion entry goes to the audit log with ``actor`` (retention/erasure.py).
        """
        infos = await self._file_infos(record)
        await self.runner.call("delete", any_result,
                               DeleteRequest(caller, customer_data(record, infos)))
        return await self.erasures.erase(self.customers, record, actor=actor,
                                         request_id=request_id)

    # --- PUT /customer/callback ---

    async def put_callback(self, identity: Identity, body: Body) -> None:
        url = body.values.get("url")
        put = split_put(Body({k: v for k, v in body.values.items() if k != "url"}, body.files))
        if put.has_data or put.codes:
            raise BadRequest("the callback endpoint takes url and the customer's id, account "
                             "or memo only")
        checked = check_callback_url(url, dev_mode=self.dev_mode)
        _, record = await self._locate(identity, put.control)
        if record is None:
            raise NotFound(CUSTOMER_NOT_FOUND)
        await self.runner.call("callback", any_result,
                               CallbackRequest(_caller(identity), record.id, checked))
        record.callback_url = checked
        record.callback_set_at = time.time()
        await self.customers.save(record)

    # --- /customer/files ---

    async def upload_file(self, identity: Identity, body: Body) -> dict[str, object]:
        data = body.files.get("file")
        if data is None or set(body.names()) != {"file"}:
            raise BadRequest("send exactly one multipart part named file")
        media = check_upload("file", data, self.config.limits)
        await self._check_file_quota(identity, 1)
        owner = params.token_principal(identity)
        customer_id = await self.customers.customer_id_for(owner.key)
        info = await self.files.create(
            data, media, owner_ix=self.customers.identity_index(owner.key),
            account_ix=self.customers.account_index(owner.account), customer_id=customer_id,
            owner_key=owner.key)
        return file_object(info)

    async def list_files(self, identity: Identity,
                         query: Mapping[str, str]) -> dict[str, object]:
        file_id, customer_id = query.get("file_id"), query.get("customer_id")
        if bool(file_id) == bool(customer_id):
            raise BadRequest("give exactly one of file_id or customer_id")
        found: list[FileInfo] = []
        try:
            if file_id:
                info = await self.files.get(params.check_file_id(file_id))
                if await self._file_visible(identity, info) and info is not None:
                    found = [info]
            elif customer_id and await self._token_reaches(
                    identity, params.check_customer_id(customer_id)):
                found = await self.files.for_customer(customer_id)
        except NotFound:
            found = []  # a malformed id matches nothing; this endpoint always answers 200
        return {"files": [file_object(f) for f in await self.files.as_referenced(found)]}

    # --- quotas (429 naming the limit; soft under concurrency: checked, then written) ---

    async def _check_customer_quota(self, account: str) -> None:
        """A new customer for ``account`` must fit ``limits.max_customers_per_account``
        (memos are free to invent; customers are not free to store)."""
        most = self.config.limits.max_customers_per_account
        if await self.customers.identities_of_account(account) >= most:
            raise LimitExceeded("max_customers_per_account",
                                f"limits.max_customers_per_account reached: this account "
                                f"already has {most} customers")

    async def _check_file_quota(self, identity: Identity, adding: int) -> None:
        """``adding`` more files must fit ``limits.max_files_per_identity``."""
        if adding <= 0:
            return
        most = self.config.limits.max_files_per_identity
        owner = params.token_principal(identity)
        owned = await self.files.count_owned(self.customers.identity_indexes(owner.key))
        if owned + adding > most:
            raise LimitExceeded("max_files_per_identity",
                                f"limits.max_files_per_identity reached: at most {most} "
                                "files per account and memo; reuse or replace uploaded files")

    # --- ownership ---

    async def _locate(self, identity: Identity,
                      control: Mapping[str, str]) -> tuple[Principal, CustomerRecord | None]:
        """The principal of a request and its customer, if any (ownership checked here).

        With ``id``: the customer must be known by the addressed identity (or, for a bare
        ``G`` token that names no memo, by any identity of ``G``); otherwise 404 with the
        same body as for an id that never existed.
        """
        principal = params.resolve_principal(
            identity, control.get("account"), control.get("memo"), control.get("memo_type"))
        customer_id = control.get("id")
        if customer_id:
            params.check_customer_id(customer_id)
            if principal.memo is not None:
                reachable = await self.customers.reachable(customer_id,
                                                           identity_key=principal.key)
            else:
                reachable = await self.customers.reachable(customer_id,
                                                           account=principal.account)
            record = await self.customers.load(customer_id) if reachable else None
            if record is None:
                raise NotFound(CUSTOMER_NOT_FOUND)
            return principal, record
        found = await self.customers.customer_id_for(principal.key)
        return principal, None if found is None else await self.customers.load(found)

    async def _token_reaches(self, identity: Identity, customer_id: str) -> bool:
        if identity.memo is not None:
            key = params.token_principal(identity).key
            return await self.customers.reachable(customer_id, identity_key=key)
        return await self.customers.reachable(customer_id, account=identity.account)

    def _uploaded_by(self, identity: Identity, info: FileInfo) -> bool:
        if info.owner_ix in self.customers.identity_indexes(
                params.token_principal(identity).key):
            return True
        return identity.memo is None and info.account_ix in self.customers.account_indexes(
            identity.account)

    async def _file_visible(self, identity: Identity, info: FileInfo | None) -> bool:
        """Whether the caller may see file ``info`` (None: no such file). Every file that is
        not the caller's own upload costs one customer lookup, whether it exists or not, so
        the answer's timing does not tell a stranger that a file id exists (reliability-plan
        A8: the lookup made "exists, not yours" ~2 ms slower than "never existed" on MongoDB,
        tests/benchmarks/bola_timing.py)."""
        if info is not None and self._uploaded_by(identity, info):
            return True
        owner = None if info is None else info.customer_id
        reaches = await self._token_reaches(identity, owner or new_id())
        return owner is not None and reaches

    async def _check_transaction(self, transaction_id: str | None,
                                 record: CustomerRecord | None) -> None:
        """A transaction id already bound to another customer is not this caller's: 404."""
        if transaction_id is None:
            return
        owner = await self.customers.transaction_owner(transaction_id)
        if owner is not None and (record is None or owner != record.id):
            raise NotFound(CUSTOMER_NOT_FOUND)

    async def _file_infos(self, record: CustomerRecord) -> dict[str, FileInfo]:
        if not record.files:
            return {}
        return {f.id: f for f in await self.files.for_customer(record.id)}


def _same_file(record: CustomerRecord | None, current: Mapping[str, FileInfo], name: str,
               digest: str) -> bool:
    if record is None or name not in record.files:
        return False
    info = current.get(record.files[name])
    return info is not None and info.digest == digest


def _reset_decisions(record: CustomerRecord, changed: set[str]) -> None:
    """New data reopens review: verdicts on changed fields and non-final statuses go.

    A REJECTED customer stays REJECTED (SEP-12: final) until a reviewer decides again.
    """
    for state in record.types.values():
        old = state.decision
        if old is None:
            continue
        fields = {n: v for n, v in old.fields.items() if canonical(n) not in changed}
        final = old.status is CustomerStatus.REJECTED
        if not final and not fields:
            state.decision = None
        else:
            state.decision = Decision(old.status if final else None,
                                      old.message if final else None,
                                      MappingProxyType(fields))
