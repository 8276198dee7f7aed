"""``offers.stage.hold_payment`` on ``offers.payment``: Places the payment hold (Stripe) or verifies bank funds (Plaid)."""

from __future__ import annotations

from offers_workers.domain import states
from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.stages import Dispatch
from tasks.app import app
from tasks.base import OffersTask


@app.task(name="offers.stage.hold_payment", base=OffersTask, bind=True, stage="payment", from_state=states.VALIDATED)
def hold_payment(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.hold_payment(get_runtime(), offer_id)


@app.task(name="offers.release_hold", base=OffersTask, bind=True, stage="compensation")
def release_hold(self: OffersTask, offer_id: str, reason: str = "offer_ended") -> None:
    stages.release_hold(get_runtime(), offer_id, why=reason)
