"""AWS: offer events to EventBridge and, optionally, an SNS topic.

Events of concurrent stages go out together: ``PutEvents`` takes ten entries per call and SNS's
``PublishBatch`` ten messages, and each call (signing, the request, parsing the answer) was the
auction stage's largest cost per offer. Nothing waits for a batch to fill: a caller that finds
fewer than ``CALLS_AT_ONCE`` calls on the wire makes one at once, with whatever other callers queued
meanwhile; callers that come while that many are on the wire go in the next, which one of them
makes. So at a steady rate each event goes out at once, and only a burst (a peak, a slow partner)
is batched. Every entry has its own result: a failed entry fails its own caller alone (its stage
retries it, with the same event id).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from config.settings import Settings
from offers_workers import tracing
from offers_workers.domain.errors import PartnerError, PermanentError, TransientError
from offers_workers.partners.interfaces import KEPT_CONNECTIONS, Published

SOURCE = "offers.submission"
#: Entries per PutEvents call and messages per PublishBatch call (both APIs' limit).
BATCH_ENTRIES = 10
#: Calls on the wire at once before callers queue for a batch: one would make an event wait for the
#: call before it at any rate (seen: 80 ms more on the steady lag with AWS answering in 40 ms).
CALLS_AT_ONCE = 4
#: Bytes of entries per call: both APIs take 256 KiB in all; the rest is left for the envelope.
BATCH_BYTES = 200 * 1024
RETRYABLE_CODES = {
    "InternalFailure",
    "InternalError",
    "InternalErrorException",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeoutException",
    "KMSThrottlingException",
}


def client_kwargs(settings: Settings, config: Config) -> dict[str, Any]:
    """boto3 client arguments shared by every AWS adapter.

    Credentials are passed only when the settings give them (the sandbox's test keys); otherwise
    boto3's standard chain finds them (env vars, shared config, web identity, instance role), also
    behind a VPC or FIPS endpoint.
    """
    kwargs: dict[str, Any] = {"region_name": settings.aws_region, "config": config}
    if settings.aws_endpoint_url:  # a VPC or FIPS endpoint, or the sandbox's moto
        kwargs["endpoint_url"] = settings.aws_endpoint_url
    credentials = settings.aws_credentials
    if credentials is not None:
        kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = credentials
    return kwargs


def sort_error(exc: Exception) -> Exception:
    """Map a botocore error to TransientError / PermanentError (partner ``aws``)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or "ClientError"
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        message = error.get("Message") or str(exc)
        if code in RETRYABLE_CODES or (status is not None and (status >= 500 or status == 429)):
            return TransientError("aws", code, message, status)
        return PermanentError("aws", code, message, status)
    if isinstance(exc, (BotoConnectionError, HTTPClientError)):  # refused, connect/read timeouts, resets
        return TransientError("aws", type(exc).__name__, str(exc)[:300])
    return PermanentError("aws", type(exc).__name__, str(exc)[:300])


def _subject(detail_type: str) -> str:
    # SNS subjects: printable ASCII, no line breaks, under 100 characters.
    clean = "".join(c if 32 <= ord(c) < 127 else " " for c in detail_type).strip()
    return (clean or "offer event")[:99]


def _with_topic(failure: Exception, topic_arn: str) -> Exception:
    if isinstance(failure, PartnerError):
        failure.sns_topic = topic_arn.rsplit(":", 1)[-1]
    return failure


@dataclass(eq=False)
class _Entry:
    """One caller's event on its way: what it sends, and what came back for it."""

    event_id: str
    detail_type: str
    body: str  # the detail as EventBridge gets it, event_id included
    sns_topic_arn: str | None
    #: Set when the entry is finished, or when its caller is to make the next call.
    wake: threading.Event = field(default_factory=threading.Event)
    finished: bool = False
    leads: bool = False
    bus_event_id: str = ""
    sns_message_id: str | None = None
    error: Exception | None = None
    #: What the offer's trace shows of the calls that carried it (ns since the epoch).
    batch: tracing.Batch | None = None
    sent_ns: int = 0
    put_ns: int = 0
    notified_ns: int = 0

    def fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error

    def sns_message(self) -> str:
        detail = json.loads(self.body)
        return json.dumps(
            {"event_id": self.event_id, "detail_type": self.detail_type, "detail": detail}, separators=(",", ":")
        )


class EventPublisher:
    """``AuctionEvents`` through boto3 (see ``interfaces.AuctionEvents``), in batches (module doc)."""

    def __init__(self, settings: Settings) -> None:
        config = Config(
            connect_timeout=settings.partner_connect_timeout,
            read_timeout=settings.partner_read_timeout,
            # total_max_attempts=1 is "no SDK retry"; max_attempts=1 would still retry once (legacy meaning).
            retries={"total_max_attempts": 1, "mode": "standard"},
            max_pool_connections=KEPT_CONNECTIONS,
        )
        kwargs = client_kwargs(settings, config)
        self._events = boto3.client("events", **kwargs)
        self._sns = boto3.client("sns", **kwargs)
        self._bus = settings.event_bus_name
        self._lock = threading.Lock()
        self._waiting: list[_Entry] = []
        self._calls = 0  # calls on the wire

    def publish(
        self, *, event_id: str, detail_type: str, detail: dict[str, Any], sns_topic_arn: str | None
    ) -> Published:
        """Put one event on the bus, then notify the topic.

        ``event_id`` goes into the detail: a retry after a failed SNS publish re-puts the event, and
        EventBridge has no dedup, so consumers drop repeats by ``event_id``.
        """
        body = json.dumps({**detail, "event_id": event_id}, separators=(",", ":"), default=str)
        entry = _Entry(event_id, detail_type, body, sns_topic_arn)
        with self._lock:
            self._waiting.append(entry)
            if self._calls < CALLS_AT_ONCE:
                self._calls += 1
                entry.leads = True
        while not entry.finished:
            if entry.leads:
                self._send_until_finished(entry)
            else:
                entry.wake.wait()
                entry.wake.clear()
        tracing.batched(entry.batch, "EventBridge", "PutEvents", entry.sent_ns, entry.put_ns)
        if entry.sns_topic_arn and entry.notified_ns:
            tracing.batched(entry.batch, "SNS", "PublishBatch", entry.put_ns, entry.notified_ns)
        if entry.error is not None:
            raise entry.error
        return Published(event_id, entry.bus_event_id, entry.sns_message_id)

    def _send_until_finished(self, own: _Entry) -> None:
        """Make calls for the waiting entries, oldest first, until ``own`` is done; then hand the
        call to the caller waiting longest, who makes the next one for everyone queued by then."""
        try:
            while not own.finished:
                with self._lock:
                    batch = self._take()
                if batch:
                    self._send(batch)
                else:  # another caller's call carries ``own``: wait for it (a promotion's wake is stale)
                    own.wake.clear()
                    if not own.finished:
                        own.wake.wait()
        finally:
            with self._lock:
                following = next((e for e in self._waiting if not e.leads), None)
                if following is not None:
                    following.leads = True
                    following.wake.set()
                else:
                    self._calls -= 1

    def _take(self) -> list[_Entry]:
        """The next call's entries (the caller holds the lock): up to ``BATCH_ENTRIES`` and ``BATCH_BYTES``."""
        taken, size = 0, 0
        for entry in self._waiting[:BATCH_ENTRIES]:
            size += len(entry.body) + len(entry.detail_type)
            if taken and size > BATCH_BYTES:
                break
            taken += 1
        batch = self._waiting[:taken]
        del self._waiting[:taken]
        return batch

    def _send(self, batch: list[_Entry]) -> None:
        try:
            with tracing.batch("offer events", len(batch)) as span:
                started = time.time_ns()
                for entry in batch:
                    entry.batch, entry.sent_ns = span, started
                self._put(batch)
                topics: dict[str, list[_Entry]] = {}
                for entry in batch:
                    if entry.error is None and entry.sns_topic_arn:
                        topics.setdefault(entry.sns_topic_arn, []).append(entry)
                for topic_arn, entries in topics.items():
                    self._notify(topic_arn, entries)
        except Exception as exc:
            # Not the partner's answer but a fault of ours: every caller still gets an answer.
            for entry in batch:
                entry.fail(PermanentError("aws", type(exc).__name__, str(exc)[:300]))
        finally:
            for entry in batch:
                entry.finished = True
                entry.wake.set()

    def _put(self, batch: list[_Entry]) -> None:
        """One PutEvents call; each entry gets its EventId or its own failure."""
        entries = [
            {"Source": SOURCE, "DetailType": e.detail_type, "Detail": e.body, "EventBusName": self._bus} for e in batch
        ]
        try:
            result = self._events.put_events(Entries=entries)
        except (BotoCoreError, ClientError) as exc:
            for entry in batch:
                entry.fail(sort_error(exc))
            return
        finally:
            put = time.time_ns()
            for entry in batch:
                entry.put_ns = put
        answers = result.get("Entries") or []
        for entry, answer in zip(batch, answers, strict=False):
            code = answer.get("ErrorCode")
            if code:
                kind = TransientError if code in RETRYABLE_CODES else PermanentError
                entry.fail(kind("aws", code, answer.get("ErrorMessage") or "EventBridge rejected the entry"))
            else:
                entry.bus_event_id = answer.get("EventId", "")
        for entry in batch[len(answers) :]:
            entry.fail(TransientError("aws", "MissingEntry", "EventBridge answered for fewer entries than were put"))

    def _notify(self, topic_arn: str, entries: list[_Entry]) -> None:
        """PublishBatch calls to one topic; each message gets its MessageId or its own failure."""
        for first in range(0, len(entries), BATCH_ENTRIES):
            chunk = entries[first : first + BATCH_ENTRIES]
            request = [
                {
                    "Id": str(n),
                    "Message": entry.sns_message(),
                    "Subject": _subject(entry.detail_type),
                    "MessageAttributes": {
                        "event_type": {"DataType": "String", "StringValue": entry.detail_type},
                        "event_id": {"DataType": "String", "StringValue": entry.event_id},
                    },
                }
                for n, entry in enumerate(chunk)
            ]
            try:
                sent = self._sns.publish_batch(TopicArn=topic_arn, PublishBatchRequestEntries=request)
            except (BotoCoreError, ClientError) as exc:
                for entry in chunk:
                    entry.fail(_with_topic(sort_error(exc), topic_arn))
                continue
            finally:
                notified = time.time_ns()
                for entry in chunk:
                    entry.notified_ns = notified
            answered: set[int] = set()
            for ok in sent.get("Successful") or []:
                n = int(ok["Id"])
                chunk[n].sns_message_id, answered = ok.get("MessageId"), answered | {n}
            for bad in sent.get("Failed") or []:
                n, code = int(bad["Id"]), bad.get("Code") or "FailedEntry"
                # SenderFault: the request was ours to fix; otherwise SNS failed and may not next time.
                kind = PermanentError if bad.get("SenderFault") and code not in RETRYABLE_CODES else TransientError
                chunk[n].fail(
                    _with_topic(kind("aws", code, bad.get("Message") or "SNS refused the message"), topic_arn)
                )
                answered.add(n)
            for n, entry in enumerate(chunk):
                if n not in answered:
                    entry.fail(_with_topic(TransientError("aws", "MissingEntry", "SNS gave no answer"), topic_arn))
