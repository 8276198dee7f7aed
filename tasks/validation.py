"""``offers.stage.validate`` on ``offers.validation``: Checks the offer against its listing and the maker's policy."""

from __future__ import annotations

from offers_workers.domain import states
from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from offers_workers.saga.stages import Dispatch
from tasks.app import app
from tasks.base import OffersTask


@app.task(name="offers.stage.validate", base=OffersTask, bind=True, stage="validation", from_state=states.RECEIVED)
def validate(self: OffersTask, offer_id: str) -> list[Dispatch]:
    return stages.validate(get_runtime(), offer_id)
