"""``offers.cancel`` on ``offers.intake``: buyers withdraw, makers reject, ops step in."""

from __future__ import annotations

from typing import Any

from offers_workers import tracing
from offers_workers.runtime import get_runtime
from offers_workers.saga import cancellation
from offers_workers.saga.decisions import Dispatch
from tasks import authority
from tasks.base import OffersTask, stage_task


@stage_task("offers.cancel")
def cancel(
    self: OffersTask, offer_id: Any = None, reason: Any = None, actor: Any = None, **unexpected: Any
) -> list[Dispatch]:
    # Bad arguments are recorded and refused, never a crash.
    result = cancellation.request_cancel(
        get_runtime(),
        offer_id,
        reason,
        actor,
        task_id=self.request.id,
        unexpected=unexpected,
        sender=authority.sender_of(self),
    )
    # The reason only once checked: a refused cancel may carry anything.
    tracing.annotate(
        id=result.offer_id, outcome=result.outcome, reason=reason if result.outcome == "cancelled" else None
    )
    return result.dispatches
