"""Every stage's decisions at the function level: arrival, each reject, advance, the trail check,
what an ended offer dispatches and the compensation when a stage loses a race."""

from __future__ import annotations

from decimal import Decimal

import pytest

from offers_workers.domain import states
from offers_workers.domain.errors import OfferRejected, PermanentError
from offers_workers.domain.payload import parse_offer
from offers_workers.domain.policy import Listing, ListingPolicy, MakerPolicy
from offers_workers.local.samples import bank, base_offer
from offers_workers.saga import decisions
from offers_workers.saga.decisions import (
    PUBLISH_EVENT_TASK,
    RELEASE_HOLD_TASK,
    Advance,
    Arrival,
    Dispatch,
    Reject,
)
from tests.unit.conftest import submitted_event

MAKER = MakerPolicy(maker_id="mkr_1", min_offer_cents=1000, auto_reject_below_pct=Decimal("50"))
LISTING = Listing(listing_id="lst_1", maker_id="mkr_1", asking_price_cents=20000, currency="USD")
FOUND = ListingPolicy(listing=LISTING, maker=MAKER)
HOLD_STATUSES = ("none", "held", "released")


def offer(**changes: object):
    return parse_offer(base_offer("off_1", 1) | changes)


# --- arrival ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", states.STAGES, ids=lambda s: s.name)
@pytest.mark.parametrize("state", states.ALL_STATES)
def test_a_stage_works_only_on_its_from_state_and_hands_on_from_its_to_state(stage, state) -> None:
    arrival = decisions.on_arrival(stage, state)
    if state == stage.from_state:
        assert arrival is Arrival.WORK
    elif state == stage.to_state:
        assert arrival is Arrival.HAND_ON
    else:
        assert arrival is Arrival.NOTHING


@pytest.mark.parametrize("stage", states.STAGES, ids=lambda s: s.name)
def test_a_missing_offer_is_left_alone(stage) -> None:
    assert decisions.on_arrival(stage, None) is Arrival.NOTHING


@pytest.mark.parametrize("stage", states.STAGES, ids=lambda s: s.name)
@pytest.mark.parametrize("ended", sorted(states.TERMINAL))
def test_an_ended_offer_is_never_worked_on(stage, ended) -> None:
    assert decisions.on_arrival(stage, ended) is Arrival.NOTHING


@pytest.mark.parametrize("state", states.ALL_STATES)
def test_hand_on_sends_the_stage_of_the_state(state) -> None:
    stage = states.next_stage(state)
    expected = [Dispatch(stage.task, {"offer_id": "off_1"})] if stage else []
    assert decisions.hand_on("off_1", state) == expected


@pytest.mark.parametrize("state", [states.SUBMITTED, *sorted(states.TERMINAL), states.DEAD_LETTERED])
def test_nothing_is_handed_on_once_the_saga_is_done_or_waiting(state) -> None:
    assert decisions.hand_on("off_1", state) == []


# --- business refusals from partners ------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "detail", "data"),
    [
        ("payment_declined", "do_not_honor", {"detail": "do_not_honor"}),
        ("insufficient_funds", "insufficient_funds", {"detail": "insufficient_funds"}),
        ("payment_declined", "", {}),
    ],
)
def test_a_partner_refusal_rejects_with_its_reason(reason, detail, data) -> None:
    assert decisions.rejected(OfferRejected(reason, detail)) == Reject(reason, data=data)


# --- validation -----------------------------------------------------------------------------------


def test_a_good_offer_passes_validation() -> None:
    assert decisions.decide_validation(offer(), FOUND) == Advance()


@pytest.mark.parametrize(
    ("found", "changes", "reason"),
    [
        (None, {}, "listing_not_found"),
        (
            ListingPolicy(listing=LISTING.model_copy(update={"status": "paused"}), maker=MAKER),
            {},
            "listing_unavailable",
        ),
        (ListingPolicy(listing=LISTING.model_copy(update={"status": "sold"}), maker=MAKER), {}, "listing_unavailable"),
        (FOUND, {"maker_id": "mkr_other"}, "maker_mismatch"),
        (FOUND, {"currency": "EUR"}, "currency_mismatch"),
        (FOUND, {"amount_cents": 999}, "below_minimum"),
        (FOUND, {"amount_cents": 9999}, "below_auto_reject_threshold"),
        (
            ListingPolicy(listing=LISTING, maker=MAKER.model_copy(update={"accepts_bank_payments": False})),
            {"payment": bank("access-sandbox-buyer")},
            "bank_payments_not_accepted",
        ),
    ],
)
def test_each_validation_reason_rejects_with_every_problem_listed(found, changes, reason) -> None:
    outcome = decisions.decide_validation(offer(**changes), found)
    assert isinstance(outcome, Reject)
    assert outcome.reason == reason
    assert outcome.data["errors"][0]["code"] == reason
    assert outcome.reason in states.REJECTION_REASONS


def test_the_most_fundamental_problem_is_the_reason() -> None:
    outcome = decisions.decide_validation(offer(maker_id="mkr_other", currency="EUR"), FOUND)
    assert isinstance(outcome, Reject)
    assert outcome.reason == "maker_mismatch"
    assert [e["code"] for e in outcome.data["errors"]] == ["maker_mismatch", "currency_mismatch"]


@pytest.mark.parametrize("amount", [10000, 10001, 20000, 50000])
def test_amounts_at_or_above_the_threshold_advance(amount) -> None:
    assert decisions.decide_validation(offer(amount_cents=amount), FOUND) == Advance()


# --- payment --------------------------------------------------------------------------------------


def test_a_placed_hold_advances_and_is_recorded() -> None:
    outcome = decisions.card_held("pi_123")
    assert outcome == Advance(payment_intent_id="pi_123", data={"payment_intent_id": "pi_123"})


@pytest.mark.parametrize(
    ("available", "amount", "expected"),
    [
        (15000, 15000, Advance(data={"funds_verified": True})),
        (15001, 15000, Advance(data={"funds_verified": True})),
        (10**9, 1, Advance(data={"funds_verified": True})),
        (14999, 15000, Reject("insufficient_funds", data={"funds_verified": False})),
        (0, 1, Reject("insufficient_funds", data={"funds_verified": False})),
        (-500, 100, Reject("insufficient_funds", data={"funds_verified": False})),
    ],
)
def test_a_bank_balance_covers_the_amount_or_the_offer_is_rejected(available, amount, expected) -> None:
    assert decisions.funds_checked(available, amount) == expected


# --- risk -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "return_risk", "blocked"),
    [
        (0.0, None, False),
        (0.79, None, False),
        (0.8, None, True),
        (0.99, None, True),
        (0.1, 79, False),
        (0.1, 80, True),
        (0.1, 99, True),
        (0.8, 10, True),
        (0.79, 79, False),
        (1.0, 99, True),
    ],
)
def test_risk_blocks_at_or_above_either_threshold(score, return_risk, blocked) -> None:
    outcome = decisions.decide_risk(score, return_risk, risk_block_threshold=0.8, return_risk_block_threshold=80)
    scores = {"risk_score": score, "return_risk_score": return_risk}
    expected = Reject("risk_blocked", fields=scores, data=scores) if blocked else Advance(fields=scores, data=scores)
    assert outcome == expected


@pytest.mark.parametrize("threshold", [0.0, 0.5, 1.0])
def test_the_risk_threshold_is_the_deployments(threshold) -> None:
    outcome = decisions.decide_risk(0.5, None, risk_block_threshold=threshold, return_risk_block_threshold=99)
    assert isinstance(outcome, Reject) == (threshold <= 0.5)


# --- auction and audit ----------------------------------------------------------------------------


def test_the_published_submitted_event_is_kept_and_named_with_its_delivery_ids() -> None:
    detail = submitted_event()
    outcome = decisions.auction_triggered(detail, bus_event_id="bus_1", sns_message_id="msg_1")
    assert outcome.published == (detail, "offer.submitted")
    assert (outcome.bus_event_id, outcome.sns_message_id) == ("bus_1", "msg_1")
    # the audit row keeps them too: a notification a subscriber missed is looked up by its MessageId
    assert outcome.data == {"event_id": "evt_1", "bus_event_id": "bus_1", "sns_message_id": "msg_1"}
    assert outcome.payment_intent_id is None


def test_a_complete_trail_is_submitted() -> None:
    assert decisions.decide_audit(list(states.HAPPY_PATH[:-1])) == Advance()


def test_a_replayed_trail_passing_states_twice_is_complete() -> None:
    trail = [states.RECEIVED, states.VALIDATED, states.PAYMENT_HELD, states.DEAD_LETTERED]
    trail += [states.PAYMENT_HELD, states.RISK_CLEARED, states.AUCTION_TRIGGERED]
    assert decisions.decide_audit(trail) == Advance()


@pytest.mark.parametrize("missing", states.HAPPY_PATH[:-1])
def test_a_trail_missing_a_step_is_dead_lettered(missing) -> None:
    trail = [s for s in states.HAPPY_PATH[:-1] if s != missing]
    with pytest.raises(PermanentError) as raised:
        decisions.decide_audit(trail)
    assert (raised.value.partner, raised.value.code) == ("audit", "incomplete_trail")


def test_a_trail_out_of_order_is_dead_lettered() -> None:
    trail = [states.RECEIVED, states.PAYMENT_HELD, states.VALIDATED, states.RISK_CLEARED, states.AUCTION_TRIGGERED]
    with pytest.raises(PermanentError):
        decisions.decide_audit(trail)


def test_an_empty_trail_is_dead_lettered() -> None:
    with pytest.raises(PermanentError):
        decisions.decide_audit([])


# --- after the end, and compensation --------------------------------------------------------------


@pytest.mark.parametrize("hold_status", HOLD_STATUSES)
def test_an_ended_offer_publishes_its_event_and_releases_only_a_held_hold(hold_status) -> None:
    dispatches = decisions.on_end("off_1", "evt_1", hold_status)
    assert dispatches[0] == Dispatch(PUBLISH_EVENT_TASK, {"event_id": "evt_1"})
    release = Dispatch(RELEASE_HOLD_TASK, {"offer_id": "off_1"})
    assert dispatches[1:] == ([release] if hold_status == "held" else [])


@pytest.mark.parametrize("state", [*states.ALL_STATES, None])
@pytest.mark.parametrize("hold_status", HOLD_STATUSES)
def test_a_stage_that_lost_the_race_releases_a_hold_only_of_an_ended_offer(state, hold_status) -> None:
    dispatches = decisions.on_lost_race("off_1", state, hold_status)
    if state in states.TERMINAL and hold_status == "held":
        assert dispatches == [Dispatch(RELEASE_HOLD_TASK, {"offer_id": "off_1"})]
    else:
        assert dispatches == []


def test_a_hold_placed_after_a_cancel_is_released() -> None:
    # The payment stage placed its hold while a cancel committed: the hold is recorded on the
    # cancelled offer, the stage's transition finds the offer moved, and compensation releases it.
    assert decisions.on_lost_race("off_1", states.CANCELLED, "held") == [
        Dispatch(RELEASE_HOLD_TASK, {"offer_id": "off_1"})
    ]


def test_a_duplicate_delivery_that_lost_the_race_changes_nothing() -> None:
    assert decisions.on_lost_race("off_1", states.PAYMENT_HELD, "held") == []
