"""``offers.stage.trigger_auction`` on ``offers.auction``: Triggers the auction: offer.submitted on EventBridge and SNS."""

from __future__ import annotations

from offers_workers.domain import states
from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.stages import Dispatch
from tasks.app import app
from tasks.base import OffersTask


@app.task(
    name="offers.stage.trigger_auction", base=OffersTask, bind=True, stage="auction", from_state=states.RISK_CLEARED
)
def trigger_auction(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.trigger_auction(get_runtime(), offer_id)
