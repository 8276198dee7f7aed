"""``offers.stage.complete`` on ``offers.audit``: Checks the offer's audit trail and marks it submitted."""

from __future__ import annotations

from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.decisions import Dispatch
from tasks.base import OffersTask, stage_task


@stage_task("offers.stage.complete")
def complete(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.complete(get_runtime(), offer_id)
