"""Counters the fleet keeps in Redis for ``/metrics``: events Postgres does not record (partner errors,
SNS publish failures, unsent funnel events, messages refused for want of a valid MAC).

One Redis hash per counter, one field per label set (``|``-joined), incremented by every worker and
read by the metrics process, so a fleet on many hosts has one count. Best effort: counting never fails
the work it counts. Each function takes the Redis client (None: Redis is not configured, nothing is
counted) and the deployment's key prefix (``OFFERS_REDIS_KEY_PREFIX``).
"""

from __future__ import annotations

import logging
from typing import Any

from redis import Redis

log = logging.getLogger(__name__)


def partner_errors_key(prefix: str) -> str:
    return f"{prefix}metrics:partner_errors"


def sns_failures_key(prefix: str) -> str:
    return f"{prefix}metrics:sns_publish_failures"


def funnel_unsent_key(prefix: str) -> str:
    return f"{prefix}metrics:funnel_unsent"


def unauthenticated_key(prefix: str) -> str:
    return f"{prefix}metrics:unauthenticated_messages"


def count_unauthenticated(client: Redis | None, prefix: str, task: str, why: str) -> None:
    """A message refused for want of a valid MAC, by task and kind of refusal."""
    try:
        if client is not None:
            # Only registered task names get here (the unknown ones are refused earlier): the label stays small.
            client.hincrby(unauthenticated_key(prefix), f"{task}|{why}", 1)
    except Exception:
        log.warning("unauthenticated message not counted", exc_info=True)


def count_funnel_unsent(client: Redis | None, prefix: str, cause: str, events: int) -> None:
    """Funnel events Segment did not get, by cause."""
    if client is not None:
        client.hincrby(funnel_unsent_key(prefix), cause, events)


def count_partner_error(
    client: Redis | None, prefix: str, partner: str, code: str, sns_topic: str | None = None
) -> None:
    """A partner call that failed, by partner and code (and the SNS topic a failed publish was for)."""
    try:
        if client is not None:
            client.hincrby(partner_errors_key(prefix), f"{partner}|{code}", 1)
            if sns_topic:
                client.hincrby(sns_failures_key(prefix), sns_topic, 1)
    except Exception:
        log.debug("partner error not counted", exc_info=True)


def counts(client: Redis | None, key: str) -> dict[str, int]:
    """A counter's fields and counts (empty without Redis)."""
    found: dict[Any, Any] = client.hgetall(key) if client is not None else {}
    return {field.decode(): int(n) for field, n in found.items()}
