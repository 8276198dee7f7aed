"""The worker consumer's steps the fleet replaces: Celery's own, each with one change.

``REPLACED_STEPS`` names each replaced step by where Celery defines it; the fleet's consumer
(``tasks/consumer.py``) runs Celery's default steps with these in their place.
tests/unit/test_celery_fences.py and tests/unit/test_worker_heartbeat.py fence every replacement
against a Celery release that moves or changes what it replaces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery.worker import heartbeat
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from celery.worker.consumer.heart import Heart

#: The consumer steps the fleet replaces: Celery's own, by where they are defined.
REPLACED_STEPS = {
    ":DelayedDelivery": "tasks.consumer_steps:DeclaringDelayedDelivery",
    ":Heart": "tasks.consumer_steps:BoundedHeart",
}


def fleet_steps(celery_steps: Iterable[str]) -> tuple[str, ...]:
    """Celery's consumer steps, in their order, with the fleet's replacements in their place."""
    return tuple(
        next((ours for theirs, ours in REPLACED_STEPS.items() if step.endswith(theirs)), step) for step in celery_steps
    )


class DeclaringDelayedDelivery(DelayedDelivery):
    """RabbitMQ's native delayed delivery, after declaring every queue of the fleet.

    Celery binds each of the app's queues to the delay exchanges, but a worker declares only the
    queues it consumes: started first on a fresh virtual host, ``worker_partners`` failed to bind
    ``offers.audit`` (NOT_FOUND), the channel went with it, and a retry countdown had no binding to
    come back through. Declaring is idempotent, and each queue's arguments are the fleet's own.
    """

    # Fenced by tests/unit/test_celery_fences.py::test_the_replaced_steps_start_as_the_fleet_expects.
    def start(self, c: Any) -> None:
        queues = [q for q in c.app.amqp.queues.values() if not q.no_declare]
        with c.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in queues:
                queue.bind(channel).declare()
        super().start(c)


#: A worker heartbeat's send: one reconnection, then it gives up (the event is kept for the next
#: connection). Celery's has no limit (kombu's retry without max_retries), run in the worker's
#: event loop: a worker cut off from its broker reconnected for its heartbeat until the link came
#: back, and did nothing else meanwhile (no time limit, no notice of its own lost connection).
HEARTBEAT_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 1, "interval_max": 1}


class HeartbeatSends:
    """The worker's event dispatcher as its heartbeat sees it: every send under HEARTBEAT_RETRY_POLICY."""

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)

    def send(self, type: str, retry: bool = False, **fields: Any) -> Any:
        return self._dispatcher.send(type, retry=retry, retry_policy=HEARTBEAT_RETRY_POLICY, **fields)


class BoundedHeart(Heart):
    """Celery's worker-heartbeat step, with sends that give up (HEARTBEAT_RETRY_POLICY)."""

    # Builds what Celery's own start builds, from what its step keeps: fenced by
    # tests/unit/test_celery_fences.py::test_the_replaced_steps_start_as_the_fleet_expects and
    # tests/unit/test_worker_heartbeat.py.
    def start(self, c: Any) -> None:
        c.heart = heartbeat.Heart(c.timer, HeartbeatSends(c.event_dispatcher), self.heartbeat_interval)
        c.heart.start()
