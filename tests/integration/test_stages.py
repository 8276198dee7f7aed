"""The stage functions called directly (no broker): real Postgres, real SDKs against the sandbox.

Nothing here sends a message, so the running workers never see these offers.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest

from offers_workers.domain import states
from offers_workers.domain.errors import TransientError
from offers_workers.local.samples import base_offer
from offers_workers.local.sandbox import clear_faults, get_faults, set_fault
from offers_workers.saga import deadletter, intake, stages
from offers_workers.store import audit_trail, offers
from tests.conftest import cli, new_id


def received(runtime, **changes) -> str:
    offer = base_offer(new_id("stage"), 5) | changes
    result = intake.submit(runtime, offer)
    assert result.outcome == "accepted"
    assert [d.task for d in result.dispatches] == ["offers.stage.validate"]
    return offer["offer_id"]


def state_of(runtime, offer_id: str) -> dict:
    with runtime.db.transaction() as conn:
        return conn.execute("SELECT * FROM offers WHERE offer_id = %s", (offer_id,)).fetchone()


def test_each_stage_hands_on_to_the_next_and_a_rerun_changes_nothing(runtime) -> None:
    offer_id = received(runtime)
    chain = [
        (stages.validate, states.VALIDATED, "offers.stage.hold_payment"),
        (stages.hold_payment, states.PAYMENT_HELD, "offers.stage.score_risk"),
        (stages.score_risk, states.RISK_CLEARED, "offers.stage.trigger_auction"),
        (stages.trigger_auction, states.AUCTION_TRIGGERED, "offers.stage.complete"),
    ]
    for stage, state, next_task in chain:
        first = stage(runtime, offer_id)
        assert [d.task for d in first] == [next_task]
        assert state_of(runtime, offer_id)["state"] == state
        # A redelivery of the same stage only hands on again: the state does not move twice.
        assert [d.task for d in stage(runtime, offer_id)] == [next_task]
        assert state_of(runtime, offer_id)["state"] == state
    assert stages.complete(runtime, offer_id) == []
    row = state_of(runtime, offer_id)
    assert row["state"] == states.SUBMITTED and row["hold_status"] == "held"
    # An earlier stage delivered late finds the offer far along and does nothing at all.
    assert stages.validate(runtime, offer_id) == []
    with runtime.db.transaction() as conn:
        trail = audit_trail.offer_states(conn, offer_id)
    assert trail == list(states.HAPPY_PATH)


def test_a_hold_placed_twice_is_one_payment_intent(runtime) -> None:
    offer_id = received(runtime)
    stages.validate(runtime, offer_id)
    # Two deliveries that both loaded the offer before either committed: simulate by calling the
    # partner through the stage twice with the offer moved back in between.
    stages.hold_payment(runtime, offer_id)
    first_pi = state_of(runtime, offer_id)["payment_intent_id"]
    with runtime.db.transaction() as conn:
        conn.execute("UPDATE offers SET state = 'validated' WHERE offer_id = %s", (offer_id,))
    stages.hold_payment(runtime, offer_id)
    assert state_of(runtime, offer_id)["payment_intent_id"] == first_pi
    holds = [h for h in runtime.stripe.list_holds() if h.offer_id == offer_id]
    assert [h.payment_intent_id for h in holds] == [first_pi]


def test_the_first_payment_start_asks_stripe_once_and_a_later_one_looks_its_hold_up(runtime, sandbox) -> None:
    offer_id = received(runtime)
    stages.validate(runtime, offer_id)
    # The first start of all: no hold of the offer can exist, so no search, only the create.
    set_fault(sandbox, "stripe", status=None)  # restarts the sandbox's request count
    try:
        stages.hold_payment(runtime, offer_id)
        assert get_faults(sandbox, "stripe")["stripe"]["requests"] == 1
        first_pi = state_of(runtime, offer_id)["payment_intent_id"]
        # A later start (its run died after Stripe answered, say): the search finds the live hold,
        # which is read again and adopted; no create, so no second hold even without the key.
        with runtime.db.transaction() as conn:
            conn.execute("UPDATE offers SET state = 'validated' WHERE offer_id = %s", (offer_id,))
        set_fault(sandbox, "stripe", status=None)
        stages.hold_payment(runtime, offer_id)
        assert get_faults(sandbox, "stripe")["stripe"]["requests"] == 2
    finally:
        clear_faults(sandbox, "stripe")
    row = state_of(runtime, offer_id)
    assert row["payment_attempts"] == 2 and row["payment_intent_id"] == first_pi
    assert [h.payment_intent_id for h in runtime.stripe.list_holds() if h.offer_id == offer_id] == [first_pi]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"payment": {"method": "card", "payment_method_id": "pm_card_chargeDeclined"}}, "payment_declined"),
        (
            {"payment": {"method": "card", "payment_method_id": "pm_card_chargeDeclinedInsufficientFunds"}},
            "insufficient_funds",
        ),
        (
            {
                "payment": {
                    "method": "bank_account",
                    "plaid_access_token": "access-sandbox-low-balance",
                    "plaid_account_id": "acc_1",
                }
            },
            "insufficient_funds",
        ),
    ],
)
def test_a_failed_payment_is_a_business_rejection(runtime, changes, reason) -> None:
    offer_id = received(runtime, **changes)
    stages.validate(runtime, offer_id)
    dispatches = stages.hold_payment(runtime, offer_id)
    row = state_of(runtime, offer_id)
    assert (row["state"], row["reason"], row["hold_status"]) == (states.REJECTED, reason, "none")
    # The rejection event waits in the outbox; no hold to release.
    assert [d.task for d in dispatches] == [stages.PUBLISH_EVENT_TASK]


def test_a_risk_block_releases_the_hold(runtime) -> None:
    offer_id = received(runtime, buyer_id="risky_buyer")
    stages.validate(runtime, offer_id)
    stages.hold_payment(runtime, offer_id)
    dispatches = stages.score_risk(runtime, offer_id)
    assert sorted(d.task for d in dispatches) == [stages.PUBLISH_EVENT_TASK, stages.RELEASE_HOLD_TASK]
    row = state_of(runtime, offer_id)
    assert (row["state"], row["reason"]) == (states.REJECTED, "risk_blocked")
    assert row["risk_score"] >= runtime.settings.risk_block_threshold

    assert stages.release_hold(runtime, offer_id) == "canceled"
    assert runtime.stripe.get_hold(row["payment_intent_id"]).status == "canceled"
    assert state_of(runtime, offer_id)["hold_status"] == "released"
    # Releasing again is a no-op: there is no hold left.
    assert stages.release_hold(runtime, offer_id) is None


def test_a_resent_body_is_a_duplicate_and_another_body_a_conflict(runtime) -> None:
    offer = base_offer(new_id("conflict"), 9)
    assert intake.submit(runtime, offer).outcome == "accepted"
    again = intake.submit(runtime, dict(offer))
    assert again.outcome == "duplicate"
    # Still `received`: the duplicate hands the offer on (its first run may have died before sending).
    assert [d.task for d in again.dispatches] == ["offers.stage.validate"]
    conflict = intake.submit(runtime, offer | {"amount_cents": 99999})
    assert conflict.outcome == "duplicate_conflict"
    row = state_of(runtime, offer["offer_id"])
    assert row["amount_cents"] == offer["amount_cents"] and row["state"] == states.RECEIVED
    with runtime.db.transaction() as conn:
        rejection = conn.execute("SELECT * FROM intake_rejections WHERE id = %s", (conflict.rejection_id,)).fetchone()
    assert rejection["reason"] == "duplicate_conflict" and rejection["offer_id"] == offer["offer_id"]
    assert '"amount_cents":99999' in rejection["raw_body"]


def test_a_guarded_transition_refuses_a_moved_offer(runtime) -> None:
    offer_id = received(runtime)
    with runtime.db.transaction() as conn:
        assert offers.transition(conn, offer_id, states.RECEIVED, states.VALIDATED, actor="test")
    with runtime.db.transaction() as conn:
        assert not offers.transition(conn, offer_id, states.RECEIVED, states.VALIDATED, actor="test")
        with pytest.raises(states.IllegalTransition):
            offers.transition(conn, offer_id, states.VALIDATED, states.SUBMITTED, actor="test")


def test_a_replayed_hold_keeps_the_moment_it_was_placed(runtime) -> None:
    # Given an offer holding its buyer's card, dead-lettered at the risk stage (Sift was down)
    offer_id = received(runtime)
    stages.validate(runtime, offer_id)
    stages.hold_payment(runtime, offer_id)
    placed = state_of(runtime, offer_id)
    entry_id = deadletter.record(
        runtime,
        stage="risk",
        task_name="offers.stage.score_risk",
        kwargs={"offer_id": offer_id},
        error=TransientError("sift", "503", "unavailable"),
        traceback_text="",
        attempts=17,
        from_state=states.PAYMENT_HELD,
    )
    assert state_of(runtime, offer_id)["state"] == states.DEAD_LETTERED
    time.sleep(0.05)

    # When an operator replays it, and the risk stage then clears it
    assert deadletter.claim_for_replay(runtime, entry_id) is not None
    assert state_of(runtime, offer_id)["state"] == states.PAYMENT_HELD
    stages.score_risk(runtime, offer_id)

    # Then the hold is still dated when it was placed: the hold watch and `holds list` count the
    # authorization window from then, not from the replay
    row = state_of(runtime, offer_id)
    assert row["state"] == states.RISK_CLEARED
    assert row["payment_held_at"] == placed["payment_held_at"]
    listed = cli("holds", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [hold] = [h for h in json.loads(listed.stdout) if h["offer_id"] == offer_id]
    due = datetime.fromisoformat(hold["release_due_at"])
    assert due == placed["payment_held_at"] + runtime.settings.hold_release_after


def test_validation_needs_only_one_pooled_connection(settings) -> None:
    from offers_workers.runtime import Runtime

    # Given a worker process whose pool holds one Postgres connection (OFFERS_DB_POOL_SIZE=1), and
    # an offer whose listing is not in the policy cache
    rt = Runtime(settings.model_copy(update={"db_pool_size": 1}), db_wait_s=3)
    try:
        offer_id = received(rt)
        rt.policies.forget(state_of(rt, offer_id)["listing_id"])
        # When its validation runs
        started = time.monotonic()
        dispatches = stages.validate(rt, offer_id)
        # Then it validates at once, without waiting for a second connection that never comes
        assert [d.task for d in dispatches] == ["offers.stage.hold_payment"]
        assert state_of(rt, offer_id)["state"] == states.VALIDATED
        assert time.monotonic() - started < 2
    finally:
        rt.close()
