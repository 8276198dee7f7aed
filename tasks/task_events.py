"""Task events sent in batches: what Flower shows, at a fraction of the broker messages.

Celery publishes a ``task-sent`` event with every message a worker sends (each stage handing on to
the next), one broker message each, synchronously. In a worker process they go into a buffer
instead, and a thread of the process publishes the buffer every ``EVENTS_FLUSH_S`` as one
``task.multi`` message, as Celery does with the worker's own task events (``tasks/consumer.py``).
Processes that are not workers (the CLI, an upstream) publish each event at once, as before.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any

from celery import Celery
from celery.events import EventDispatcher

log = logging.getLogger("offers_workers.wire")

#: How long a task event waits to go out with the others (Flower shows the task that much later).
EVENTS_FLUSH_S = 0.25


class BufferedEvents:
    """Stands in for the dispatcher ``send_task`` publishes its ``task-sent`` event through."""

    def __init__(self, app: Celery) -> None:
        # A connection of its own: never one a task thread or the event loop is reading.
        self._dispatcher = EventDispatcher(
            app.connection_for_write(), app=app, buffer_group=["task"], buffer_limit=sys.maxsize
        )
        self._waiting = threading.Event()
        self.pid = os.getpid()
        threading.Thread(target=self._send_every_while, name="task-events", daemon=True).start()

    def publish(self, type: str, fields: dict[str, Any], producer: Any, **_: Any) -> None:
        """Celery's ``EventDispatcher.publish``, as ``send_task_message`` calls it: buffered here."""
        self._dispatcher.send(type, **fields)
        self._waiting.set()

    def flush(self) -> None:
        try:
            self._dispatcher.flush()
        except Exception:
            # Task events are what Flower shows, never the saga's state: a failed batch is logged, not retried.
            log.warning("could not send a batch of task events", exc_info=True)

    def _send_every_while(self) -> None:
        while True:
            self._waiting.wait()
            time.sleep(EVENTS_FLUSH_S)  # what arrives meanwhile goes in the same batch
            self._waiting.clear()
            self.flush()


_buffered: BufferedEvents | None = None


def start(app: Celery) -> None:
    """In a worker process (a thread-pool worker, a prefork child): buffer its ``task-sent`` events."""
    global _buffered
    if app.conf.task_send_sent_event:
        _buffered = BufferedEvents(app)


def buffered() -> BufferedEvents | None:
    """This process's buffer, if it is a worker's (a forked child inherits none that works)."""
    return _buffered if _buffered is not None and _buffered.pid == os.getpid() else None


def flush() -> None:
    if (events := buffered()) is not None:
        events.flush()
