"""What the workers do with a message they cannot read: every message leaves a durable record.

A message whose body, task name or content the consumer refuses is not dropped with a log line:
it is handed to ``offers.record_unreadable``, which records its raw text as an intake rejection.
An unreadable Redis envelope takes the same way (``tasks/redis_envelopes.py``). Nothing here
deserialises anything but JSON.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.exceptions import NotRegistered
from celery.utils.objects import Bunch
from celery.worker.consumer import Consumer

log = logging.getLogger("offers_workers.wire")

RECORD_TASK = "offers.record_unreadable"
#: Raw text handed on for the record (the record keeps 4 KiB of it).
RAW_HANDED_ON = 8 * 1024


def record_kwargs(queue: str, problem: str, detail: str, raw: str, raw_size: int) -> dict[str, Any]:
    """The arguments of ``offers.record_unreadable`` for one refused message."""
    return {"queue": queue, "problem": problem, "detail": detail, "raw": raw[:RAW_HANDED_ON], "raw_size": raw_size}


class RecordingConsumer(Consumer):
    """Celery's consumer, but a message it refuses is handed on for the record before it goes.

    Celery would log such a message with up to 1 KiB of its body (buyers' emails and IPs
    included) and drop it; here the log line names what was wrong and the body goes to Postgres.
    """

    # Celery's own hooks, overridden: fenced by tests/unit/test_celery_fences.py::test_the_consumer_hooks_the_fleet_overrides.
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._record(message, "undecodable", f"the body does not decode as {message.content_type}: {exc}")
        message.ack()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._record(message, "no_task_name", "the message names no task (protocol 2 needs the headers task and id)")
        message.reject_log_error(log, self.connection_errors)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        headers = message.headers or {}
        name = headers.get("task")
        self._record(
            message,
            "unknown_task",
            f"unregistered task {name!r}: the fleet runs offers.submit, offers.cancel and offers.validate_draft",
        )
        message.reject_log_error(log, self.connection_errors)
        if headers.get("id"):
            # As Celery does: a caller waiting on the result gets NotRegistered now, not a timeout.
            request = Bunch(
                name=name,
                chord=None,
                root_id=headers.get("root_id"),
                errbacks=None,
                correlation_id=message.properties.get("correlation_id"),
                reply_to=message.properties.get("reply_to"),
            )
            self.app.backend.mark_as_failure(headers["id"], NotRegistered(name), request=request)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._record(message, "refused_content", f"{exc}; the fleet takes JSON only")
        message.reject_log_error(log, self.connection_errors)

    def _record(self, message: Any, problem: str, detail: str) -> None:
        queue = (message.delivery_info or {}).get("routing_key") or "unknown"
        log.error("refused a message: " + detail, extra={"queue": queue, "reason": problem})
        body = message.body or b""
        raw = body if isinstance(body, str) else bytes(body).decode("utf-8", errors="replace")
        try:
            self.app.send_task(RECORD_TASK, kwargs=record_kwargs(queue, problem, detail, raw, len(body)))
        except Exception:
            log.exception(
                "could not hand a refused message on for the record", extra={"queue": queue, "reason": problem}
            )
