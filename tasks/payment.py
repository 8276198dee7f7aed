"""``offers.stage.hold_payment`` on ``offers.payment``: Places the payment hold (Stripe) or verifies bank funds (Plaid)."""

from __future__ import annotations

from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.decisions import Dispatch
from tasks.base import OffersTask, stage_task


@stage_task("offers.stage.hold_payment")
def hold_payment(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.hold_payment(get_runtime(), offer_id)


@stage_task("offers.release_hold")
def release_hold(self: OffersTask, offer_id: str, reason: str = "offer_ended") -> None:
    stages.release_hold(get_runtime(), offer_id, why=reason)
