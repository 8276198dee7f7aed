"""``offers.stage.score_risk`` on ``offers.risk``: Scores risk with Sift (and Plaid Signal for bank-funded offers)."""

from __future__ import annotations

from offers_workers.domain import states
from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.stages import Dispatch
from tasks.app import app
from tasks.base import OffersTask


@app.task(name="offers.stage.score_risk", base=OffersTask, bind=True, stage="risk", from_state=states.PAYMENT_HELD)
def score_risk(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.score_risk(get_runtime(), offer_id)
