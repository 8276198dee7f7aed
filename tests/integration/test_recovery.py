"""Recovery from the beat: lost work completed from Postgres alone, and holds released before
Stripe lets their authorization lapse."""

from __future__ import annotations

import time

import pytest

from offers_workers.domain import states
from offers_workers.domain.events import event_id
from offers_workers.local.samples import base_offer
from offers_workers.saga import cancellation, intake, recovery, stages
from tests.conftest import new_id, offer_rows, wait_until
from tests.drillkit import drill

pytestmark = pytest.mark.usefixtures("fleet")


def test_offers_whose_messages_were_lost_are_completed_by_the_sweep(runtime, offers_env, tmp_path) -> None:
    # Given offers recorded but whose next message never reached the broker (a crash between
    # commit and send): intake and stage functions called directly, their dispatches dropped
    lost_at_intake = base_offer(new_id("lost"), 1)
    assert intake.submit(runtime, lost_at_intake).dispatches  # dropped
    lost_mid_saga = base_offer(new_id("lost"), 2)
    intake.submit(runtime, lost_mid_saga)
    stages.validate(runtime, lost_mid_saga["offer_id"])
    assert stages.hold_payment(runtime, lost_mid_saga["offer_id"])  # dropped: risk never sent
    rejected = base_offer(new_id("lost"), 3) | {"buyer_id": "risky_lost"}
    intake.submit(runtime, rejected)
    stages.validate(runtime, rejected["offer_id"])
    stages.hold_payment(runtime, rejected["offer_id"])
    assert stages.score_risk(runtime, rejected["offer_id"])  # dropped: no event published, hold not released
    ids = [lost_at_intake["offer_id"], lost_mid_saga["offer_id"], rejected["offer_id"]]

    # When the beat and the workers run with a short sweep (a fleet of its own on this database: the
    # threshold is the workers' setting, never the beat's message)
    short = {"OFFERS_RECOVERY_INTERVAL_SECONDS": "1", "OFFERS_RECOVERY_AFTER_SECONDS": "1"}
    with drill("sweep", offers_env, tmp_path, **short) as d:
        fleet = d.fleet

        # Then the lost offers complete, and the rejected one has its event published and hold released
        def done() -> bool:
            with runtime.db.transaction() as conn:
                rows = {
                    r["offer_id"]: r
                    for r in conn.execute(
                        "SELECT offer_id, state, hold_status FROM offers WHERE offer_id = ANY(%s)", (ids,)
                    )
                }
                published = conn.execute(
                    "SELECT count(*) AS n FROM offer_events WHERE offer_id = %s AND published_at IS NOT NULL",
                    (rejected["offer_id"],),
                ).fetchone()["n"]
            return (
                rows[ids[0]]["state"] == states.SUBMITTED
                and rows[ids[1]]["state"] == states.SUBMITTED
                and rows[ids[2]]["hold_status"] == "released"
                and published == 1
            )

        wait_until(done, timeout=60, message=f"the sweep to complete the lost work (beat log in {tmp_path})")
        assert not fleet.dead(), "beat exited"
    holds = [h for h in runtime.stripe.list_holds() if h.offer_id in ids]
    assert sorted((h.offer_id, h.status) for h in holds) == sorted(
        [(ids[0], "requires_capture"), (ids[1], "requires_capture"), (ids[2], "canceled")]
    )


def test_holds_are_released_before_their_authorization_window_lapses(celery_app, runtime, offers_env, tmp_path) -> None:
    # Given card offers submitted, each holding its buyer's card
    offers = [base_offer(new_id("window"), n) for n in range(3)]
    for offer in offers:
        celery_app.send_task("offers.submit", kwargs={"offer": offer})
    ids = [o["offer_id"] for o in offers]

    def rows() -> dict[str, dict]:
        return offer_rows(runtime, ids)

    wait_until(
        lambda: all(r["state"] == states.SUBMITTED for r in rows().values()) and len(rows()) == 3, message="submitted"
    )
    intents = {r["payment_intent_id"] for r in rows().values()}
    assert {runtime.stripe.get_hold(pi).status for pi in intents} == {"requires_capture"}

    # When the beat and the workers run with an authorization window of two seconds (a fleet of its
    # own on this database: the window is the workers' setting, never the beat's message)
    window = {"OFFERS_HOLD_RELEASE_AFTER": "2", "OFFERS_HOLD_WATCH_INTERVAL_SECONDS": "1"}
    with drill("window", offers_env, tmp_path, **window):
        # Then each hold is cancelled at Stripe and recorded as released for that reason
        wait_until(
            lambda: {r["hold_status"] for r in rows().values()} == {"released"},
            message=f"holds released (logs in {tmp_path})",
        )
    assert {runtime.stripe.get_hold(pi).status for pi in intents} == {"canceled"}
    assert {r["state"] for r in rows().values()} == {states.SUBMITTED}
    with runtime.db.transaction() as conn:
        reasons = [
            r["reason"]
            for r in conn.execute(
                "SELECT reason FROM audit_events WHERE offer_id = ANY(%s) AND kind = 'hold_released'", (ids,)
            )
        ]
    assert reasons == ["authorization_window"] * 3


def test_the_sweep_leaves_offers_with_a_pending_retry_alone_and_resends_each_once_per_window(runtime) -> None:
    offer = base_offer(new_id("sweep"), 1)
    intake.submit(runtime, offer)  # its validation message dropped
    offer_id = offer["offer_id"]

    def swept() -> bool:
        return any(d.kwargs.get("offer_id") == offer_id for d in recovery.sweep(runtime, stuck_after_s=1))

    time.sleep(1.1)
    assert swept()
    # Re-sent once: the next sweeps within the window leave it to that message
    assert not swept()
    time.sleep(1.1)
    assert swept()
    # A stage retry due later keeps the sweep away until it is overdue
    with runtime.db.transaction() as conn:
        conn.execute(
            "UPDATE offers SET retry_due_at = clock_timestamp() + interval '30 seconds' WHERE offer_id = %s",
            (offer_id,),
        )
    time.sleep(1.1)
    assert not swept()


def test_the_sweep_publishes_a_lost_event_once_per_window(runtime) -> None:
    offer = base_offer(new_id("sweepevent"), 1)
    intake.submit(runtime, offer)
    cancellation.cancel(runtime, offer["offer_id"], "buyer_withdrew", "buyer")  # its event's message dropped

    def resent() -> bool:
        return any(
            d.task == stages.PUBLISH_EVENT_TASK
            and d.kwargs["event_id"] == event_id(offer["offer_id"], "offer.cancelled")
            for d in recovery.sweep(runtime, stuck_after_s=1)
        )

    time.sleep(1.1)
    assert resent()
    assert not resent()  # already re-sent in this window: not again on the next sweep
    time.sleep(1.1)
    assert resent()
