"""``offers.submit`` on ``offers.intake``: what upstream services send."""

from __future__ import annotations

import random
from typing import Any

from offers_workers import tracing
from offers_workers.runtime import get_runtime
from offers_workers.saga import intake
from offers_workers.saga.decisions import Dispatch
from tasks import authority
from tasks.base import OffersTask, stage_task


@stage_task("offers.submit")
def submit(self: OffersTask, offer: Any = None, **unexpected: Any) -> list[Dispatch]:
    # Missing or extra kwargs are a bad message, recorded like any other, not a crash.
    result = intake.submit(
        get_runtime(), offer, task_id=self.request.id, unexpected=unexpected, sender=authority.sender_of(self)
    )
    tracing.annotate(id=result.offer_id, outcome=result.outcome)
    if result.outcome == "throttled":
        # Soft launch: over the fleet-wide rate the offer waits on the broker, never rejected; the
        # jitter spreads waiting offers over the next second instead of one stampede.
        # A fresh message, not a retry: waiting is not failing, and must not spend the retry budget.
        self.app.send_task(
            self.name, kwargs={"offer": offer, **unexpected}, countdown=result.wait_s + random.uniform(0, 1)
        )
        return []
    return result.dispatches


@stage_task("offers.record_unreadable")
def record_unreadable(self: OffersTask, queue: str, problem: str, detail: str, raw: str, raw_size: int) -> None:
    # Sent by the workers themselves (tasks/unreadable.py, tasks/redis_envelopes.py) for a message they could not read.
    intake.record_unreadable(
        get_runtime(), queue=queue, problem=problem, detail=detail, raw=raw, raw_size=raw_size, task_id=self.request.id
    )
