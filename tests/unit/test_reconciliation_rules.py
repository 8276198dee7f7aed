"""What reconciliation does with one uncaptured hold at Stripe, given the offer it names."""

from __future__ import annotations

import pytest

from offers_workers.domain import states
from offers_workers.local.samples import base_offer
from offers_workers.partners.interfaces import Hold
from offers_workers.saga.reconciliation import AMOUNT_MISMATCH, CURRENCY_MISMATCH, RELEASED, judge
from offers_workers.store.offers import Offer


def offer(state: str, payment_intent_id: str | None = "pi_1", **changes) -> Offer:
    payload = base_offer("off_1", 1) | changes
    return Offer.from_row(
        {
            "offer_id": "off_1",
            "state": state,
            "reason": None,
            "payload": payload,
            "payment_intent_id": payment_intent_id,
            "hold_status": "held" if payment_intent_id else "none",
            "risk_score": None,
            "payment_attempts": 1,
            "trace_parent": None,
        }
    )


HOLD = Hold("pi_1", "requires_capture", 15000, "usd", "off_1")


@pytest.mark.parametrize("state", sorted(states.TERMINAL))
def test_a_hold_of_an_ended_offer_is_released(state) -> None:
    assert (judge(HOLD, offer(state)).action, judge(HOLD, offer(state)).kind) == ("release", RELEASED)


def test_a_hold_of_no_offer_is_released() -> None:
    assert judge(HOLD, None).why == "no such offer"


def test_a_second_hold_is_released_and_the_offers_own_kept() -> None:
    verdict = judge(Hold("pi_2", "requires_capture", 15000, "usd", "off_1"), offer(states.SUBMITTED))
    assert verdict.action == "release" and "pi_1" in verdict.why
    assert judge(HOLD, offer(states.SUBMITTED)).action == "keep"


@pytest.mark.parametrize("state", [states.VALIDATED, states.PAYMENT_HELD, states.DEAD_LETTERED])
def test_an_open_or_dead_lettered_offer_keeps_its_hold_recorded_or_not(state) -> None:
    # a stage about to commit (its key gives it this intent back), or a replay to come
    assert judge(HOLD, offer(state, payment_intent_id=None)).action == "keep"


def test_a_different_amount_or_currency_is_flagged_never_released() -> None:
    assert judge(HOLD, offer(states.SUBMITTED, amount_cents=14000)).kind == AMOUNT_MISMATCH
    assert judge(HOLD, offer(states.SUBMITTED, currency="EUR")).kind == CURRENCY_MISMATCH
    assert judge(HOLD, offer(states.SUBMITTED, currency="EUR")).action == "flag"
