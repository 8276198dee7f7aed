"""Sample offers covering every path of the saga, each with the outcome it is built for.

Used by ``offers-workers demo`` and the integration tests. They rely on the listings of
``config/policy/sample.yaml`` and the sandbox's deterministic behaviours (docs/development.md, "Sandbox").
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from offers_workers.domain import states


@dataclass(frozen=True)
class Scenario:
    name: str
    weight: int
    #: The offer's final state, or None when the message must end as an intake rejection only.
    state: str | None
    reason: str | None
    #: Stripe PaymentIntent the offer must end with: "requires_capture", "canceled" or None (no hold).
    hold: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    #: How the message is sent: once, twice the same, or a second time with another body.
    sends: str = "once"
    #: Reason of the intake-rejection row the scenario must leave, if any.
    intake_rejection: str | None = None


CARD = {"method": "card", "payment_method_id": "pm_card_visa"}


def bank(token: str) -> dict[str, str]:
    return {"method": "bank_account", "plaid_access_token": token, "plaid_account_id": "acc_checking_1"}


R, S = states.REJECTED, states.SUBMITTED
SCENARIOS = [
    Scenario("card accepted", 36, S, None, hold="requires_capture"),
    Scenario("bank accepted", 14, S, None, changes={"payment": bank("access-sandbox-buyer")}),
    Scenario(
        "card declined",
        5,
        R,
        "payment_declined",
        changes={"payment": {**CARD, "payment_method_id": "pm_card_chargeDeclined"}},
    ),
    Scenario(
        "card insufficient funds",
        4,
        R,
        "insufficient_funds",
        changes={"payment": {**CARD, "payment_method_id": "pm_card_chargeDeclinedInsufficientFunds"}},
    ),
    Scenario("risky buyer", 5, R, "risk_blocked", hold="canceled", changes={"buyer_id": "risky_{n}"}),
    Scenario("bank low balance", 4, R, "insufficient_funds", changes={"payment": bank("access-sandbox-low-balance")}),
    Scenario("bank high return risk", 4, R, "risk_blocked", changes={"payment": bank("access-sandbox-high-risk")}),
    Scenario("below auto-reject threshold", 4, R, "below_auto_reject_threshold", changes={"amount_cents": 9000}),
    Scenario("below maker minimum", 2, R, "below_minimum", changes={"amount_cents": 500}),
    Scenario("unknown listing", 3, R, "listing_not_found", changes={"listing_id": "lst_missing"}),
    Scenario("listing sold", 2, R, "listing_unavailable", changes={"listing_id": "lst_3"}),
    Scenario("maker mismatch", 1, R, "maker_mismatch", changes={"listing_id": "lst_4"}),
    Scenario(
        "currency mismatch",
        1,
        R,
        "currency_mismatch",
        changes={"listing_id": "lst_5", "maker_id": "mkr_2", "amount_cents": 25000},
    ),
    Scenario(
        "bank not accepted",
        1,
        R,
        "bank_payments_not_accepted",
        changes={"listing_id": "lst_4", "maker_id": "mkr_2", "payment": bank("access-sandbox-buyer")},
    ),
    Scenario(
        "invalid payload",
        4,
        None,
        None,
        changes={"amount_cents": -5, "colour": "red"},
        intake_rejection="invalid_payload",
    ),
    Scenario("duplicate delivery", 3, S, None, hold="requires_capture", sends="twice"),
    Scenario(
        "duplicate conflict",
        2,
        S,
        None,
        hold="requires_capture",
        sends="conflict",
        intake_rejection="duplicate_conflict",
    ),
]


@dataclass(frozen=True)
class Sample:
    offer_id: str
    scenario: Scenario
    messages: list[dict[str, Any]]


def base_offer(offer_id: str, n: int) -> dict[str, Any]:
    return {
        "offer_id": offer_id,
        "listing_id": "lst_1",
        "maker_id": "mkr_1",
        "buyer_id": f"usr_{n}",
        "amount_cents": 15000,
        "currency": "USD",
        "payment": dict(CARD),
        "buyer_context": {"email": f"buyer{n}@example.com", "ip": "203.0.113.9", "session_id": f"s{n}"},
        "message": "Would you take this?",
        "submitted_at": "2026-11-28T12:00:00Z",
        "synthetic": False,
    }


def build(scenario: Scenario, offer_id: str, n: int) -> Sample:
    offer = base_offer(offer_id, n)
    for key, value in scenario.changes.items():
        offer[key] = value.format(n=n) if isinstance(value, str) else value
    messages = [offer]
    if scenario.sends == "twice":
        messages = [offer, dict(offer)]
    elif scenario.sends == "conflict":
        messages = [offer, {**offer, "amount_cents": offer["amount_cents"] + 100}]
    return Sample(offer_id, scenario, messages)


def make_samples(count: int, run_id: str, seed: int = 7) -> list[Sample]:
    """``count`` samples in a shuffled mix by weight; every scenario at least once if count allows."""
    schedule = [s for s in SCENARIOS for _ in range(s.weight)]
    rng = random.Random(seed)
    rng.shuffle(schedule)
    picked = list(SCENARIOS[:count]) + [schedule[i % len(schedule)] for i in range(max(0, count - len(SCENARIOS)))]
    rng.shuffle(picked)
    return [build(scenario, f"{run_id}-{n:05d}", n) for n, scenario in enumerate(picked)]
