"""The validation rules: is this offer acceptable for this listing under its maker's policy?

Pure functions, shared by the validation stage and real-time draft validation. Each problem is a
``FieldError`` whose ``code`` is a contract reason code; the first problem is the rejection reason.
"""

from __future__ import annotations

from decimal import Decimal

from offers_workers.domain.payload import FieldError, OfferPayload
from offers_workers.domain.policy import ListingPolicy


def _money(cents: int, currency: str) -> str:
    return f"{Decimal(cents) / 100:.2f} {currency}"


def check_offer(offer: OfferPayload, found: ListingPolicy | None) -> list[FieldError]:
    """Every rule the offer breaks, most fundamental first (empty when it may proceed)."""
    if found is None:
        return [FieldError(field="listing_id", code="listing_not_found", message=f"no listing {offer.listing_id}")]
    listing, maker = found.listing, found.maker
    problems: list[FieldError] = []
    if listing.status != "active":
        problems.append(
            FieldError(field="listing_id", code="listing_unavailable", message=f"listing is {listing.status}")
        )
    if listing.maker_id != offer.maker_id:
        problems.append(
            FieldError(field="maker_id", code="maker_mismatch", message=f"listing belongs to maker {listing.maker_id}")
        )
    if listing.currency != offer.currency:
        problems.append(
            FieldError(field="currency", code="currency_mismatch", message=f"listing is priced in {listing.currency}")
        )
    if offer.payment.method == "bank_account" and not maker.accepts_bank_payments:
        problems.append(
            FieldError(
                field="payment.method",
                code="bank_payments_not_accepted",
                message="this maker does not accept bank-account payments",
            )
        )
    if offer.amount_cents < maker.min_offer_cents:
        problems.append(
            FieldError(
                field="amount_cents",
                code="below_minimum",
                message=f"the maker's minimum offer is {_money(maker.min_offer_cents, listing.currency)}",
            )
        )
    # Integer-exact: amount / asking < pct / 100  ⇔  amount * 100 < asking * pct.
    elif offer.amount_cents * 100 < listing.asking_price_cents * maker.auto_reject_below_pct:
        problems.append(
            FieldError(
                field="amount_cents",
                code="below_auto_reject_threshold",
                message=f"offers under {maker.auto_reject_below_pct}% of the asking price "
                f"({_money(listing.asking_price_cents, listing.currency)}) are declined automatically",
            )
        )
    return problems
