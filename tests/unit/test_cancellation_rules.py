"""The cancellation rules: who may cancel, with which reasons, and what a cancel does in each state."""

from __future__ import annotations

import pytest

from offers_workers.domain import states
from offers_workers.saga import decisions

ACTORS = ("buyer", "maker", "ops")
REASONS = ("buyer_withdrew", "maker_rejected", "ops")


@pytest.mark.parametrize("actor", ACTORS)
@pytest.mark.parametrize("reason", REASONS)
def test_every_actor_may_cancel_with_every_request_reason(actor, reason) -> None:
    assert decisions.cancel_request_errors("off_1", reason, actor, {}) == []


def test_the_request_reasons_are_the_contracts_less_the_sla_jobs_own() -> None:
    assert frozenset(REASONS) == decisions.REQUEST_REASONS
    assert decisions.REQUEST_REASONS | {decisions.SLA_EXPIRED} == states.CANCELLATION_REASONS
    assert frozenset(ACTORS) == decisions.CANCEL_ACTORS


@pytest.mark.parametrize("actor", ACTORS)
def test_no_request_may_claim_the_sla_expiry(actor) -> None:
    errors = decisions.cancel_request_errors("off_1", decisions.SLA_EXPIRED, actor, {})
    assert [(e.field, e.code) for e in errors] == [("reason", "invalid")]


@pytest.mark.parametrize("actor", ["seller", "admin", "", None, 1, decisions.SLA_ACTOR, "Buyer"])
def test_an_unknown_actor_is_refused(actor) -> None:
    errors = decisions.cancel_request_errors("off_1", "ops", actor, {})
    assert [(e.field, e.code) for e in errors] == [("actor", "invalid")]
    assert errors[0].message == "one of buyer, maker, ops"


@pytest.mark.parametrize("reason", ["changed_mind", "", None, 3, ["ops"], "OPS"])
def test_an_unknown_reason_is_refused(reason) -> None:
    errors = decisions.cancel_request_errors("off_1", reason, "buyer", {})
    assert [(e.field, e.code) for e in errors] == [("reason", "invalid")]
    assert errors[0].message == "one of buyer_withdrew, maker_rejected, ops"


@pytest.mark.parametrize("offer_id", ["", "x" * 65, "off 1", "off/1", "off_1\n", None, 12, {"id": "off_1"}])
def test_a_malformed_offer_id_is_refused(offer_id) -> None:
    errors = decisions.cancel_request_errors(offer_id, "ops", "ops", {})
    assert [(e.field, e.code) for e in errors] == [("offer_id", "invalid")]


@pytest.mark.parametrize("offer_id", ["a", "x" * 64, "off_1-A9"])
def test_a_well_formed_offer_id_passes(offer_id) -> None:
    assert decisions.cancel_request_errors(offer_id, "ops", "ops", {}) == []


def test_unexpected_arguments_are_named_in_order_before_the_rest() -> None:
    errors = decisions.cancel_request_errors(None, None, None, {"zeta": 1, "alpha": 2})
    assert [(e.field, e.code) for e in errors] == [
        ("alpha", "unexpected_argument"),
        ("zeta", "unexpected_argument"),
        ("offer_id", "invalid"),
        ("reason", "invalid"),
        ("actor", "invalid"),
    ]


def test_a_refused_cancel_keeps_only_short_strings() -> None:
    assert decisions.kept_cancel_arguments("off_1", "x" * 65, 7) == decisions.KeptArguments("off_1", None, None)
    assert decisions.kept_cancel_arguments("x" * 64, "ops", "buyer") == decisions.KeptArguments(
        "x" * 64, "ops", "buyer"
    )


def test_a_cancel_before_the_offer_arrives_leaves_a_tombstone() -> None:
    assert decisions.decide_cancel(None) == "tombstone"


@pytest.mark.parametrize(
    ("state", "outcome"), [(states.CANCELLED, "already_cancelled"), (states.REJECTED, "already_rejected")]
)
def test_a_cancel_of_an_ended_offer_changes_nothing(state, outcome) -> None:
    assert decisions.decide_cancel(state) == outcome


@pytest.mark.parametrize("state", sorted(set(states.ALL_STATES) - states.TERMINAL))
def test_every_offer_not_ended_is_cancelled_and_the_state_machine_allows_it(state) -> None:
    assert decisions.decide_cancel(state) == "cancelled"
    assert states.can_transition(state, states.CANCELLED)


def test_a_submitted_offer_can_still_be_cancelled() -> None:
    assert decisions.decide_cancel(states.SUBMITTED) == "cancelled"


def test_a_dead_lettered_offer_can_be_cancelled() -> None:
    assert decisions.decide_cancel(states.DEAD_LETTERED) == "cancelled"


@pytest.mark.parametrize("hold_status", ["none", "held", "released"])
def test_a_repeated_cancel_releases_a_hold_still_held(hold_status) -> None:
    # A cancel of an offer already cancelled still compensates: a hold placed after the first
    # cancel (the payment stage racing it) is released by the next.
    dispatches = decisions.on_lost_race("off_1", states.CANCELLED, hold_status)
    assert [d.task for d in dispatches] == (["offers.release_hold"] if hold_status == "held" else [])


@pytest.mark.parametrize("bad", [["ops"], {"reason": "ops"}, {"ops"}])
def test_an_unhashable_reason_or_actor_is_refused_not_a_crash(bad) -> None:
    # The task promises bad arguments are recorded and refused, never a crash: a list from the
    # wire once raised TypeError in the set lookup (and the cancel went to the dead-letter queue).
    errors = decisions.cancel_request_errors("off_1", bad, bad, {})
    assert [(e.field, e.code) for e in errors] == [("reason", "invalid"), ("actor", "invalid")]
