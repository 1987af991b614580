"""SEP-9 field registry and value validators (kyc_host.sep.sep9).

The expected field tables are typed in from the SEP digest §5 (SEP-9 v1.18.0), so a field
dropped or retyped in the registry fails here rather than at a wallet.
"""

from __future__ import annotations

import dataclasses
import types

import pytest

from kyc_host.sep import sep9
from kyc_host.sep.sep9 import FieldFormat, FieldSpec, FieldType, FieldValueError

S, B, N, D = FieldType.STRING, FieldType.BINARY, FieldType.NUMBER, FieldType.DATE

# Digest §5 "Natural person fields".
NATURAL_PERSON: dict[str, FieldType] = {
    "family_name": S,
    "last_name": S,
    "given_name": S,
    "first_name": S,
    "additional_name": S,
    "address_country_code": S,
    "state_or_province": S,
    "city": S,
    "postal_code": S,
    "address": S,
    "mobile_number": S,
    "mobile_number_format": S,
    "email_address": S,
    "birth_date": D,
    "birth_place": S,
    "birth_country_code": S,
    "tax_id": S,
    "tax_id_name": S,
    "occupation": N,
    "employer_name": S,
    "employer_address": S,
    "language_code": S,
    "id_type": S,
    "id_country_code": S,
    "id_issue_date": D,
    "id_expiration_date": D,
    "id_number": S,
    "photo_id_front": B,
    "photo_id_back": B,
    "notary_approval_of_photo_id": B,
    "ip_address": S,
    "photo_proof_residence": B,
    "sex": S,
    "proof_of_income": B,
    "proof_of_liveness": B,
    "referral_id": S,
}

# Digest §5 "Financial account fields" (all strings); also valid with "organization.".
FINANCIAL_ACCOUNT: tuple[str, ...] = (
    "bank_name",
    "bank_account_type",
    "bank_account_number",
    "bank_number",
    "bank_phone_number",
    "bank_branch_number",
    "external_transfer_memo",
    "clabe_number",
    "cbu_number",
    "cbu_alias",
    "mobile_money_number",
    "mobile_money_provider",
    "crypto_address",
    "crypto_memo",
)

# Digest §5 "Organization fields".
ORGANIZATION: dict[str, FieldType] = {
    "organization.name": S,
    "organization.VAT_number": S,
    "organization.registration_number": S,
    "organization.registration_date": S,  # a date, but SEP-9 types it string
    "organization.registered_address": S,
    "organization.number_of_shareholders": N,
    "organization.shareholder_name": S,
    "organization.photo_incorporation_doc": B,
    "organization.photo_proof_address": B,
    "organization.address_country_code": S,
    "organization.state_or_province": S,
    "organization.city": S,
    "organization.postal_code": S,
    "organization.director_name": S,
    "organization.website": S,
    "organization.email": S,
    "organization.phone": S,
}

# Digest §5 "Card fields".
CARD: dict[str, FieldType] = {
    "card.number": S,
    "card.expiration_date": D,
    "card.cvc": S,
    "card.holder_name": S,
    "card.network": S,
    "card.postal_code": S,
    "card.country_code": S,
    "card.state_or_province": S,
    "card.city": S,
    "card.address": S,
    "card.token": S,
}

# Digest §5 "Variants of field names": the file-id companions, listed out.
FILE_IDS: tuple[str, ...] = (
    "photo_id_front_file_id",
    "photo_id_back_file_id",
    "notary_approval_of_photo_id_file_id",
    "photo_proof_residence_file_id",
    "proof_of_income_file_id",
    "proof_of_liveness_file_id",
    "organization.photo_incorporation_doc_file_id",
    "organization.photo_proof_address_file_id",
)

EXPECTED: dict[str, FieldType] = {
    **NATURAL_PERSON,
    **{name: S for name in FINANCIAL_ACCOUNT},
    **{f"organization.{name}": S for name in FINANCIAL_ACCOUNT},
    **ORGANIZATION,
    **CARD,
    **{name: S for name in FILE_IDS},
}


def check(name: str, value: str) -> str:
    spec = sep9.get(name)
    assert spec is not None, name
    return sep9.validate(spec, value)


def rejected(name: str, value: str) -> FieldValueError:
    with pytest.raises(FieldValueError) as info:
        check(name, value)
    return info.value


# --- the registry ---------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "field_type"), EXPECTED.items())
def test_every_digest_field_is_present_with_its_type(name: str, field_type: FieldType) -> None:
    spec = sep9.get(name)
    assert spec is not None
    assert spec.name == name
    assert spec.type is field_type


def test_registry_holds_exactly_the_digest_fields() -> None:
    assert set(sep9.FIELDS) == set(EXPECTED)
    assert len(sep9.FIELDS) == 100


def test_registry_is_read_only() -> None:
    assert isinstance(sep9.FIELDS, types.MappingProxyType)
    with pytest.raises(TypeError):
        sep9.FIELDS["x"] = sep9.FIELDS["city"]  # type: ignore[index]


def test_specs_are_frozen() -> None:
    spec = sep9.FIELDS["city"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.description = "changed"  # type: ignore[misc]


def test_every_field_has_a_one_sentence_english_description() -> None:
    for spec in sep9.FIELDS.values():
        assert spec.description.endswith("."), spec.name
        assert "{" not in spec.description, spec.name
        assert sep9.description(spec.name, "en") == spec.description
        assert sep9.description(spec.name, "fr") == spec.description


def test_description_of_unknown_field_raises_key_error() -> None:
    with pytest.raises(KeyError):
        sep9.description("favourite_colour", "en")


def test_get_unknown_field_is_none() -> None:
    assert sep9.get("favourite_colour") is None
    assert sep9.get("organization") is None


@pytest.mark.parametrize("name", FINANCIAL_ACCOUNT)
def test_organization_financial_variant_mirrors_the_plain_field(name: str) -> None:
    plain, org = sep9.FIELDS[name], sep9.FIELDS[f"organization.{name}"]
    assert (org.type, org.format, org.choices, org.deprecated) == (
        plain.type,
        plain.format,
        plain.choices,
        plain.deprecated,
    )
    assert "organization" in org.description


def test_file_id_companions_exist_exactly_for_binary_fields() -> None:
    binaries = sep9.binary_fields()
    assert binaries == {n for n, t in EXPECTED.items() if t is B}
    companions = {n for n, s in sep9.FIELDS.items() if s.file_id_of is not None}
    assert companions == {f"{b}_file_id" for b in binaries} == set(FILE_IDS)
    for binary in binaries:
        companion = sep9.FIELDS[f"{binary}_file_id"]
        assert companion.type is S
        assert companion.file_id_of == binary
    assert not any(n.endswith("_file_id") for n in binaries)


def test_aliases() -> None:
    assert sep9.FIELDS["family_name"].alias_of == "last_name"
    assert sep9.FIELDS["given_name"].alias_of == "first_name"
    assert sep9.FIELDS["last_name"].alias_of is None
    assert sep9.FIELDS["first_name"].alias_of is None
    aliased = {n for n, s in sep9.FIELDS.items() if s.alias_of is not None}
    assert aliased == {"family_name", "given_name"}


def test_enumerations_and_deprecations() -> None:
    assert sep9.FIELDS["sex"].choices == ("male", "female", "other")
    assert sep9.FIELDS["bank_account_type"].choices == ("checking", "savings")
    assert sep9.FIELDS["organization.bank_account_type"].choices == ("checking", "savings")
    assert sep9.FIELDS["mobile_number_format"].choices == ("E.164", "hash")
    assert sep9.FIELDS["id_type"].choices is None  # examples, not a closed list
    with_choices = {n for n, s in sep9.FIELDS.items() if s.choices is not None}
    assert with_choices == {
        "sex",
        "bank_account_type",
        "organization.bank_account_type",
        "mobile_number_format",
    }
    deprecated = {n for n, s in sep9.FIELDS.items() if s.deprecated}
    assert deprecated == {"crypto_memo", "organization.crypto_memo"}


# --- validation: shared rules -----------------------------------------------------------------


def test_surrounding_whitespace_is_stripped() -> None:
    assert check("city", "  Lisbon \n") == "Lisbon"


@pytest.mark.parametrize("value", ["", "   ", "\n\t "])
def test_empty_values_are_rejected(value: str) -> None:
    assert str(rejected("city", value)) == "city: must not be empty"


@pytest.mark.parametrize(
    "value",
    ["Lis\x00bon", "Lis\x1bbon", "Lis\x7fbon", "Lis\x85bon", "a\nb", "a\tb", "a\rb"],
)
def test_control_characters_are_rejected_in_one_line_fields(value: str) -> None:
    assert "control characters" in str(rejected("city", value))


def test_multiline_fields_keep_newlines_and_tabs_but_not_other_controls() -> None:
    assert check("address", "1 Main St\r\n\tSpringfield\nUSA") == "1 Main St\n\tSpringfield\nUSA"
    assert check("card.address", "a\nb") == "a\nb"
    assert "control characters" in str(rejected("address", "1 Main St\x00\nSpringfield"))
    assert "control characters" in str(rejected("address", "1 Main St\rSpringfield"))


@pytest.mark.parametrize("value", ["ab\u202ecd", "ab\u2066cd", "ab\u2028cd", "ab\ud800cd"])
def test_bidi_overrides_separators_and_lone_surrogates_are_rejected(value: str) -> None:
    assert "control characters" in str(rejected("last_name", value))


def test_right_to_left_and_non_latin_text_is_accepted() -> None:
    assert check("last_name", "\u05db\u05d4\u05df") == "\u05db\u05d4\u05df"  # Hebrew
    assert check("first_name", "\u674e\u534e") == "\u674e\u534e"
    assert check("city", "S\u00e3o Paulo") == "S\u00e3o Paulo"


def test_length_limits() -> None:
    assert check("city", "x" * 1000) == "x" * 1000
    assert str(rejected("city", "x" * 1001)) == "city: must be at most 1000 characters"
    assert check("address", "x" * 2000) == "x" * 2000
    assert "at most 2000" in str(rejected("address", "x" * 2001))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("birth_date", "1990-02-30-" + "9" * 100),
        ("email_address", "secret-" * 50 + "@nowhere"),
        ("card.number", "4111111111111112" * 10),
        ("city", "Q" * 5000),
        ("sex", "unknown-" * 20),
        ("ip_address", "999.1.1.1" + "0" * 80),
    ],
)
def test_error_names_the_field_and_never_echoes_a_long_value(name: str, value: str) -> None:
    error = rejected(name, value)
    message = str(error)
    assert message.startswith(f"{name}: ")
    assert error.field == name
    assert value not in message
    assert value[:20] not in message
    assert len(message) < 200


def test_field_value_error_is_a_value_error() -> None:
    assert issubclass(FieldValueError, ValueError)


def test_binary_fields_refuse_text() -> None:
    assert "file" in str(rejected("photo_id_front", "aGVsbG8="))


def test_non_text_values_are_rejected_not_crashed_on() -> None:
    with pytest.raises(FieldValueError, match=r"^city: expected a text value$"):
        sep9.validate(sep9.FIELDS["city"], {"nested": "object"})  # type: ignore[arg-type]


# --- validation: formats ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["1990-12-31", "2000-02-29", "2024-02-29", "1600-02-29", "0001-01-01"]
)
def test_dates_accept_real_calendar_dates(value: str) -> None:
    assert check("birth_date", value) == value


@pytest.mark.parametrize(
    "value",
    [
        "31/12/1990",
        "1990-02-30",
        "1900-02-29",
        "2023-02-29",
        "1990-13-01",
        "1990-00-10",
        "0000-01-01",
        "19901231",
        "1990-1-5",
        "1990-12-31T00:00:00",
        "\u0661\u0669\u0669\u0660-01-01",  # Arabic-Indic digits
    ],
)
def test_dates_reject_other_formats_and_impossible_dates(value: str) -> None:
    message = str(rejected("birth_date", value))
    assert message.startswith("birth_date: expected a")
    assert "YYYY-MM-DD" in message


def test_organization_registration_date_is_checked_as_a_date() -> None:
    assert check("organization.registration_date", "2019-06-01") == "2019-06-01"
    rejected("organization.registration_date", "June 2019")


def test_country_alpha3() -> None:
    assert check("address_country_code", "USA") == "USA"
    assert check("id_country_code", " bra ") == "BRA"
    assert check("organization.address_country_code", "PRT") == "PRT"
    for bad in ("US", "XXX", "UK", "EUR", "U S A", "USAA", "u\u017fa"):
        message = str(rejected("birth_country_code", bad))
        assert "ISO 3166-1 alpha-3" in message


def test_country_alpha2_for_card_only() -> None:
    assert check("card.country_code", "US") == "US"
    assert check("card.country_code", "gb") == "GB"
    for bad in ("USA", "UK", "XX", "U"):
        assert "alpha-2" in str(rejected("card.country_code", bad))


def test_language_codes() -> None:
    assert check("language_code", "en") == "en"
    assert check("language_code", "PT") == "pt"
    for bad in ("eng", "xx", "en-US", "e"):
        assert "ISO 639-1" in str(rejected("language_code", bad))


@pytest.mark.parametrize("name", ["bank_phone_number", "mobile_money_number", "organization.phone"])
def test_phone_fields_take_e164(name: str) -> None:
    assert check(name, "+14155552671") == "+14155552671"
    assert check(name, "+44 20 7946 0958") == "+442079460958"
    assert check(name, "+1 (415) 555-2671") == "+14155552671"


@pytest.mark.parametrize(
    "value",
    [
        "14155552671",
        "+04155552671",
        "+1415555",
        "+1234567890123456",
        "+1415555267a",
        "++14155552671",
    ],
)
def test_phone_rejects_non_e164(value: str) -> None:
    assert "E.164" in str(rejected("mobile_number", value))


def test_mobile_number_follows_mobile_number_format() -> None:
    spec = sep9.FIELDS["mobile_number"]
    digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert sep9.validate(spec, "+14155552671", mobile_number_format="E.164") == "+14155552671"
    assert sep9.validate(spec, digest, mobile_number_format="hash") == digest
    with pytest.raises(FieldValueError, match=r"^mobile_number: "):
        sep9.validate(spec, digest)  # E.164 is the default
    with pytest.raises(FieldValueError, match=r"^mobile_number: "):
        sep9.validate(spec, "ab cd", mobile_number_format="hash")
    with pytest.raises(FieldValueError, match="mobile_number_format"):
        sep9.validate(spec, "+14155552671", mobile_number_format="national")


def test_emails() -> None:
    assert check("email_address", "Jane.Doe+kyc@Example.COM") == "Jane.Doe+kyc@example.com"
    assert check("organization.email", "ops@sub.example.org") == "ops@sub.example.org"
    bad = [
        "jane",
        "@example.com",
        "jane@",
        "jane@localhost",
        "jane@@example.com",
        "ja@ne@example.com",
        "jane doe@example.com",
        "jane@example..com",
        "jane@.example.com",
        "jane@example.com.",
        "j" * 250 + "@example.com",
    ]
    for value in bad:
        assert "email address" in str(rejected("email_address", value)), value


def test_occupation_is_an_isco08_code() -> None:
    assert check("occupation", "2512") == "2512"
    assert check("occupation", "0110") == "0110"  # armed forces: the leading zero matters
    assert check("occupation", "7") == "7"
    for bad in ("25120", "25.1", "-1", "developer", "\u0662\u0665"):
        assert "ISCO-08" in str(rejected("occupation", bad))


def test_number_of_shareholders_is_a_whole_number() -> None:
    assert check("organization.number_of_shareholders", "3") == "3"
    assert check("organization.number_of_shareholders", "007") == "7"
    for bad in ("3.5", "-2", "three", "1" * 19, "1e3"):
        assert "whole number" in str(rejected("organization.number_of_shareholders", bad))


def test_generic_number_format() -> None:
    spec = FieldSpec("amount", FieldType.NUMBER, "An amount.", format=FieldFormat.NUMBER)
    for good in ("12", "-3.5", "0.25", ".5", "1e6", "+7"):
        assert sep9.validate(spec, good) == good
    for bad in ("nan", "inf", "1e999", "1_000", "0x10", "1,5", "\u0661"):
        with pytest.raises(FieldValueError, match=r"^amount: expected a decimal number$"):
            sep9.validate(spec, bad)


def test_ip_addresses() -> None:
    assert check("ip_address", "192.0.2.10") == "192.0.2.10"
    assert check("ip_address", "2001:DB8:0:0::1") == "2001:db8::1"
    for bad in ("256.1.1.1", "192.0.2", "01.2.3.4", "example.com", "2001:db8::g"):
        assert str(rejected("ip_address", bad)) == "ip_address: expected an IPv4 or IPv6 address"


def test_website_urls() -> None:
    assert check("organization.website", "https://example.com") == "https://example.com"
    assert check("organization.website", "http://example.com/about?x=1") == (
        "http://example.com/about?x=1"
    )
    for bad in (
        "example.com",
        "ftp://example.com",
        "javascript:alert(1)",
        "https://",
        "http://[::1",
    ):
        assert "http or https URL" in str(rejected("organization.website", bad)), bad


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        ("4111111111111111", "4111111111111111"),  # Visa test number
        ("4111 1111 1111 1111", "4111111111111111"),
        ("5555-5555-5555-4444", "5555555555554444"),
        ("378282246310005", "378282246310005"),  # AmEx, 15 digits
    ],
)
def test_card_numbers_pass_luhn(value: str, normalized: str) -> None:
    assert check("card.number", value) == normalized


def test_card_numbers_failing_luhn_or_length_are_rejected() -> None:
    assert "check digit" in str(rejected("card.number", "4111111111111112"))
    for bad in ("41111111111", "4" * 20, "4111-1111-1111-111x"):
        assert "12 to 19 digits" in str(rejected("card.number", bad))


def test_card_expiration_and_cvc() -> None:
    assert check("card.expiration_date", "29-11") == "29-11"
    assert check("card.expiration_date", "30-01") == "30-01"
    for bad in ("29-13", "29-00", "2029-11", "11/29", "29-1"):
        assert "YY-MM" in str(rejected("card.expiration_date", bad))
    assert check("card.cvc", "123") == "123"
    assert check("card.cvc", "1234") == "1234"
    for bad in ("12", "12345", "abc"):
        rejected("card.cvc", bad)


def test_choices_are_enforced_case_sensitively() -> None:
    assert check("sex", "female") == "female"
    assert check("bank_account_type", " savings ") == "savings"
    assert check("organization.bank_account_type", "checking") == "checking"
    assert check("mobile_number_format", "hash") == "hash"
    assert str(rejected("sex", "Female")) == "sex: expected one of: male, female, other"
    assert "checking, savings" in str(rejected("bank_account_type", "current"))
    rejected("mobile_number_format", "e.164")


def test_free_text_fields_accept_anything_printable() -> None:
    assert check("id_type", "residence_permit") == "residence_permit"
    assert check("tax_id", "123-45-6789") == "123-45-6789"
    assert check("card.token", "tok_1N3T00LkdIwHu7ixt44h1F8k") == "tok_1N3T00LkdIwHu7ixt44h1F8k"


def test_file_id_companions_are_single_tokens() -> None:
    assert check("photo_id_front_file_id", "file_d3d54529") == "file_d3d54529"
    assert "whitespace" in str(rejected("photo_id_front_file_id", "file d3d54529"))
