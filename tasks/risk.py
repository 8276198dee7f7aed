"""``offers.stage.score_risk`` on ``offers.risk``: Scores risk with Sift (and Plaid Signal for bank-funded offers)."""

from __future__ import annotations

from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.decisions import Dispatch
from tasks.base import OffersTask, stage_task


@stage_task("offers.stage.score_risk")
def score_risk(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.score_risk(get_runtime(), offer_id)
