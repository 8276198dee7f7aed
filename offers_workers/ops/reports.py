"""Figures from outside Postgres (queue depths on the broker), and how report tables print them.

Everything read from Postgres is in ``offers_workers.store.reports``.
"""

from __future__ import annotations

from typing import Any

import kombu
import redis

from config import links
from config.celery import broker_tls
from offers_workers.redis_client import broker_client


def ms_text(value: float | None) -> str:
    """Milliseconds for a report table ("-" when there is no figure)."""
    return "-" if value is None else f"{value:,.0f}"


def queue_depths(settings: Any, queues: list[str]) -> dict[str, int]:
    """Messages waiting per queue on the broker, Redis or RabbitMQ (not counting those a worker holds)."""
    if settings.broker_is_rabbitmq:
        return _rabbitmq_queue_depths(settings, queues)
    client = broker_client(settings, socket_timeout=5)
    try:
        return _redis_queue_depths(client, settings.broker_key_prefix, queues)
    finally:
        client.close()


def _redis_queue_depths(client: redis.Redis, key_prefix: str, queues: list[str]) -> dict[str, int]:
    # kombu keeps priorities 3, 6 and 9 in lists of their own beside the queue's.
    depths = {}
    for queue in queues:
        keys = [f"{key_prefix}{queue}"] + [f"{key_prefix}{queue}\x06\x16{p}" for p in (3, 6, 9)]
        depths[queue] = sum(client.llen(k) for k in keys)
    return depths


def _rabbitmq_queue_depths(settings: Any, queues: list[str]) -> dict[str, int]:
    depths = {}
    # amqps:// alone would be TLS without a certificate check: the fleet's own verified options.
    tls = broker_tls(settings) if settings.broker_url.startswith("amqps://") else False
    with kombu.Connection(settings.broker_url, connect_timeout=5, ssl=tls) as conn:
        # A cluster's list (amqp://a;amqp://b;amqp://c): each node once, in turn, until one answers
        # (kombu's own first connection tries two at most).
        conn.ensure_connection(max_retries=len(links.broker_urls(settings.broker_url)) - 1)
        for queue in queues:
            # A passive declare reads the count without creating the queue; a missing queue
            # closes the channel, so each queue gets one of its own.
            with conn.channel() as channel:
                try:
                    depths[queue] = channel.queue_declare(queue, passive=True).message_count
                except conn.channel_errors:
                    depths[queue] = 0
    return depths


def queue_consumers(app: Any, queues: list[str], timeout_s: float = 1.0) -> dict[str, int]:
    """How many workers consume each queue, as the workers answer over the broker (Redis and
    RabbitMQ alike); a worker too busy to answer within ``timeout_s`` counts as none."""
    replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    consumed = [q["name"] for worker_queues in replies.values() for q in (worker_queues or [])]
    return {queue: consumed.count(queue) for queue in queues}
