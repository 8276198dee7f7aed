"""The edge of the wire: what the workers do with a message they cannot read, and a check that
upstream clients can reach them on RabbitMQ.

Every message leaves a durable record, also one whose envelope, body or task name is unusable:
instead of being dropped with a log line, it is handed to ``offers.record_unreadable``, which
records its raw text as an intake rejection. Nothing here deserialises anything but JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import sys
import uuid
from typing import Any

from celery.exceptions import NotRegistered
from celery.utils.objects import Bunch
from celery.worker import heartbeat
from celery.worker.consumer import Consumer
from celery.worker.consumer.delayed_delivery import DelayedDelivery
from celery.worker.consumer.heart import Heart
from kombu.transport import redis as kombu_redis

from offers_workers.domain.authority import HEADER
from tasks import authority
from tasks.task_events import EVENTS_FLUSH_S

log = logging.getLogger("offers_workers.wire")

RECORD_TASK = "offers.record_unreadable"
#: Raw text handed on for the record (the record keeps 4 KiB of it).
RAW_HANDED_ON = 8 * 1024


def envelope_problem(item: bytes | str) -> str | None:
    """What makes a Redis envelope unreadable to kombu, or None. kombu parses the envelope before
    any code of ours runs, and a bad one raised out of the consumer loop: the worker stopped
    ("Unrecoverable error") and the message, already popped, was gone without a trace."""
    try:
        envelope = json.loads(item)
    except (ValueError, RecursionError):
        return "the envelope is not JSON"
    if not isinstance(envelope, dict):
        return "the envelope is not a JSON object"
    properties = envelope.get("properties")
    if not isinstance(properties, dict):
        return "the envelope has no properties object"
    if not isinstance(properties.get("delivery_tag"), (str, int)):
        return "properties.delivery_tag is missing"
    info = properties.get("delivery_info")
    if (
        not isinstance(info, dict)
        or not isinstance(info.get("exchange"), str)
        or not isinstance(info.get("routing_key"), str)
    ):
        return "properties.delivery_info needs exchange and routing_key strings"
    body = envelope.get("body")
    if body is not None and not isinstance(body, str):
        return "body must be a string"
    encoding = properties.get("body_encoding")
    if encoding not in (None, "base64"):
        return "properties.body_encoding must be base64 or absent"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            return "body is not valid base64"
    if not isinstance(envelope.get("headers") or {}, dict):
        return "headers must be an object"
    for key in ("content-type", "content-encoding"):
        if not isinstance(envelope.get(key) or "", str):
            return f"{key} must be a string"
    return None


def record_envelope(queue: str, problem: str, raw: str, raw_size: int) -> bytes:
    """A well-formed envelope for ``offers.record_unreadable`` carrying the unreadable one."""
    message_id = str(uuid.uuid4())
    kwargs = {
        "queue": queue,
        "problem": "invalid_envelope",
        "detail": problem,
        "raw": raw[:RAW_HANDED_ON],
        "raw_size": raw_size,
    }
    headers = {"task": RECORD_TASK, "id": message_id}
    if (signature := authority.sign(RECORD_TASK, message_id, [], kwargs)) is not None:
        headers[HEADER] = signature  # the record task runs only for the fleet (tasks/authority.py)
    return json.dumps(
        {
            "body": json.dumps([[], kwargs, {}]),
            "content-type": "application/json",
            "content-encoding": "utf-8",
            "headers": headers,
            "properties": {"delivery_tag": message_id, "delivery_info": {"exchange": "", "routing_key": queue}},
        }
    ).encode()


class GuardedChannel(kombu_redis.Channel):
    """kombu's Redis channel, but a popped envelope it could not read becomes a record instead."""

    def _create_client(self, asynchronous: bool = False) -> Any:
        client = super()._create_client(asynchronous)
        if asynchronous:  # the client that BRPOPs
            read = client.parse_response
            sep = self.sep

            def parse_response(connection: Any, command_name: str, **options: Any) -> Any:
                response = read(connection, command_name, **options)
                if command_name == "BRPOP" and response:
                    key, item = response
                    problem = envelope_problem(item)
                    if problem is not None:
                        queue = kombu_redis.bytes_to_str(key).rsplit(sep, 1)[0]
                        raw = item.decode("utf-8", errors="replace") if isinstance(item, bytes) else str(item)
                        log.error(
                            "unreadable envelope handed on for the record", extra={"queue": queue, "reason": problem}
                        )
                        return key, record_envelope(queue, problem, raw, len(item))
                return response

            client.parse_response = parse_response
        return client


class RedisTransport(kombu_redis.Transport):
    """The Redis transport the fleet runs on (``broker_transport``); the URL stays ``redis://``."""

    Channel = GuardedChannel


class GuardedSentinelChannel(GuardedChannel, kombu_redis.SentinelChannel):
    """The same guard on a channel that asks the sentinels for the master (on every reconnect)."""


class SentinelTransport(kombu_redis.SentinelTransport):
    """The fleet's transport for a ``sentinel://`` broker URL (Redis with Sentinel)."""

    Channel = GuardedSentinelChannel


class DeclaringDelayedDelivery(DelayedDelivery):
    """RabbitMQ's native delayed delivery, after declaring every queue of the fleet.

    Celery binds each of the app's queues to the delay exchanges, but a worker declares only the
    queues it consumes: started first on a fresh virtual host, ``worker_partners`` failed to bind
    ``offers.audit`` (NOT_FOUND), the channel went with it, and a retry countdown had no binding to
    come back through. Declaring is idempotent, and each queue's arguments are the fleet's own.
    """

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

    def start(self, c: Any) -> None:
        c.heart = heartbeat.Heart(c.timer, HeartbeatSends(c.event_dispatcher), self.heartbeat_interval)
        c.heart.start()


#: The consumer steps the fleet replaces: Celery's own, by where they are defined.
REPLACED_STEPS = {
    ":DelayedDelivery": "tasks.wire:DeclaringDelayedDelivery",
    ":Heart": "tasks.wire:BoundedHeart",
}


class RecordingConsumer(Consumer):
    """Celery's consumer, but a message it refuses is handed on for the record before it goes.

    Celery would log such a message with up to 1 KiB of its body (buyers' emails and IPs
    included) and drop it; here the log line names what was wrong and the body goes to Postgres.
    """

    class Blueprint(Consumer.Blueprint):
        default_steps = tuple(
            next((ours for theirs, ours in REPLACED_STEPS.items() if step.endswith(theirs)), step)
            for step in Consumer.Blueprint.default_steps
        )

    #: A flush of the buffered task events is on the loop's timer.
    _events_flush_due = False

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
            self.app.send_task(
                RECORD_TASK,
                kwargs={
                    "queue": queue,
                    "problem": problem,
                    "detail": detail,
                    "raw": raw[:RAW_HANDED_ON],
                    "raw_size": len(body),
                },
            )
        except Exception:
            log.exception(
                "could not hand a refused message on for the record", extra={"queue": queue, "reason": problem}
            )


def plain_clients_refused(app: Any) -> bool:
    """RabbitMQ: would this virtual host refuse a Celery client that declares the queue it sends to
    without a queue type (any client not setting task_create_missing_queue_type)? It does unless the
    virtual host's default queue type is quorum, since every queue of ours is a quorum queue."""
    probe = f"offers.probe.{uuid.uuid4().hex}"
    with app.connection_for_write() as conn:
        channel = conn.channel()
        channel.queue_declare(probe, durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"})
        try:
            channel.queue_declare(probe, durable=True, auto_delete=False)  # as a plain client declares
            refused = False
        except conn.channel_errors:
            refused = True
            channel = conn.channel()  # the refusal closed the first one
        channel.queue_delete(probe)
    return refused
