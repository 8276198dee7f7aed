"""Offer payload v1: what is accepted, and the field-level errors for what is not."""

from __future__ import annotations

import pytest

from offers_workers.domain.payload import MAX_MESSAGE_BYTES, PayloadRejected, body_sha256, json_schema, parse_offer
from offers_workers.local.samples import base_offer
from tests.expected import REQUIRED_PAYLOAD_FIELDS


def codes(raw) -> dict[str, str]:
    with pytest.raises(PayloadRejected) as caught:
        parse_offer(raw)
    return {e.field: e.code for e in caught.value.errors}


def test_the_design_example_is_accepted() -> None:
    offer = parse_offer(base_offer("off_123", 1))
    assert offer.offer_id == "off_123"
    assert offer.payment.method == "card"
    assert offer.amount_cents == 15000


def test_bank_account_payment_is_accepted() -> None:
    raw = base_offer("off_1", 1) | {
        "payment": {"method": "bank_account", "plaid_access_token": "access-x", "plaid_account_id": "acc"}
    }
    assert parse_offer(raw).payment.method == "bank_account"


def test_missing_fields_are_named() -> None:
    raw = base_offer("off_1", 1)
    del raw["listing_id"], raw["amount_cents"]
    assert codes(raw) == {"listing_id": "missing", "amount_cents": "missing"}


def test_unknown_fields_are_rejected() -> None:
    assert codes(base_offer("off_1", 1) | {"colour": "red"}) == {"colour": "extra_forbidden"}


@pytest.mark.parametrize(
    ("change", "field", "code"),
    [
        ({"amount_cents": -5}, "amount_cents", "greater_than_equal"),
        ({"amount_cents": 0}, "amount_cents", "greater_than_equal"),
        ({"amount_cents": 100_000_001}, "amount_cents", "less_than_equal"),
        ({"amount_cents": 10**30}, "amount_cents", "less_than_equal"),
        ({"amount_cents": "15000"}, "amount_cents", "int_type"),
        ({"amount_cents": 150.5}, "amount_cents", "int_type"),
        ({"amount_cents": True}, "amount_cents", "int_type"),
        ({"currency": "usd"}, "currency", "string_pattern_mismatch"),
        ({"offer_id": "off 1; DROP TABLE offers"}, "offer_id", "string_pattern_mismatch"),
        ({"offer_id": "x" * 65}, "offer_id", "string_pattern_mismatch"),
        ({"buyer_id": 42}, "buyer_id", "string_type"),
        ({"message": "m" * 1001}, "message", "string_too_long"),
        ({"synthetic": "yes"}, "synthetic", "bool_type"),
    ],
)
def test_bad_values_are_named(change: dict, field: str, code: str) -> None:
    assert codes(base_offer("off_1", 1) | change) == {field: code}


def test_unknown_payment_method_is_rejected() -> None:
    errors = codes(base_offer("off_1", 1) | {"payment": {"method": "cash"}})
    assert errors == {"payment": "union_tag_invalid"}


def test_a_list_is_not_an_offer() -> None:
    assert codes([base_offer("off_1", 1)]) == {"": "not_an_object"}


def test_a_body_over_32_kib_is_rejected_before_parsing() -> None:
    raw = base_offer("off_1", 1) | {"message": "x" * (40 * 1024)}
    assert codes(raw) == {"": "too_large"}
    assert MAX_MESSAGE_BYTES == 32 * 1024


def test_the_same_body_hashes_the_same_whatever_the_key_order() -> None:
    raw = base_offer("off_1", 1)
    assert body_sha256(raw) == body_sha256(dict(reversed(list(raw.items()))))
    assert body_sha256(raw) != body_sha256(raw | {"amount_cents": 15001})


def test_the_schema_describes_the_contract() -> None:
    schema = json_schema()
    assert set(schema["required"]) == set(REQUIRED_PAYLOAD_FIELDS)
    assert schema["additionalProperties"] is False
    assert schema["properties"]["amount_cents"]["maximum"] == 100_000_000


@pytest.mark.parametrize("where", ["payment.method", "buyer_context.ip", "payment.payment_method_id", "message"])
def test_a_nul_in_any_field_is_a_field_error_whose_text_postgres_can_store(where: str) -> None:
    # Found by the long fuzzing run: Postgres refuses NUL in text and jsonb, so neither the field
    # nor pydantic's message quoting the input may carry one into the rejection row.
    offer = base_offer("off_1", 1)
    target = offer
    *path, last = where.split(".")
    for key in path:
        target = target[key]
    target[last] = "a\x00b"
    with pytest.raises(PayloadRejected) as caught:
        parse_offer(offer)
    assert all("\x00" not in e.field + e.message for e in caught.value.errors)
