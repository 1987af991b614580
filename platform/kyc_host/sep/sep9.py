"""SEP-9 standard KYC fields as data, and the validators for their values.

The registry covers SEP-9 v1.18.0: natural person, financial account (plain and with the
``organization.`` prefix, which SEP-9 says to use for an organization's accounts),
organization and card fields, plus the SEP-12 ``<binary field>_file_id`` companions.
Names with dots are flat keys: ``organization.name`` is one key, never a nested object.

This module is the platform's single source of truth for what a standard field *is*
(its SEP-12 ``type``, English description, allowed values and value format). Which
fields a tenant asks for, and translated descriptions, live in tenant config.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date
from enum import StrEnum
from types import MappingProxyType
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "FIELDS",
    "MULTILINE_MAX_LENGTH",
    "FieldFormat",
    "FieldSpec",
    "FieldType",
    "FieldValueError",
    "binary_fields",
    "description",
    "get",
    "validate",
]

DEFAULT_MAX_LENGTH = 1_000
MULTILINE_MAX_LENGTH = 2_000


class FieldType(StrEnum):
    """The ``type`` of a field in SEP-12 ``fields`` / ``provided_fields`` objects."""

    STRING = "string"
    BINARY = "binary"
    NUMBER = "number"
    DATE = "date"


class FieldFormat(StrEnum):
    """Which validator checks a value. Finer than `FieldType`: a country code is a string."""

    TEXT = "text"  # one line of free text
    MULTILINE_TEXT = "multiline_text"  # SEP-9 addresses are "a multi-line string"
    FILE_ID = "file_id"  # an id from /customer/files: one token, no whitespace
    COUNTRY_ALPHA3 = "country_alpha3"
    COUNTRY_ALPHA2 = "country_alpha2"
    LANGUAGE = "language"
    DATE = "date"
    YEAR_MONTH = "year_month"
    PHONE_E164 = "phone_e164"
    MOBILE_NUMBER = "mobile_number"  # E.164 unless `mobile_number_format` says otherwise
    EMAIL = "email"
    NUMBER = "number"
    INTEGER = "integer"
    ISCO08 = "isco08"
    URL = "url"
    IP_ADDRESS = "ip_address"
    CARD_NUMBER = "card_number"
    CARD_CVC = "card_cvc"
    FILE = "file"  # binary fields: the upload path checks them, `validate` refuses text


class FieldValueError(ValueError):
    """A field value was rejected.

    ``str()`` is safe to show to the client: it names the field and the rule broken and
    never contains any part of the value (which is PII, and may be megabytes long).
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One SEP-9 field.

    ``choices`` is a closed set of values, enforced case-sensitively. ``alias_of`` names
    the field this one is a synonym of (SEP-9: ``family_name`` is ``last_name``).
    ``file_id_of`` is set on a ``<binary>_file_id`` companion and names its binary field.
    """

    name: str
    type: FieldType
    description: str
    choices: tuple[str, ...] | None = None
    deprecated: bool = False
    alias_of: str | None = None
    format: FieldFormat = FieldFormat.TEXT
    max_length: int = DEFAULT_MAX_LENGTH
    file_id_of: str | None = None


# --- the registry -------------------------------------------------------------------------

_STRING, _BINARY, _NUMBER, _DATE = (
    FieldType.STRING,
    FieldType.BINARY,
    FieldType.NUMBER,
    FieldType.DATE,
)
_F = FieldFormat


def _spec(
    name: str,
    type_: FieldType,
    format_: FieldFormat,
    description_: str,
    *,
    choices: tuple[str, ...] | None = None,
    deprecated: bool = False,
    alias_of: str | None = None,
) -> FieldSpec:
    multiline = format_ is FieldFormat.MULTILINE_TEXT
    return FieldSpec(
        name=name,
        type=type_,
        description=description_,
        choices=choices,
        deprecated=deprecated,
        alias_of=alias_of,
        format=format_,
        max_length=MULTILINE_MAX_LENGTH if multiline else DEFAULT_MAX_LENGTH,
    )


_NATURAL_PERSON: tuple[FieldSpec, ...] = (
    # first_name/last_name are the primary spellings: wallets, the SDF validator and the
    # reference anchors use them; SEP-9 accepts family_name/given_name as synonyms.
    _spec("last_name", _STRING, _F.TEXT, "Family or last name."),
    _spec("family_name", _STRING, _F.TEXT, "Family or last name.", alias_of="last_name"),
    _spec("first_name", _STRING, _F.TEXT, "Given or first name."),
    _spec("given_name", _STRING, _F.TEXT, "Given or first name.", alias_of="first_name"),
    _spec("additional_name", _STRING, _F.TEXT, "Middle name or other additional name."),
    _spec(
        "address_country_code",
        _STRING,
        _F.COUNTRY_ALPHA3,
        "Country of the current address as an ISO 3166-1 alpha-3 code, e.g. USA.",
    ),
    _spec(
        "state_or_province",
        _STRING,
        _F.TEXT,
        "State, province, region or prefecture of the current address.",
    ),
    _spec("city", _STRING, _F.TEXT, "City or town of the current address."),
    _spec("postal_code", _STRING, _F.TEXT, "Postal or other code of the customer's locale."),
    _spec(
        "address",
        _STRING,
        _F.MULTILINE_TEXT,
        "Full address (street, city, postal code, state, country) as a multi-line string.",
    ),
    _spec(
        "mobile_number",
        _STRING,
        _F.MOBILE_NUMBER,
        "Mobile phone number with country code in E.164 format, e.g. +14155552671, "
        "unless mobile_number_format says otherwise.",
    ),
    _spec(
        "mobile_number_format",
        _STRING,
        _F.TEXT,
        "Format of mobile_number: E.164 (the default) or hash.",
        choices=("E.164", "hash"),
    ),
    _spec("email_address", _STRING, _F.EMAIL, "Email address."),
    _spec("birth_date", _DATE, _F.DATE, "Date of birth as YYYY-MM-DD, e.g. 1976-07-04."),
    _spec(
        "birth_place", _STRING, _F.TEXT, "Place of birth (city, state, country) as on the passport."
    ),
    _spec(
        "birth_country_code",
        _STRING,
        _F.COUNTRY_ALPHA3,
        "Country of birth as an ISO 3166-1 alpha-3 code.",
    ),
    _spec(
        "tax_id",
        _STRING,
        _F.TEXT,
        "Tax identifier in the customer's country (the social security number in the US).",
    ),
    _spec(
        "tax_id_name", _STRING, _F.TEXT, "Name of the tax identifier, e.g. SSN or ITIN in the US."
    ),
    _spec("occupation", _NUMBER, _F.ISCO08, "Occupation as an ISCO-08 code."),
    _spec("employer_name", _STRING, _F.TEXT, "Name of the employer."),
    _spec("employer_address", _STRING, _F.MULTILINE_TEXT, "Address of the employer."),
    _spec("language_code", _STRING, _F.LANGUAGE, "Primary language as an ISO 639-1 code, e.g. en."),
    _spec(
        "id_type",
        _STRING,
        _F.TEXT,
        "Type of photo ID, e.g. passport, drivers_license or id_card.",
    ),
    _spec(
        "id_country_code",
        _STRING,
        _F.COUNTRY_ALPHA3,
        "Country that issued the passport or photo ID, as an ISO 3166-1 alpha-3 code.",
    ),
    _spec("id_issue_date", _DATE, _F.DATE, "Issue date of the photo ID as YYYY-MM-DD."),
    _spec("id_expiration_date", _DATE, _F.DATE, "Expiration date of the photo ID as YYYY-MM-DD."),
    _spec("id_number", _STRING, _F.TEXT, "Passport or ID number."),
    _spec("photo_id_front", _BINARY, _F.FILE, "Image of the front of the photo ID or passport."),
    _spec("photo_id_back", _BINARY, _F.FILE, "Image of the back of the photo ID or passport."),
    _spec(
        "notary_approval_of_photo_id",
        _BINARY,
        _F.FILE,
        "Image of a notary's approval of the photo ID or passport.",
    ),
    _spec("ip_address", _STRING, _F.IP_ADDRESS, "IP address of the customer's computer."),
    _spec(
        "photo_proof_residence",
        _BINARY,
        _F.FILE,
        "Image of a utility bill, bank statement or similar showing the customer's name "
        "and address.",
    ),
    _spec(
        "sex", _STRING, _F.TEXT, "Sex: male, female or other.", choices=("male", "female", "other")
    ),
    _spec("proof_of_income", _BINARY, _F.FILE, "Image of a proof of income document."),
    _spec(
        "proof_of_liveness",
        _BINARY,
        _F.FILE,
        "Video or image of the customer as a proof of liveness.",
    ),
    _spec(
        "referral_id",
        _STRING,
        _F.TEXT,
        "Where the customer came from, such as an id in another application, or a referral code.",
    ),
)

# Written once with an ``{owner}`` slot; SEP-9 says the same fields describe an
# organization's accounts when prefixed with ``organization.``.
_FINANCIAL_ACCOUNT: tuple[FieldSpec, ...] = (
    _spec("bank_name", _STRING, _F.TEXT, "Name of {owner} bank."),
    _spec(
        "bank_account_type",
        _STRING,
        _F.TEXT,
        "Type of {owner} bank account: checking or savings.",
        choices=("checking", "savings"),
    ),
    _spec("bank_account_number", _STRING, _F.TEXT, "Number identifying {owner} bank account."),
    _spec(
        "bank_number",
        _STRING,
        _F.TEXT,
        "Number identifying {owner} bank in the national banking system (the routing number "
        "in the US).",
    ),
    _spec(
        "bank_phone_number",
        _STRING,
        _F.PHONE_E164,
        "Phone number of {owner} bank with country code, in E.164 format.",
    ),
    _spec("bank_branch_number", _STRING, _F.TEXT, "Number identifying {owner} bank branch."),
    _spec(
        "external_transfer_memo",
        _STRING,
        _F.TEXT,
        "Destination tag or memo identifying transfers to {owner} account.",
    ),
    _spec("clabe_number", _STRING, _F.TEXT, "CLABE number of {owner} bank account in Mexico."),
    _spec(
        "cbu_number",
        _STRING,
        _F.TEXT,
        "Clave Bancaria Uniforme (CBU) or Clave Virtual Uniforme (CVU) of {owner} account.",
    ),
    _spec("cbu_alias", _STRING, _F.TEXT, "Alias of {owner} CBU or CVU."),
    _spec(
        "mobile_money_number",
        _STRING,
        _F.PHONE_E164,
        "Phone number of {owner} mobile money account, in E.164 format.",
    ),
    _spec("mobile_money_provider", _STRING, _F.TEXT, "Name of {owner} mobile money provider."),
    _spec("crypto_address", _STRING, _F.TEXT, "Address of {owner} cryptocurrency account."),
    _spec(
        "crypto_memo",
        _STRING,
        _F.TEXT,
        "Deprecated, use external_transfer_memo: destination tag or memo for {owner} "
        "cryptocurrency account.",
        deprecated=True,
    ),
)

_ORGANIZATION: tuple[FieldSpec, ...] = (
    _spec(
        "organization.name",
        _STRING,
        _F.TEXT,
        "Full name of the organization as on its incorporation papers.",
    ),
    _spec("organization.VAT_number", _STRING, _F.TEXT, "VAT number of the organization."),
    _spec(
        "organization.registration_number",
        _STRING,
        _F.TEXT,
        "Registration number of the organization.",
    ),
    # SEP-9 types this "string" although it is a date; its Encodings section says dates
    # are ISO 8601 date-only, so the value is checked as one.
    _spec(
        "organization.registration_date",
        _STRING,
        _F.DATE,
        "Date the organization was registered, as YYYY-MM-DD.",
    ),
    _spec(
        "organization.registered_address",
        _STRING,
        _F.MULTILINE_TEXT,
        "Registered address of the organization.",
    ),
    _spec(
        "organization.number_of_shareholders",
        _NUMBER,
        _F.INTEGER,
        "Number of shareholders of the organization.",
    ),
    _spec(
        "organization.shareholder_name",
        _STRING,
        _F.TEXT,
        "Name of a shareholder, which can be an organization or a person.",
    ),
    _spec(
        "organization.photo_incorporation_doc",
        _BINARY,
        _F.FILE,
        "Image of the organization's incorporation documents.",
    ),
    _spec(
        "organization.photo_proof_address",
        _BINARY,
        _F.FILE,
        "Image of a utility bill or bank statement showing the organization's name and address.",
    ),
    _spec(
        "organization.address_country_code",
        _STRING,
        _F.COUNTRY_ALPHA3,
        "Country of the organization's address as an ISO 3166-1 alpha-3 code.",
    ),
    _spec(
        "organization.state_or_province",
        _STRING,
        _F.TEXT,
        "State, province, region or prefecture of the organization's address.",
    ),
    _spec("organization.city", _STRING, _F.TEXT, "City or town of the organization's address."),
    _spec(
        "organization.postal_code",
        _STRING,
        _F.TEXT,
        "Postal or other code of the organization's locale.",
    ),
    _spec(
        "organization.director_name",
        _STRING,
        _F.TEXT,
        "Name of the organization's registered managing director.",
    ),
    _spec(
        "organization.website", _STRING, _F.URL, "Website of the organization as an http(s) URL."
    ),
    _spec("organization.email", _STRING, _F.EMAIL, "Contact email address of the organization."),
    _spec(
        "organization.phone",
        _STRING,
        _F.PHONE_E164,
        "Contact phone number of the organization in E.164 format.",
    ),
)

# SEP-9 v1.15.0: either card.token or the raw set (number, expiration date, cvc, holder).
_CARD: tuple[FieldSpec, ...] = (
    _spec("card.number", _STRING, _F.CARD_NUMBER, "Card number."),
    _spec(
        "card.expiration_date",
        _DATE,
        _F.YEAR_MONTH,
        "Expiration month and year as YY-MM, e.g. 29-11 for November 2029.",
    ),
    _spec("card.cvc", _STRING, _F.CARD_CVC, "CVC: the 3 or 4 digits on the card."),
    _spec("card.holder_name", _STRING, _F.TEXT, "Name of the card holder."),
    _spec(
        "card.network", _STRING, _F.TEXT, "Card brand or network, e.g. Visa, Mastercard or AmEx."
    ),
    _spec("card.postal_code", _STRING, _F.TEXT, "Postal code of the billing address."),
    _spec(
        "card.country_code",
        _STRING,
        _F.COUNTRY_ALPHA2,
        "Country of the billing address as an ISO 3166-1 alpha-2 code, e.g. US.",
    ),
    _spec(
        "card.state_or_province",
        _STRING,
        _F.TEXT,
        "State, province, region or prefecture of the billing address in ISO 3166-2 format.",
    ),
    _spec("card.city", _STRING, _F.TEXT, "City or town of the billing address."),
    _spec(
        "card.address",
        _STRING,
        _F.MULTILINE_TEXT,
        "Full billing address as a multi-line string.",
    ),
    _spec(
        "card.token",
        _STRING,
        _F.TEXT,
        "Token representing the card in an external payment system, e.g. Stripe.",
    ),
)


def _for_owner(spec: FieldSpec, prefix: str, owner: str) -> FieldSpec:
    return replace(
        spec,
        name=prefix + spec.name,
        description=spec.description.format(owner=owner),
    )


def _file_id_companion(spec: FieldSpec) -> FieldSpec:
    # SEP-12 (files, v1.5.0): a file uploaded to /customer/files is referenced by id
    # instead of sending the binary inline.
    return FieldSpec(
        name=f"{spec.name}_file_id",
        type=FieldType.STRING,
        description=f"Id of a file uploaded to /customer/files, sent instead of {spec.name}.",
        format=FieldFormat.FILE_ID,
        file_id_of=spec.name,
    )


def _build_registry() -> Mapping[str, FieldSpec]:
    base = (
        *_NATURAL_PERSON,
        *(_for_owner(s, "", "the customer's") for s in _FINANCIAL_ACCOUNT),
        *_ORGANIZATION,
        *(_for_owner(s, "organization.", "the organization's") for s in _FINANCIAL_ACCOUNT),
        *_CARD,
    )
    companions = tuple(_file_id_companion(s) for s in base if s.type is FieldType.BINARY)
    registry: dict[str, FieldSpec] = {}
    for spec in (*base, *companions):
        if spec.name in registry:
            raise RuntimeError(f"SEP-9 field {spec.name} is defined twice")
        registry[spec.name] = spec
    for spec in registry.values():
        if spec.alias_of is not None and spec.alias_of not in registry:
            raise RuntimeError(f"SEP-9 field {spec.name} is an alias of an unknown field")
    return MappingProxyType(registry)


FIELDS: Mapping[str, FieldSpec] = _build_registry()
"""Every standard field by name, in SEP-9 order, file-id companions last. Read-only."""

_BINARY_FIELDS = frozenset(n for n, s in FIELDS.items() if s.type is FieldType.BINARY)


def get(name: str) -> FieldSpec | None:
    """The spec of a standard field, or None. Aliases resolve to their own spec."""
    return FIELDS.get(name)


def binary_fields() -> frozenset[str]:
    """Names of the fields sent as files (multipart parts), without their file-id companions."""
    return _BINARY_FIELDS


def description(name: str, lang: str) -> str:
    """The wallet-facing description of a standard field.

    Only English is held here, so it is returned for every ``lang``; tenants override
    descriptions per language in their own config. Raises KeyError for an unknown name.
    """
    del lang  # accepted so callers need not change once translations exist
    return FIELDS[name].description


# --- ISO code lists (officially assigned codes; Debian iso-codes 4.15.0) -------------------


def _code_set(codes: str) -> frozenset[str]:
    return frozenset(codes.split())


_ISO3166_ALPHA3 = _code_set(
    "ABW AFG AGO AIA ALA ALB AND ARE ARG ARM ASM ATA ATF ATG AUS AUT AZE BDI BEL BEN BES "
    "BFA BGD BGR BHR BHS BIH BLM BLR BLZ BMU BOL BRA BRB BRN BTN BVT BWA CAF CAN CCK CHE "
    "CHL CHN CIV CMR COD COG COK COL COM CPV CRI CUB CUW CXR CYM CYP CZE DEU DJI DMA DNK "
    "DOM DZA ECU EGY ERI ESH ESP EST ETH FIN FJI FLK FRA FRO FSM GAB GBR GEO GGY GHA GIB "
    "GIN GLP GMB GNB GNQ GRC GRD GRL GTM GUF GUM GUY HKG HMD HND HRV HTI HUN IDN IMN IND "
    "IOT IRL IRN IRQ ISL ISR ITA JAM JEY JOR JPN KAZ KEN KGZ KHM KIR KNA KOR KWT LAO LBN "
    "LBR LBY LCA LIE LKA LSO LTU LUX LVA MAC MAF MAR MCO MDA MDG MDV MEX MHL MKD MLI MLT "
    "MMR MNE MNG MNP MOZ MRT MSR MTQ MUS MWI MYS MYT NAM NCL NER NFK NGA NIC NIU NLD NOR "
    "NPL NRU NZL OMN PAK PAN PCN PER PHL PLW PNG POL PRI PRK PRT PRY PSE PYF QAT REU ROU "
    "RUS RWA SAU SDN SEN SGP SGS SHN SJM SLB SLE SLV SMR SOM SPM SRB SSD STP SUR SVK SVN "
    "SWE SWZ SXM SYC SYR TCA TCD TGO THA TJK TKL TKM TLS TON TTO TUN TUR TUV TWN TZA UGA "
    "UKR UMI URY USA UZB VAT VCT VEN VGB VIR VNM VUT WLF WSM YEM ZAF ZMB ZWE"
)

_ISO3166_ALPHA2 = _code_set(
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN "
    "BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ "
    "DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL "
    "GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM "
    "JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME "
    "MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP "
    "NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD "
    "SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO "
    "TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW"
)

_ISO639_1 = _code_set(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs "
    "cu cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha "
    "he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn "
    "ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb "
    "nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd "
    "se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw "
    "ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu"
)


# --- validation -------------------------------------------------------------------------------


class _Invalid(Exception):
    """Raised by a format check with a fixed, value-free reason; `validate` adds the field."""


# Control characters (C0, DEL, C1), Unicode line/paragraph separators, the bidi
# embedding/override/isolate controls (they let a value display as different text in the
# review UI, "Trojan Source") and lone surrogates (a JSON "\ud800" decodes to one, and it
# cannot be encoded as UTF-8, so storing it would fail later). RTL text itself is fine.
_FORBIDDEN_ONE_LINE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
# Multi-line values may keep newlines and tabs.
_FORBIDDEN_MULTILINE = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)

# ASCII-only patterns throughout: `\d` and str.isdigit() also accept other scripts' digits.
_YMD = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_YEAR_MONTH = re.compile(r"[0-9]{2}-(0[1-9]|1[0-2])")
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
_PHONE_SEPARATORS = re.compile(r"[ ().-]")  # tolerated in input, removed from the value
_DECIMAL = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[0-9]{1,18}")  # stays below 2**63 so any store can hold it
_ISCO08 = re.compile(r"[0-9]{1,4}")
_CARD_NUMBER = re.compile(r"[0-9]{12,19}")
_CARD_SEPARATORS = re.compile(r"[ -]")
_CVC = re.compile(r"[0-9]{3,4}")
_EMAIL_MAX_LENGTH = 254  # RFC 5321 path limit


def validate(spec: FieldSpec, value: str, *, mobile_number_format: str | None = None) -> str:
    """Check one non-binary field value and return it normalized.

    ``value`` is the raw text from a JSON, form or multipart body (JSON numbers converted
    to ``str`` by the caller). Surrounding whitespace is stripped and codes are
    case-normalized. ``mobile_number_format`` is the submission's (or stored) value of that
    field and only matters for ``mobile_number``: None or ``E.164`` means E.164, ``hash``
    means the number arrives hashed and is only checked to be one token.

    Raises FieldValueError (client-safe message naming the field, never the value) when the
    value is empty, too long, holds control characters, breaks the field's format or is
    not one of its ``choices``; and for binary fields, which must arrive as files.
    """
    raw: object = value  # JSON bodies can carry lists or objects; refuse them, don't crash
    if not isinstance(raw, str):
        raise FieldValueError(spec.name, "expected a text value")
    if spec.type is FieldType.BINARY:
        raise FieldValueError(spec.name, "expected a file upload, not text")
    text = _clean(spec, raw)
    try:
        if spec.choices is not None:
            return _check_choice(text, spec.choices)
        if spec.format is FieldFormat.MOBILE_NUMBER:
            return _check_mobile_number(text, mobile_number_format)
        return _CHECKS[spec.format](text)
    except _Invalid as exc:
        raise FieldValueError(spec.name, str(exc)) from None


def _clean(spec: FieldSpec, value: str) -> str:
    text = value.strip()
    multiline = spec.format is FieldFormat.MULTILINE_TEXT
    if multiline:
        text = text.replace("\r\n", "\n")  # browsers send textarea newlines as CRLF
    if not text:
        raise FieldValueError(spec.name, "must not be empty")
    if len(text) > spec.max_length:
        raise FieldValueError(spec.name, f"must be at most {spec.max_length} characters")
    forbidden = _FORBIDDEN_MULTILINE if multiline else _FORBIDDEN_ONE_LINE
    if forbidden.search(text):
        raise FieldValueError(spec.name, "must not contain control characters")
    return text


def _check_choice(text: str, choices: tuple[str, ...]) -> str:
    if text not in choices:
        raise _Invalid("expected one of: " + ", ".join(choices))
    return text


def _check_text(text: str) -> str:
    return text


def _check_token(text: str) -> str:
    if any(ch.isspace() for ch in text):
        raise _Invalid("must not contain whitespace")
    return text


def _check_country_alpha3(text: str) -> str:
    code = text.upper()
    if not text.isascii() or code not in _ISO3166_ALPHA3:
        raise _Invalid("expected an ISO 3166-1 alpha-3 country code, e.g. USA")
    return code


def _check_country_alpha2(text: str) -> str:
    code = text.upper()
    if not text.isascii() or code not in _ISO3166_ALPHA2:
        raise _Invalid("expected an ISO 3166-1 alpha-2 country code, e.g. US")
    return code


def _check_language(text: str) -> str:
    code = text.lower()
    if not text.isascii() or code not in _ISO639_1:
        raise _Invalid("expected an ISO 639-1 language code, e.g. en")
    return code


def _check_date(text: str) -> str:
    match = _YMD.fullmatch(text)
    if match is None:
        raise _Invalid("expected a date as YYYY-MM-DD")
    year, month, day = (int(part) for part in match.groups())
    try:
        date(year, month, day)
    except ValueError:
        raise _Invalid("expected a real calendar date as YYYY-MM-DD") from None
    return text


def _check_year_month(text: str) -> str:
    if _YEAR_MONTH.fullmatch(text) is None:
        raise _Invalid("expected a month as YY-MM with MM from 01 to 12, e.g. 29-11")
    return text


def _check_phone(text: str) -> str:
    number = _PHONE_SEPARATORS.sub("", text)
    if _E164.fullmatch(number) is None:
        raise _Invalid("expected an E.164 phone number: '+' then 8 to 15 digits")
    return number


def _check_mobile_number(text: str, number_format: str | None) -> str:
    if number_format is None or number_format == "E.164":
        return _check_phone(text)
    if number_format == "hash":
        return _check_token(text)
    raise _Invalid("mobile_number_format must be E.164 or hash")


def _check_email(text: str) -> str:
    local, _, domain = text.rpartition("@")
    labels = domain.split(".")
    if (
        text.count("@") != 1
        or not local
        or len(labels) < 2
        or not all(labels)
        or len(text) > _EMAIL_MAX_LENGTH
        or any(ch.isspace() for ch in text)
    ):
        raise _Invalid("expected an email address such as name@example.com")
    return f"{local}@{domain.lower()}"


def _check_number(text: str) -> str:
    # float() would also take "nan", "inf", "1_000" and other scripts' digits.
    if _DECIMAL.fullmatch(text) is None or not math.isfinite(float(text)):
        raise _Invalid("expected a decimal number")
    return text


def _check_integer(text: str) -> str:
    if _INTEGER.fullmatch(text) is None:
        raise _Invalid("expected a whole number of at most 18 digits")
    return str(int(text))


def _check_isco08(text: str) -> str:
    # Kept as text: leading zeros are meaningful (major group 0 is armed forces).
    if _ISCO08.fullmatch(text) is None:
        raise _Invalid("expected an ISCO-08 occupation code of 1 to 4 digits")
    return text


def _check_url(text: str) -> str:
    reason = "expected an absolute http or https URL"
    if any(ch.isspace() for ch in text):
        raise _Invalid(reason)
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a malformed port
    except ValueError:
        raise _Invalid(reason) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise _Invalid(reason)
    return text


def _check_ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        # The library's message quotes the value: never pass it on.
        raise _Invalid("expected an IPv4 or IPv6 address") from None


def _check_card_number(text: str) -> str:
    digits = _CARD_SEPARATORS.sub("", text)
    if _CARD_NUMBER.fullmatch(digits) is None:
        raise _Invalid("expected a card number of 12 to 19 digits")
    if not _luhn_valid(digits):
        raise _Invalid("card number check digit is wrong")
    return digits


def _luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def _check_cvc(text: str) -> str:
    if _CVC.fullmatch(text) is None:
        raise _Invalid("expected 3 or 4 digits")
    return text


def _refuse_file(text: str) -> str:
    # Unreachable through `validate` (binary specs are refused first); keeps the table total.
    raise _Invalid("expected a file upload, not text")


_CHECKS: Mapping[FieldFormat, Callable[[str], str]] = MappingProxyType(
    {
        FieldFormat.TEXT: _check_text,
        FieldFormat.MULTILINE_TEXT: _check_text,
        FieldFormat.FILE_ID: _check_token,
        FieldFormat.COUNTRY_ALPHA3: _check_country_alpha3,
        FieldFormat.COUNTRY_ALPHA2: _check_country_alpha2,
        FieldFormat.LANGUAGE: _check_language,
        FieldFormat.DATE: _check_date,
        FieldFormat.YEAR_MONTH: _check_year_month,
        FieldFormat.PHONE_E164: _check_phone,
        FieldFormat.MOBILE_NUMBER: _check_phone,
        FieldFormat.EMAIL: _check_email,
        FieldFormat.NUMBER: _check_number,
        FieldFormat.INTEGER: _check_integer,
        FieldFormat.ISCO08: _check_isco08,
        FieldFormat.URL: _check_url,
        FieldFormat.IP_ADDRESS: _check_ip_address,
        FieldFormat.CARD_NUMBER: _check_card_number,
        FieldFormat.CARD_CVC: _check_cvc,
        FieldFormat.FILE: _refuse_file,
    }
)
