"""Every validation rule, one at a time, against a listing and its maker's policy."""

from __future__ import annotations

from decimal import Decimal

import pytest

from offers_workers.domain.payload import parse_offer
from offers_workers.domain.policy import Listing, ListingPolicy, MakerPolicy
from offers_workers.domain.validation import check_offer
from offers_workers.local.samples import base_offer

MAKER = MakerPolicy(
    maker_id="mkr_1", min_offer_cents=1000, auto_reject_below_pct=Decimal("50"), accepts_bank_payments=False
)
LISTING = Listing(listing_id="lst_1", maker_id="mkr_1", asking_price_cents=20000, currency="USD", status="active")
FOUND = ListingPolicy(listing=LISTING, maker=MAKER)


def problems(found=FOUND, **changes) -> list[str]:
    return [p.code for p in check_offer(parse_offer(base_offer("off_1", 1) | changes), found)]


def test_a_good_offer_passes() -> None:
    assert problems() == []


def test_unknown_listing() -> None:
    assert problems(found=None) == ["listing_not_found"]


@pytest.mark.parametrize("status", ["paused", "sold", "withdrawn"])
def test_listing_not_active(status: str) -> None:
    found = ListingPolicy(listing=LISTING.model_copy(update={"status": status}), maker=MAKER)
    assert problems(found=found) == ["listing_unavailable"]


def test_maker_mismatch() -> None:
    assert problems(maker_id="mkr_other") == ["maker_mismatch"]


def test_currency_mismatch() -> None:
    assert problems(currency="EUR") == ["currency_mismatch"]


def test_below_the_makers_minimum() -> None:
    assert problems(amount_cents=999) == ["below_minimum"]
    assert "below_minimum" not in problems(amount_cents=1000)


def test_auto_reject_threshold_is_a_percentage_of_the_asking_price() -> None:
    assert problems(amount_cents=9999) == ["below_auto_reject_threshold"]
    assert problems(amount_cents=10000) == []  # exactly 50 % is allowed


def test_fractional_threshold_is_exact() -> None:
    maker = MAKER.model_copy(update={"auto_reject_below_pct": Decimal("33.33")})
    found = ListingPolicy(listing=LISTING, maker=maker)
    assert problems(found=found, amount_cents=6665) == ["below_auto_reject_threshold"]  # 6665 < 6666
    assert problems(found=found, amount_cents=6666) == []


def test_bank_payment_not_accepted() -> None:
    bank = {"method": "bank_account", "plaid_access_token": "access-x", "plaid_account_id": "acc"}
    assert problems(payment=bank) == ["bank_payments_not_accepted"]
    accepting = ListingPolicy(listing=LISTING, maker=MAKER.model_copy(update={"accepts_bank_payments": True}))
    assert problems(found=accepting, payment=bank) == []


def test_several_problems_are_all_reported_most_fundamental_first() -> None:
    assert problems(maker_id="mkr_x", currency="EUR", amount_cents=500) == [
        "maker_mismatch",
        "currency_mismatch",
        "below_minimum",
    ]
