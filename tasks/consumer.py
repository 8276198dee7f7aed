"""The worker's consumer (``worker_consumer``): Celery's, with the fleet's steps, its refused
messages recorded (``tasks/unreadable.py``), and its task events sent by the event loop alone."""

from __future__ import annotations

import logging
import sys
from typing import Any

from celery.worker.consumer import Consumer

from tasks.consumer_steps import fleet_steps
from tasks.task_events import EVENTS_FLUSH_S
from tasks.unreadable import RecordingConsumer

log = logging.getLogger("offers_workers.wire")


class FleetConsumer(RecordingConsumer):
    """The consumer every worker of the fleet runs (``config/celery.py``)."""

    class Blueprint(Consumer.Blueprint):
        # Fenced by tests/unit/test_celery_fences.py::test_every_replaced_step_is_one_of_celerys_defaults.
        default_steps = fleet_steps(Consumer.Blueprint.default_steps)

    #: A flush of the buffered task events is on the loop's timer.
    _events_flush_due = False

    # Celery's Events step sets c.event_dispatcher; kept in __dict__ under a name of ours. Fenced by
    # tests/unit/test_celery_fences.py::test_celerys_events_step_sets_the_consumers_dispatcher_by_assignment.
    @property
    def event_dispatcher(self) -> Any:
        return self.__dict__.get("_event_dispatcher")

    @event_dispatcher.setter
    def event_dispatcher(self, dispatcher: Any) -> None:
        # Task events are buffered and flushed by the event loop; Celery also flushes a full buffer
        # from whichever thread filled it. On RabbitMQ with publisher confirms, a thread-pool task
        # then waits for the confirm on a connection the event loop reads too (for its heartbeats):
        # the loop takes the confirm, the task thread waits until the broker drops the connection for
        # missed heartbeats (seen: worker_partners stalled 90 s, again and again, in the kill drill).
        # Only the loop flushes, then.
        if dispatcher is not None and self.hub is not None:
            dispatcher.buffer_limit = sys.maxsize
        self.__dict__["_event_dispatcher"] = dispatcher

    # Celery's hook and its private _flush_events: fenced by
    # tests/unit/test_celery_fences.py::test_celerys_buffered_events_go_through_the_hooks_the_fleet_overrides.
    def on_send_event_buffered(self) -> None:
        # Celery flushes the buffered task events at the loop's next turn: one broker message for
        # every one or two events, a fifth of a worker's CPU in the bench's profile. Here a flush is
        # due EVENTS_FLUSH_S after the first event waiting, so each message carries many (Flower
        # shows a task that much later). call_soon, as Celery's own, is safe from a pool thread.
        if self.hub is not None:
            self.hub.call_soon(self._flush_events_soon)

    def _flush_events_soon(self) -> None:
        # On the loop's thread: the timer is not thread-safe.
        if not self._events_flush_due and self.hub is not None:
            self._events_flush_due = True
            self.hub.call_later(EVENTS_FLUSH_S, self._flush_events_now)

    def _flush_events_now(self) -> None:
        self._events_flush_due = False
        self._flush_events()

    def shutdown(self) -> None:
        # What waits for its flush goes out before the dispatcher closes (Celery's own flush is at
        # the loop's next turn, so it never had much to lose).
        try:
            self._flush_events()
        except Exception:
            log.warning("could not send the last task events", exc_info=True)
        super().shutdown()
