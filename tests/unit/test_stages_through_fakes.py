"""Each stage's partner calls through the in-process fakes, and what the saga decides from them:
advance, each business rejection, each retryable and each terminal partner error, and the
compensation of a hold (released when risk rejects, when the offer was cancelled meanwhile).

The stage functions here (``payment_outcome``, ``risk_outcome``, ``auction_outcome``) are the
ones the real stages run between loading the offer and committing; Postgres is not involved.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from config.retry import policy_for
from offers_workers.domain import states
from offers_workers.domain.errors import OfferRejected, PermanentError, TransientError
from offers_workers.domain.payload import OfferPayload, parse_offer
from offers_workers.domain.policy import Listing, ListingPolicy, MakerPolicy
from offers_workers.local.samples import CARD, bank, base_offer
from offers_workers.partners.fakes import (
    PARTNER_DOWN,
    FakeAuctionEvents,
    FakeBankFunds,
    FakePayments,
    FakeRiskScoring,
)
from offers_workers.partners.interfaces import Hold, OrderToScore, ReturnRisk, adopt_or_key
from offers_workers.saga import decisions
from offers_workers.saga.decisions import RELEASE_HOLD_TASK, Advance, DeadLetter, Dispatch, Reject, RetryLater
from offers_workers.saga.stages import auction_outcome, payment_outcome, risk_outcome
from tests.unit.conftest import submitted_event

THRESHOLDS = {"risk_block_threshold": 0.8, "return_risk_block_threshold": 80}
TOPIC = "arn:aws:sns:us-east-1:123456789012:offers-submitted"


def card_offer(payment_method_id: str = "pm_card_visa", **changes: Any) -> OfferPayload:
    return parse_offer(base_offer("off_1", 1) | {"payment": {**CARD, "payment_method_id": payment_method_id}} | changes)


def bank_offer(token: str = "access-sandbox-buyer", **changes: Any) -> OfferPayload:
    return parse_offer(base_offer("off_1", 1) | {"payment": bank(token)} | changes)


def outcome(call: Callable[[], decisions.Outcome]) -> decisions.Outcome:
    """What the stage commits: its outcome, or a partner's business refusal as a rejection."""
    try:
        return call()
    except OfferRejected as refused:
        return decisions.rejected(refused)


def failure(stage: str, call: Callable[[], object], retries_done: int = 0) -> decisions.Failure:
    """What the task layer does with the partner error the call raises."""
    with pytest.raises((TransientError, PermanentError)) as raised:
        call()
    return decisions.on_failure(raised.value, stage=stage, retries_done=retries_done)


# --- payment: card holds --------------------------------------------------------------------------


def test_a_card_hold_advances_and_records_the_payment_intent() -> None:
    payments, funds = FakePayments(), FakeBankFunds()
    result = outcome(lambda: payment_outcome(card_offer(), payments, funds))
    [hold] = payments.holds_for("off_1")
    assert result == Advance(
        payment_intent_id=hold.payment_intent_id, data={"payment_intent_id": hold.payment_intent_id}
    )
    assert (hold.status, hold.amount_cents, hold.currency) == ("requires_capture", 15000, "usd")
    assert funds.calls == []


def test_the_hold_carries_the_offer_listing_and_buyer() -> None:
    payments = FakePayments()
    payment_outcome(card_offer(), payments, FakeBankFunds())
    [call] = payments.calls_to("place_hold")
    assert call.kwargs["metadata"] == {"offer_id": "off_1", "listing_id": "lst_1", "buyer_id": "usr_1"}
    assert call.kwargs["payment_method_id"] == "pm_card_visa"


def test_a_hold_placed_again_is_the_same_payment_intent() -> None:
    payments = FakePayments()
    first = payment_outcome(card_offer(), payments, FakeBankFunds())
    again = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert first == again
    assert len(payments.holds_for("off_1")) == 1


@pytest.mark.parametrize(
    ("payment_method_id", "reason", "detail"),
    [
        ("pm_card_chargeDeclined", "payment_declined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds", "insufficient_funds"),
    ],
)
def test_a_declined_card_rejects_the_offer_with_the_decline(payment_method_id, reason, detail) -> None:
    result = outcome(lambda: payment_outcome(card_offer(payment_method_id), FakePayments(), FakeBankFunds()))
    assert result == Reject(reason, data={"detail": detail})
    assert result.reason in states.REJECTION_REASONS


def test_a_decline_stays_a_decline_when_asked_again() -> None:
    payments = FakePayments()
    offer = card_offer("pm_card_chargeDeclined")
    assert outcome(lambda: payment_outcome(offer, payments, FakeBankFunds())) == outcome(
        lambda: payment_outcome(offer, payments, FakeBankFunds())
    )


@pytest.mark.parametrize(
    "error",
    [
        PARTNER_DOWN["stripe"],
        TransientError("stripe", "rate_limit", "Too many requests", 429),
        TransientError("stripe", "idempotency_key_in_use", "in use", 409),
        TransientError("stripe", "APIConnectionError", "connection reset", None),
    ],
    ids=["503", "429", "409", "connection"],
)
def test_a_transient_stripe_error_is_retried_and_the_retry_places_one_hold(error) -> None:
    payments = FakePayments()
    payments.fail_next(error, method="place_hold")
    assert failure("payment", lambda: payment_outcome(card_offer(), payments, FakeBankFunds())) == RetryLater(
        policy_for("payment")
    )
    result = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(result, Advance) and result.payment_intent_id
    assert len(payments.holds_for("off_1")) == 1


def test_stripe_down_past_the_budget_dead_letters() -> None:
    payments = FakePayments(fail_with=PARTNER_DOWN["stripe"])
    budget = policy_for("payment").max_retries
    call = lambda: payment_outcome(card_offer(), payments, FakeBankFunds())  # noqa: E731
    assert failure("payment", call, retries_done=budget) == DeadLetter()
    assert payments.holds_for("off_1") == []


@pytest.mark.parametrize(
    ("offer", "payments"),
    [
        (card_offer("pm_unknown"), FakePayments()),
        (card_offer(), FakePayments(fail_with=PermanentError("stripe", "authentication_error", "bad key", 401))),
        (card_offer(), FakePayments(fail_with=PermanentError("stripe", "parameter_invalid", "bad", 400))),
    ],
    ids=["unknown-payment-method", "bad-key", "bad-request"],
)
def test_a_permanent_stripe_error_dead_letters_at_once(offer, payments) -> None:
    assert failure("payment", lambda: payment_outcome(offer, payments, FakeBankFunds())) == DeadLetter()


def test_the_same_key_with_other_parameters_dead_letters() -> None:
    payments = FakePayments()
    payment_outcome(card_offer(), payments, FakeBankFunds())
    changed = card_offer(amount_cents=16000)
    assert failure("payment", lambda: payment_outcome(changed, payments, FakeBankFunds())) == DeadLetter()


# --- payment: after Stripe forgot the key (24 h) --------------------------------------------------

PAST_THE_KEY_S = 25 * 3600


def test_second_hold_never_placed_by_a_payment_stage_replayed_after_the_idempotency_window() -> None:
    payments = FakePayments()
    first = payment_outcome(card_offer(), payments, FakeBankFunds())
    payments.advance_clock(PAST_THE_KEY_S)
    # The replay finds the offer's hold and adopts it: the stage records the same PaymentIntent.
    assert payment_outcome(card_offer(), payments, FakeBankFunds()) == first
    assert [h.status for h in payments.holds_for("off_1")] == ["requires_capture"]


def test_second_hold_placed_only_for_a_hold_that_was_released() -> None:
    payments = FakePayments()
    first = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(first, Advance) and first.payment_intent_id
    payments.expire(first.payment_intent_id)  # Stripe let the authorization lapse
    payments.advance_clock(PAST_THE_KEY_S)
    again = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(again, Advance) and again.payment_intent_id != first.payment_intent_id
    assert payment_outcome(card_offer(), payments, FakeBankFunds()) == again
    assert [h.status for h in payments.holds_for("off_1")] == ["canceled", "requires_capture"]


def test_second_hold_never_placed_on_a_charged_offer_the_stage_dead_letters() -> None:
    payments = FakePayments()
    first = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(first, Advance) and first.payment_intent_id
    payments.capture(first.payment_intent_id)
    payments.advance_clock(PAST_THE_KEY_S)
    call = lambda: payment_outcome(card_offer(), payments, FakeBankFunds())  # noqa: E731
    assert failure("payment", call) == DeadLetter()
    assert len(payments.holds_for("off_1")) == 1


def hold(pi: str, status: str, amount_cents: int = 15000, currency: str = "usd") -> Hold:
    return Hold(pi, status, amount_cents, currency, "off_1")


@pytest.mark.parametrize(
    ("found", "plan"),
    [
        ([], "offer:off_1:hold"),
        ([hold("pi_2", "requires_capture"), hold("pi_1", "canceled")], hold("pi_2", "requires_capture")),
        ([hold("pi_1", "requires_payment_method")], "offer:off_1:hold"),
        ([hold("pi_1", "canceled")], "offer:off_1:hold:2"),
        ([hold("pi_2", "canceled"), hold("pi_1", "canceled")], "offer:off_1:hold:3"),
    ],
    ids=["none", "live", "declined", "released", "released-twice"],
)
def test_second_hold_decision_adopts_a_live_hold_or_names_the_key(found, plan) -> None:
    assert adopt_or_key(found, offer_id="off_1", amount_cents=15000, currency="USD") == plan


@pytest.mark.parametrize(
    ("found", "code"),
    [
        ([hold("pi_1", "requires_capture", amount_cents=9900)], "IdempotencyError"),
        ([hold("pi_1", "requires_capture", currency="eur")], "IdempotencyError"),
        ([hold("pi_1", "succeeded")], "payment_intent_captured"),
    ],
    ids=["other-amount", "other-currency", "captured"],
)
def test_second_hold_decision_refuses_what_would_hold_or_charge_twice(found, code) -> None:
    with pytest.raises(PermanentError) as refused:
        adopt_or_key(found, offer_id="off_1", amount_cents=15000, currency="USD")
    assert refused.value.code == code


# --- payment: bank accounts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "expected"),
    [
        (15000, Advance(data={"funds_verified": True})),
        (5_000_000, Advance(data={"funds_verified": True})),
        (14999, Reject("insufficient_funds", data={"funds_verified": False})),
        (0, Reject("insufficient_funds", data={"funds_verified": False})),
    ],
)
def test_a_bank_offer_advances_on_a_covering_balance(balance, expected) -> None:
    payments, funds = FakePayments(), FakeBankFunds(balances={"access-sandbox-buyer": balance})
    assert outcome(lambda: payment_outcome(bank_offer(), payments, funds)) == expected
    assert payments.calls == []  # no hold for a bank debit
    [call] = funds.calls_to("balance")
    assert call.kwargs == {"access_token": "access-sandbox-buyer", "account_id": "acc_checking_1"}


@pytest.mark.parametrize(
    "error",
    [
        PARTNER_DOWN["plaid"],
        TransientError("plaid", "INSTITUTION_DOWN", "the institution is down", 400),
        TransientError("plaid", "RATE_LIMIT_EXCEEDED", "slow down", 429),
    ],
    ids=["503", "institution-down", "rate-limit"],
)
def test_a_transient_plaid_error_is_retried(error) -> None:
    funds = FakeBankFunds(item_errors={"access-sandbox-buyer": error})
    assert failure("payment", lambda: payment_outcome(bank_offer(), FakePayments(), funds)) == RetryLater(
        policy_for("payment")
    )


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("plaid", "ITEM_LOGIN_REQUIRED", "the login details changed", 400),
        PermanentError("plaid", "account_not_found", "account acc_checking_1 is not on this item"),
        PermanentError("plaid", "balance_unavailable", "no balance for account acc_checking_1"),
    ],
    ids=["login-required", "no-account", "no-balance"],
)
def test_a_permanent_plaid_error_dead_letters(error) -> None:
    funds = FakeBankFunds(item_errors={"access-sandbox-buyer": error})
    assert failure("payment", lambda: payment_outcome(bank_offer(), FakePayments(), funds)) == DeadLetter()


# --- risk -----------------------------------------------------------------------------------------


def scores(score: float, return_risk: int | None) -> dict[str, Any]:
    return {"risk_score": score, "return_risk_score": return_risk}


@pytest.mark.parametrize(("score", "blocked"), [(0.1, False), (0.79, False), (0.8, True), (0.95, True)], ids=str)
def test_a_card_offer_is_blocked_at_or_above_the_risk_threshold(score, blocked) -> None:
    risk, funds = FakeRiskScoring(scores={"usr_1": score}), FakeBankFunds()
    result = risk_outcome(card_offer(), risk, funds, **THRESHOLDS)
    s = scores(score, None)
    assert result == (Reject("risk_blocked", fields=s, data=s) if blocked else Advance(fields=s, data=s))
    assert funds.calls == []  # a card cannot be returned: no Signal evaluation


def test_sift_is_told_about_the_offer_and_its_buyer() -> None:
    risk = FakeRiskScoring()
    risk_outcome(card_offer(), risk, FakeBankFunds(), **THRESHOLDS)
    [call] = risk.calls_to("score_order")
    assert call.kwargs == {
        "order": OrderToScore(
            offer_id="off_1",
            buyer_id="usr_1",
            amount_cents=15000,
            currency="USD",
            payment_method="card",
            email="buyer1@example.com",
            ip="203.0.113.9",
            session_id="s1",
        )
    }


@pytest.mark.parametrize(
    ("return_risk", "worst", "blocked"),
    [
        (ReturnRisk(10, 10), 10, False),
        (ReturnRisk(79, 12), 79, False),
        (ReturnRisk(80, 12), 80, True),
        (ReturnRisk(12, 95), 95, True),
        (ReturnRisk(None, 85), 85, True),
        (ReturnRisk(20, None), 20, False),
    ],
    ids=str,
)
def test_a_bank_offer_is_blocked_on_the_worse_return_risk(return_risk, worst, blocked) -> None:
    funds = FakeBankFunds(return_risks={"access-sandbox-buyer": return_risk})
    result = risk_outcome(bank_offer(), FakeRiskScoring(default=0.1), funds, **THRESHOLDS)
    s = scores(0.1, worst)
    assert result == (Reject("risk_blocked", fields=s, data=s) if blocked else Advance(fields=s, data=s))
    [call] = funds.calls_to("return_risk")
    assert call.kwargs["offer_id"] == "off_1" and call.kwargs["amount_cents"] == 15000


def test_a_risky_buyer_is_blocked_whatever_the_return_risk() -> None:
    result = risk_outcome(bank_offer(), FakeRiskScoring(scores={"usr_1": 0.9}), FakeBankFunds(), **THRESHOLDS)
    assert isinstance(result, Reject) and result.reason == "risk_blocked"


@pytest.mark.parametrize(
    "error",
    [
        PARTNER_DOWN["sift"],
        TransientError("sift", "status_60", "rate limited", 200),
        TransientError("sift", "http_error", "timed out"),
    ],
    ids=["503", "status-60", "timeout"],
)
def test_a_transient_sift_error_is_retried(error) -> None:
    risk = FakeRiskScoring(fail_with=error)
    assert failure("risk", lambda: risk_outcome(card_offer(), risk, FakeBankFunds(), **THRESHOLDS)) == RetryLater(
        policy_for("risk")
    )


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("sift", "status_51", "invalid api key", 200),
        PermanentError("sift", "missing_score", "response has no payment_abuse score", 200),
        PermanentError("sift", "invalid_request", "bad field"),
    ],
    ids=["bad-key", "no-score", "bad-request"],
)
def test_a_permanent_sift_error_dead_letters(error) -> None:
    risk = FakeRiskScoring(fail_with=error)
    assert failure("risk", lambda: risk_outcome(card_offer(), risk, FakeBankFunds(), **THRESHOLDS)) == DeadLetter()


def test_signal_down_is_retried_and_signal_without_a_score_dead_letters() -> None:
    down = FakeBankFunds(fail_with=PARTNER_DOWN["plaid"])
    call = lambda: risk_outcome(bank_offer(), FakeRiskScoring(), down, **THRESHOLDS)  # noqa: E731
    assert failure("risk", call) == RetryLater(policy_for("risk"))
    missing = FakeBankFunds(fail_with=PermanentError("plaid", "missing_score", "signal response has no score"))
    call = lambda: risk_outcome(bank_offer(), FakeRiskScoring(), missing, **THRESHOLDS)  # noqa: E731
    assert failure("risk", call) == DeadLetter()


def test_the_risk_stage_retried_after_sift_recovers_decides_as_before() -> None:
    risk = FakeRiskScoring(scores={"usr_1": 0.95})
    risk.fail_next(PARTNER_DOWN["sift"], times=3)
    for _ in range(3):
        assert isinstance(
            failure("risk", lambda: risk_outcome(card_offer(), risk, FakeBankFunds(), **THRESHOLDS)), RetryLater
        )
    result = risk_outcome(card_offer(), risk, FakeBankFunds(), **THRESHOLDS)
    assert isinstance(result, Reject) and result.reason == "risk_blocked"


# --- auction --------------------------------------------------------------------------------------


def test_the_auction_stage_publishes_offer_submitted_once_and_keeps_it_as_published() -> None:
    events = FakeAuctionEvents()
    result = auction_outcome(submitted_event(), events, TOPIC)
    ids = {"bus_event_id": "fake-event-1", "sns_message_id": "fake-message-fake-event-1"}
    assert result == Advance(published=(submitted_event(), "offer.submitted"), data={"event_id": "evt_1", **ids}, **ids)
    assert events.event_ids("offer.submitted") == ["evt_1"]
    assert events.notified == [(TOPIC, "evt_1", "offer.submitted")]


def test_without_a_topic_the_event_goes_to_the_bus_only() -> None:
    events = FakeAuctionEvents()
    auction_outcome(submitted_event(), events, None)
    assert events.event_ids() == ["evt_1"] and events.notified == []


def test_a_failed_sns_publish_is_retried_and_the_repeat_carries_the_same_event_id() -> None:
    events = FakeAuctionEvents(sns_fail_with=PARTNER_DOWN["aws"])
    assert failure("auction", lambda: auction_outcome(submitted_event(), events, TOPIC)) == RetryLater(
        policy_for("auction")
    )
    events.sns_fail_with = None
    auction_outcome(submitted_event(), events, TOPIC)
    # EventBridge does not deduplicate: two puts, one event id, which consumers drop repeats by.
    assert events.event_ids() == ["evt_1", "evt_1"]
    assert events.notified == [(TOPIC, "evt_1", "offer.submitted")]


def test_a_permanent_aws_error_dead_letters_the_auction_stage() -> None:
    events = FakeAuctionEvents(fail_with=PermanentError("aws", "AccessDeniedException", "denied", 403))
    assert failure("auction", lambda: auction_outcome(submitted_event(), events, TOPIC)) == DeadLetter()


# --- compensation ---------------------------------------------------------------------------------


def release(payments: FakePayments, dispatches: list[Dispatch], payment_intent_id: str) -> list[str]:
    """Run the release-hold dispatches as the follow-up task would, through the fake."""
    return [
        payments.release_hold(offer_id=d.kwargs["offer_id"], payment_intent_id=payment_intent_id)
        for d in dispatches
        if d.task == RELEASE_HOLD_TASK
    ]


def test_a_risk_block_after_a_card_hold_releases_the_hold() -> None:
    payments = FakePayments()
    placed = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(placed, Advance) and placed.payment_intent_id
    blocked = risk_outcome(card_offer(), FakeRiskScoring(scores={"usr_1": 0.99}), FakeBankFunds(), **THRESHOLDS)
    assert isinstance(blocked, Reject)
    # The rejected offer's hold is recorded as held: ending it publishes and releases.
    dispatches = decisions.on_end("off_1", "evt_rejected", "held")
    assert release(payments, dispatches, placed.payment_intent_id) == ["canceled"]
    assert [h.status for h in payments.holds_for("off_1")] == ["canceled"]


def test_a_hold_placed_while_the_offer_was_cancelled_is_released() -> None:
    payments = FakePayments()
    # The payment stage loaded the offer as validated; a cancel committed while Stripe answered.
    placed = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(placed, Advance)
    # Its transition finds the offer cancelled; the hold it placed is recorded and then released.
    dispatches = decisions.on_lost_race("off_1", states.CANCELLED, "held")
    assert release(payments, dispatches, placed.payment_intent_id) == ["canceled"]
    assert [h.status for h in payments.holds_for("off_1")] == ["canceled"]


def test_a_bank_offer_rejected_by_risk_has_no_hold_to_release() -> None:
    dispatches = decisions.on_end("off_1", "evt_rejected", "none")
    assert [d.task for d in dispatches] == ["offers.publish_event"]


def test_releasing_twice_is_one_release() -> None:
    payments = FakePayments()
    placed = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(placed, Advance) and placed.payment_intent_id
    dispatches = decisions.on_end("off_1", "evt", "held")
    assert release(payments, dispatches, placed.payment_intent_id) == ["canceled"]
    assert release(payments, dispatches, placed.payment_intent_id) == ["canceled"]
    assert len(payments.holds_for("off_1")) == 1


def test_releasing_a_captured_hold_dead_letters_the_compensation() -> None:
    payments = FakePayments()
    placed = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(placed, Advance) and placed.payment_intent_id
    payments.capture(placed.payment_intent_id)
    pi = placed.payment_intent_id
    call = lambda: payments.release_hold(offer_id="off_1", payment_intent_id=pi)  # noqa: E731
    assert failure("compensation", call) == DeadLetter()


def test_stripe_down_during_a_release_is_retried() -> None:
    payments = FakePayments()
    placed = payment_outcome(card_offer(), payments, FakeBankFunds())
    assert isinstance(placed, Advance) and placed.payment_intent_id
    pi = placed.payment_intent_id
    payments.fail_next(PARTNER_DOWN["stripe"], method="release_hold")
    call = lambda: payments.release_hold(offer_id="off_1", payment_intent_id=pi)  # noqa: E731
    assert failure("compensation", call) == RetryLater(policy_for("compensation"))
    assert call() == "canceled"


# --- one offer through every stage's decisions ----------------------------------------------------


@pytest.mark.parametrize("offer", [card_offer(), bank_offer()], ids=["card", "bank"])
def test_a_good_offer_advances_through_every_stage_to_submitted(offer) -> None:
    found = ListingPolicy(
        listing=Listing(listing_id="lst_1", maker_id="mkr_1", asking_price_cents=20000, currency="USD"),
        maker=MakerPolicy(maker_id="mkr_1", auto_reject_below_pct=Decimal(50)),
    )
    payments, risk, funds, events = FakePayments(), FakeRiskScoring(), FakeBankFunds(), FakeAuctionEvents()
    state, trail = states.RECEIVED, [states.RECEIVED]
    work = {
        "validation": lambda: decisions.decide_validation(offer, found),
        "payment": lambda: payment_outcome(offer, payments, funds),
        "risk": lambda: risk_outcome(offer, risk, funds, **THRESHOLDS),
        "auction": lambda: auction_outcome(submitted_event(), events, TOPIC),
        "audit": lambda: decisions.decide_audit(trail),
    }
    while (stage := states.next_stage(state)) is not None:
        assert decisions.on_arrival(stage, state) is decisions.Arrival.WORK
        assert isinstance(outcome(work[stage.name]), Advance), stage.name
        state = stage.to_state
        trail.append(state)
    assert state == states.SUBMITTED
    assert len(payments.holds_for("off_1")) == (1 if offer.payment.method == "card" else 0)
    assert events.event_ids("offer.submitted") == ["evt_1"]
