"""Rows the store hands out as dataclasses: columns picked by field name, an offer's sealed secrets
kept for the one partner call that opens them, and a trail row's export line unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from psycopg.rows import no_result

from offers_workers.domain.payload import BankAccountPayment
from offers_workers.domain.secrets import PaymentKeys
from offers_workers.local.samples import bank, base_offer
from offers_workers.saga.trail import digest
from offers_workers.store.audit_trail import TrailRow
from offers_workers.store.db import fields_row
from offers_workers.store.offers import Offer

KEY = "k1=" + "k" * 40
TOKEN = "access-sandbox-0a1b2c3d"


@dataclass(frozen=True)
class Pair:
    id: int
    name: str
    note: str | None = None


def cursor(*columns: str | None) -> Any:
    """What a row factory reads of a cursor: the columns' names (None: a statement without rows)."""
    if columns == (None,):
        return SimpleNamespace(description=None)
    return SimpleNamespace(description=[SimpleNamespace(name=c) for c in columns])


def test_a_row_is_built_from_the_columns_named_like_its_fields_whatever_else_is_selected() -> None:
    make = fields_row(Pair)(cursor("name", "added_by_a_later_migration", "id"))
    assert make(["a", "ignored", 1]) == Pair(1, "a", None)


def test_a_statement_without_rows_gets_psycopgs_maker_of_no_row() -> None:
    assert fields_row(Pair)(cursor(None)) is no_result


def offer_row(**changes: Any) -> dict[str, Any]:
    keys = PaymentKeys.parse(KEY, "OFFERS_PAYMENT_SECRET_KEYS")
    payload = keys.seal_within(base_offer("off_1", 1) | {"payment": bank(TOKEN)})
    return {
        "offer_id": "off_1",
        "state": "validated",
        "reason": None,
        "payload": payload,
        "payment_intent_id": None,
        "hold_status": "none",
        "risk_score": None,
        "payment_attempts": 2,
        "trace_parent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    } | changes


def test_an_offer_shows_its_secrets_sealed_and_opens_them_for_the_partner_call_only() -> None:
    offer = Offer.from_row(offer_row())
    assert isinstance(offer.payload.payment, BankAccountPayment)
    assert offer.payload.payment.plaid_access_token == "[sealed]"
    assert set(offer.sealed_secrets) == {"plaid_access_token", "plaid_account_id"}
    assert TOKEN not in repr(offer)
    opened = offer.for_partners(PaymentKeys.parse(KEY, "OFFERS_PAYMENT_SECRET_KEYS"))
    assert isinstance(opened.payment, BankAccountPayment) and opened.payment.plaid_access_token == TOKEN
    assert (offer.payment_attempts, offer.trace_parent) == (2, offer_row()["trace_parent"])


def test_an_offer_whose_secrets_were_dropped_keeps_none_to_open() -> None:
    row = offer_row()
    row["payload"]["payment"] |= {"plaid_access_token": "[dropped]", "plaid_account_id": "[dropped]"}
    assert Offer.from_row(row).sealed_secrets == {"plaid_access_token": "[dropped]", "plaid_account_id": "[dropped]"}


def test_a_trail_row_is_exported_with_the_columns_in_order_and_reads_back_the_same() -> None:
    row = TrailRow(
        id=12,
        at=datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        offer_id="off_1",
        kind="transition",
        from_state="received",
        to_state="validated",
        reason=None,
        actor="offers.stage.validate",
        data='{"a": 1}',
        prev_hash="0" * 64,
        row_hash="f" * 64,
    )
    line = json.loads(json.dumps(row.as_json(), separators=(",", ":")))
    assert list(line) == [
        "id",
        "at",
        "offer_id",
        "kind",
        "from_state",
        "to_state",
        "reason",
        "actor",
        "data",
        "prev_hash",
        "row_hash",
    ]
    assert line["at"] == "2026-03-01T12:00:00.123456+00:00"
    back = TrailRow.from_json(line)
    assert back == row and digest(back, "0" * 64) == digest(row, "0" * 64)
