"""``offers.stage.complete`` on ``offers.audit``: Checks the offer's audit trail and marks it submitted."""

from __future__ import annotations

from offers_workers.domain import states
from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.stages import Dispatch
from tasks.app import app
from tasks.base import OffersTask


@app.task(name="offers.stage.complete", base=OffersTask, bind=True, stage="audit", from_state=states.AUCTION_TRIGGERED)
def complete(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.complete(get_runtime(), offer_id)
