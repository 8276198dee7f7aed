"""Every task that runs within a stage, declared once: its name, its stage, its queue, the state it
takes an offer from, and how patiently its stage retries.

A stage names a dead-letter queue (``dlq --stage``) and a retry policy. The saga's own stages come
from the state machine (``states.STAGES``: their task, queue and states); the rest of ``tasks/`` is
declared here. From this table ``tasks/`` registers each task (``tasks.base.stage_task``),
``config.retry`` builds its policies and ``saga.deadletter`` its list of queues; task names and
queues are the contract upstreams send to, and ``config.celery.ROUTES`` must agree
(tests/unit/test_stage_declaration.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from offers_workers.domain import states

#: How patiently a stage retries a transient failure (the numbers: ``config.retry``): ``brief`` for
#: our own work, ``partner`` to ride out a partner's trouble, ``periodic`` for a job whose next run
#: picks up what this one left.
RetryKind = Literal["brief", "partner", "periodic"]


@dataclass(frozen=True)
class StageTask:
    """A task of a stage: what it is registered, routed, retried and dead-lettered as."""

    #: The task name senders use.
    name: str
    #: Its dead-letter queue and retry policy.
    stage: str
    queue: str
    #: The state a dead letter moves the offer out of (the saga's stages only).
    from_state: states.State | None = None


#: Every stage, in the order ``dlq`` lists them (the saga's first), with how patiently it retries.
STAGE_RETRY: dict[str, RetryKind] = {
    "validation": "brief",
    "payment": "partner",
    "risk": "partner",
    "auction": "partner",
    "audit": "brief",
    "intake": "brief",
    "cancellation": "brief",
    "events": "partner",
    "compensation": "partner",
    "maintenance": "periodic",
}


def _periodic(name: str) -> StageTask:
    return StageTask(name, "maintenance", "offers.maintenance")


STAGE_TASKS: tuple[StageTask, ...] = (
    *(StageTask(s.task, s.name, s.queue, s.from_state) for s in states.STAGES),
    StageTask("offers.submit", "intake", "offers.intake"),
    StageTask("offers.record_unreadable", "intake", "offers.intake"),
    StageTask("offers.cancel", "cancellation", "offers.intake"),
    StageTask("offers.publish_event", "events", "offers.events"),
    StageTask("offers.release_hold", "compensation", "offers.payment"),
    _periodic("offers.recover"),
    _periodic("offers.release_expiring_holds"),
    _periodic("offers.expire_offers"),
    _periodic("offers.trim_draft_validations"),
    _periodic("offers.reconcile_holds"),
    _periodic("offers.seal_audit"),
    _periodic("offers.anchor_audit"),
    _periodic("offers.verify_audit"),
    _periodic("offers.export_audit"),
)
BY_NAME: dict[str, StageTask] = {t.name: t for t in STAGE_TASKS}
#: Every stage's name: the dead-letter queues.
STAGES: tuple[str, ...] = tuple(STAGE_RETRY)
