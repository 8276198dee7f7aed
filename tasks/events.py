"""``offers.publish_event`` on ``offers.events``: sends outbox events to EventBridge and SNS."""

from __future__ import annotations

from offers_workers.runtime import get_runtime
from offers_workers.saga import stages
from tasks.base import OffersTask, stage_task


@stage_task("offers.publish_event")
def publish_event(self: OffersTask, event_id: str) -> None:
    stages.publish_event(get_runtime(), event_id)
