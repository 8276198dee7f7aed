"""A payment dead letter replayed 25 hours later, when Stripe has forgotten the hold's idempotency key,
places no second hold: the replay finds the offer's PaymentIntent at Stripe and adopts it.

Real worker processes, real Postgres and Redis, the sandbox with an injected outage and its clock
moved forward.
"""

from __future__ import annotations

import pytest

from offers_workers.domain import states
from offers_workers.domain.payload import parse_offer
from offers_workers.local.samples import base_offer
from offers_workers.local.sandbox import advance_clock, clear_faults, set_fault
from offers_workers.saga.decisions import Advance
from offers_workers.saga.stages import payment_outcome
from offers_workers.store import dead_letters
from tests.conftest import cli, new_id, offer_rows, wait_until
from tests.outages import all_in

pytestmark = pytest.mark.usefixtures("fleet")

#: Later than Stripe keeps an idempotency key (24 h).
PAST_THE_KEY_S = 25 * 3600


def test_payment_dead_letter_replayed_25_hours_later_places_no_second_hold(celery_app, runtime, sandbox) -> None:
    offer = base_offer(new_id("second_hold"), 0)
    offer_id = offer["offer_id"]
    # Given the payment stage's first run placed the hold (its partner calls, as a worker makes
    # them) and its worker died before it committed
    first = payment_outcome(parse_offer(offer), runtime.stripe, runtime.plaid)
    assert isinstance(first, Advance) and first.payment_intent_id
    # and every run after it met a Stripe outage, until the stage was dead-lettered
    set_fault(sandbox, "stripe", status=503, rate=1.0)
    try:
        celery_app.send_task("offers.submit", kwargs={"offer": offer})
        wait_until(
            lambda: all_in(runtime, [offer_id], states.DEAD_LETTERED), timeout=90, message="a payment dead letter"
        )
    finally:
        clear_faults(sandbox, "stripe")
    with runtime.db.read() as conn:
        [entry] = [e for e in dead_letters.entries(conn, stage="payment") if e.offer_id == offer_id]
    assert entry.error_type == "TransientError"

    # When the operator replays the payment queue 25 hours later: Stripe has forgotten the key
    advance_clock(sandbox, PAST_THE_KEY_S)
    replayed = cli("dlq", "replay", "--all", "--stage", "payment")
    assert replayed.returncode == 0 and "replayed" in replayed.stdout, replayed.stderr

    # Then the offer is submitted, holding the PaymentIntent its first run placed: the only one at Stripe
    wait_until(lambda: all_in(runtime, [offer_id], states.SUBMITTED), timeout=60, message="the replayed offer")
    holds = [(h.payment_intent_id, h.status) for h in runtime.stripe.list_holds() if h.offer_id == offer_id]
    assert holds == [(first.payment_intent_id, "requires_capture")]
    assert offer_rows(runtime, [offer_id])[offer_id]["payment_intent_id"] == first.payment_intent_id
