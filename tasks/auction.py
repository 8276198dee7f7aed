"""``offers.stage.trigger_auction`` on ``offers.auction``: Triggers the auction: offer.submitted on EventBridge and SNS."""

from __future__ import annotations

from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.decisions import Dispatch
from tasks.base import OffersTask, stage_task


@stage_task("offers.stage.trigger_auction")
def trigger_auction(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.trigger_auction(get_runtime(), offer_id)
