"""The product funnel's events: what each carries (ids and amounts, never an email, IP or secret),
and synthetic offers left out."""

from __future__ import annotations

import json

import pytest

from offers_workers.domain.payload import parse_offer
from offers_workers.local.samples import base_offer
from offers_workers.saga import funnel
from offers_workers.saga.decisions import Advance, Reject

EMAIL, IP, SESSION = "buyer@example.com", "203.0.113.9", "sess-77"


def offer(synthetic: bool = False):
    raw = base_offer("off_funnel_1", 42)
    raw["buyer_context"] = {"email": EMAIL, "ip": IP, "session_id": SESSION}
    if synthetic:
        raw["synthetic"] = True
    return parse_offer(raw)


def every_event(synthetic: bool = False):
    o = offer(synthetic)
    return [
        funnel.draft_validated(o, valid=True, draft_id=7),
        funnel.submitted(o),
        funnel.after_stage("validation", o, Reject("below_minimum")),
        funnel.after_stage("auction", o, Advance()),
        funnel.cancelled(o, "buyer_withdrew"),
    ]


def test_each_step_names_its_event_and_carries_ids_and_amount_only() -> None:
    # Given an offer whose payload has the buyer's email, IP and session
    events = every_event()
    # Then each step is one event for the buyer, with ids, amount and currency
    assert [e.event for e in events] == [
        funnel.DRAFT_VALIDATED,
        funnel.SUBMITTED,
        funnel.REJECTED,
        funnel.AUCTION_TRIGGERED,
        funnel.CANCELLED,
    ]
    common = {
        "offer_id": "off_funnel_1",
        "listing_id": "lst_1",
        "maker_id": "mkr_1",
        "amount_cents": 15000,
        "currency": "USD",
    }
    assert all(e.user_id == "usr_42" for e in events)
    assert [e.properties for e in events] == [
        {**common, "valid": True},
        common,
        {**common, "reason": "below_minimum", "stage": "validation"},
        common,
        {**common, "reason": "buyer_withdrew"},
    ]
    # And none carries the email, the IP or the session, anywhere
    for e in events:
        text = json.dumps([e.event, e.user_id, e.properties, e.message_id])
        assert EMAIL not in text and IP not in text and SESSION not in text and "buyer_context" not in text


def test_message_ids_are_stable_per_offer_and_step() -> None:
    # A step sent twice (a redelivery after the send) is one event to Segment, which drops repeats by id
    assert [e.message_id for e in every_event()] == [e.message_id for e in every_event()]
    assert len({e.message_id for e in every_event()}) == 5


def test_synthetic_offers_are_left_out() -> None:
    assert every_event(synthetic=True) == [None] * 5


@pytest.mark.parametrize("stage", ["validation", "payment", "risk", "audit"])
def test_a_stage_that_advances_short_of_the_auction_is_no_funnel_step(stage: str) -> None:
    assert funnel.after_stage(stage, offer(), Advance()) is None
