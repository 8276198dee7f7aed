"""AWS: offer events to EventBridge and, optionally, an SNS topic."""

from __future__ import annotations

import json
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from config.settings import Settings
from offers_workers.domain.errors import PartnerError, PermanentError, TransientError
from offers_workers.partners.interfaces import Published

SOURCE = "offers.submission"
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


class EventPublisher:
    """``AuctionEvents`` through boto3 (see ``interfaces.AuctionEvents``)."""

    def __init__(self, settings: Settings) -> None:
        config = Config(
            connect_timeout=settings.partner_connect_timeout,
            read_timeout=settings.partner_read_timeout,
            # total_max_attempts=1 is "no SDK retry"; max_attempts=1 would still retry once (legacy meaning).
            retries={"total_max_attempts": 1, "mode": "standard"},
        )
        kwargs = client_kwargs(settings, config)
        self._events = boto3.client("events", **kwargs)
        self._sns = boto3.client("sns", **kwargs)
        self._bus = settings.event_bus_name

    def publish(
        self, *, event_id: str, detail_type: str, detail: dict[str, Any], sns_topic_arn: str | None
    ) -> Published:
        """Put one event on the bus, then notify the topic.

        ``event_id`` goes into the detail: a retry after a failed SNS publish re-puts the event, and
        EventBridge has no dedup, so consumers drop repeats by ``event_id``.
        """
        body = json.dumps({**detail, "event_id": event_id}, separators=(",", ":"), default=str)
        entry = {"Source": SOURCE, "DetailType": detail_type, "Detail": body, "EventBusName": self._bus}
        try:
            result = self._events.put_events(Entries=[entry])
        except (BotoCoreError, ClientError) as exc:
            raise sort_error(exc) from None
        if result.get("FailedEntryCount"):
            failed = result["Entries"][0]
            code = failed.get("ErrorCode") or "FailedEntry"
            message = failed.get("ErrorMessage") or "EventBridge rejected the entry"
            kind = TransientError if code in RETRYABLE_CODES else PermanentError
            raise kind("aws", code, message)
        bus_event_id = result["Entries"][0].get("EventId", "")
        if not sns_topic_arn:
            return Published(event_id, bus_event_id)
        try:
            sent = self._sns.publish(
                TopicArn=sns_topic_arn,
                Message=json.dumps(
                    {"event_id": event_id, "detail_type": detail_type, "detail": json.loads(body)},
                    separators=(",", ":"),
                ),
                Subject=_subject(detail_type),
                MessageAttributes={
                    "event_type": {"DataType": "String", "StringValue": detail_type},
                    "event_id": {"DataType": "String", "StringValue": event_id},
                },
            )
        except (BotoCoreError, ClientError) as exc:
            failure = sort_error(exc)
            if isinstance(failure, PartnerError):
                failure.sns_topic = sns_topic_arn.rsplit(":", 1)[-1]
            raise failure from None
        return Published(event_id, bus_event_id, sent.get("MessageId"))
