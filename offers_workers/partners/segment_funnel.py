"""Segment: the product funnel's events, sent with Segment's own library (``segment-analytics-python``).

A stage only puts its event on the library's in-memory queue; the library's consumer thread sends
batches to ``POST {host}/v1/batch``. So a Segment outage or a slow Segment never delays or fails a
stage. What cannot be sent is counted as unsent (``offers_funnel_unsent_events_total`` on
/metrics), never retried forever: an event that finds the queue full, a batch out of its few
retries, and what is still queued when the process stops.

The client is built on first use in the process that uses it, and again after a fork: its consumer
thread does not survive one (a prefork child would queue events that no thread ever sends).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from segment.analytics import Client

from offers_workers.partners.interfaces import FunnelEvent

if TYPE_CHECKING:
    from config.settings import Settings

log = logging.getLogger(__name__)

# The library logs each request's body, write key included, at debug level: never let it.
logging.getLogger("segment").setLevel(logging.INFO)

#: Events a process may hold for sending; beyond it an event is counted unsent, the stage goes on.
MAX_QUEUE = 10_000
#: Events per batch (one ``/v1/batch`` request).
UPLOAD_SIZE = 100
#: Retries of a failed batch (at once, then after 0.5 s); then it is counted unsent.
MAX_RETRIES = 2
#: The longest a batch is kept back by backoff or a rate limit's Retry-After before it is counted unsent.
MAX_HOLD_BACK_S = 30
#: At worker shutdown, how long the queue may take to drain; what is left then is counted unsent.
SHUTDOWN_FLUSH_S = 5.0

#: Why an event was not sent, the label of the unsent count.
QUEUE_FULL, SEND_FAILED, NOT_QUEUED, SHUTDOWN = "queue_full", "send_failed", "not_queued", "shutdown"


class SegmentFunnel:
    """``Funnel`` through Segment.

    Parameters:
        settings: ``segment_write_key`` (required), ``segment_host`` and the partner timeouts.
        count_unsent: ``count_unsent(cause, events)`` adds to the fleet-wide unsent count; called
            from the consumer thread too, so it must be cheap and may fail (it is logged, never raised).
    """

    def __init__(self, settings: Settings, count_unsent: Callable[[str, int], None]) -> None:
        self._write_key = settings.secret("segment_write_key")
        if not self._write_key:
            raise ValueError("SegmentFunnel needs OFFERS_SEGMENT_WRITE_KEY")
        self._host = settings.segment_host
        # requests takes (connect, read): a Segment that does not answer holds its thread, never a stage.
        self._timeout = (settings.partner_connect_timeout, settings.partner_read_timeout)
        self._count_unsent = count_unsent
        self._lock = threading.Lock()
        self._client: Client | None = None
        self._pid: int | None = None
        #: Set once shutdown has counted what was left, so a late failure of the same events is not counted twice.
        self._closed = False

    def _client_here(self) -> Client:
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                self._client = Client(
                    write_key=self._write_key,
                    host=self._host,
                    on_error=self._on_error,
                    max_queue_size=MAX_QUEUE,
                    upload_size=UPLOAD_SIZE,
                    max_retries=MAX_RETRIES,
                    max_total_backoff_duration=MAX_HOLD_BACK_S,
                    max_rate_limit_duration=MAX_HOLD_BACK_S,
                    timeout=self._timeout,
                    sync_mode=False,
                    send=True,
                    gzip=False,
                )
                self._pid = os.getpid()
                self._closed = False
            return self._client

    def track(self, event: FunnelEvent) -> None:
        """See ``interfaces.Funnel.track``: queue it, never wait, never raise."""
        try:
            queued, _ = self._client_here().track(
                user_id=event.user_id,
                event=event.event,
                properties=event.properties,
                message_id=event.message_id,
            )
        except Exception as exc:  # the library refuses a malformed or oversized event by raising
            log.warning("funnel event not queued", extra={"event": event.event, "error": type(exc).__name__})
            self._unsent(NOT_QUEUED, 1)
            return
        if not queued:
            self._unsent(QUEUE_FULL, 1)

    def flush(self, timeout_s: float = SHUTDOWN_FLUSH_S) -> None:
        """See ``interfaces.Funnel.flush``. The library's own flush waits without limit: it runs in
        a thread of its own here, waited for ``timeout_s`` at most."""
        with self._lock:
            client = self._client if self._pid == os.getpid() else None
        if client is None:
            return
        flushing = threading.Thread(target=client.flush, name="segment-flush", daemon=True)
        flushing.start()
        flushing.join(timeout_s)
        left = client.queue.unfinished_tasks  # queued or in a batch being sent
        if left:
            self._closed = True
            log.warning("funnel events not sent before shutdown", extra={"events": left})
            self._unsent(SHUTDOWN, left)
            for consumer in client.consumers or []:
                consumer.pause()  # its daemon thread ends with the process
            return
        client.join()

    def _on_error(self, error: Exception, batch: list[dict[str, Any]]) -> None:
        # The consumer thread's report of a batch it drops (out of retries, refused, rate-limited too long).
        if self._closed:
            return
        log.warning("funnel batch not sent", extra={"events": len(batch), "error": str(error)[:300]})
        self._unsent(SEND_FAILED, len(batch))

    def _unsent(self, cause: str, events: int) -> None:
        try:
            self._count_unsent(cause, events)
        except Exception:
            # An exception here would end the library's consumer thread: nothing would be sent again.
            log.warning("unsent funnel events not counted", extra={"cause": cause, "events": events}, exc_info=True)
