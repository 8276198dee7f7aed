"""``offers.stage.validate`` on ``offers.validation``: Checks the offer against its listing and the maker's policy."""

from __future__ import annotations

from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.decisions import Dispatch
from tasks.base import OffersTask, stage_task


@stage_task("offers.stage.validate")
def validate(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.validate(get_runtime(), offer_id)
