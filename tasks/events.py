"""``offers.publish_event`` on ``offers.events``: sends outbox events to EventBridge and SNS."""

from __future__ import annotations

from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from tasks.app import app
from tasks.base import OffersTask


@app.task(name="offers.publish_event", base=OffersTask, bind=True, stage="events")
def publish_event(self: OffersTask, event_id: str) -> None:
    stages.publish_event(get_runtime(), event_id)
