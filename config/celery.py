"""Celery configuration for the fleet, built from Settings.

JSON only on the wire; late acks with requeue on worker loss (every stage is idempotent); one
queue per stage so slow partners can be scaled apart. The broker is Redis or RabbitMQ: the same
queue names and routes on both; on RabbitMQ the queues are durable quorum queues and every
publish waits for the broker's confirm.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kombu import Exchange, Queue

from config.beat import beat_schedule
from config.retry import LONGEST_COUNTDOWN
from config.settings import ConfigError, Settings
from offers_workers.domain.states import STAGES
from offers_workers.redis_client import is_sentinel, parse_sentinel_url, sentinel_kwargs

#: Task name → queue. Upstream services depend on the first three names and queues.
ROUTES: dict[str, str] = {
    "offers.submit": "offers.intake",
    "offers.cancel": "offers.intake",
    "offers.validate_draft": "offers.realtime",
    "offers.record_unreadable": "offers.intake",
    **{stage.task: stage.queue for stage in STAGES},
    "offers.publish_event": "offers.events",
    "offers.release_hold": "offers.payment",
    "offers.recover": "offers.maintenance",
    "offers.release_expiring_holds": "offers.maintenance",
    "offers.reconcile_holds": "offers.maintenance",
    "offers.expire_offers": "offers.maintenance",
    "offers.seal_audit": "offers.maintenance",
    "offers.export_audit": "offers.maintenance",
    "offers.anchor_audit": "offers.maintenance",
    "offers.verify_audit": "offers.maintenance",
    "offers.synthetic_journey": "offers.maintenance",
    "offers.trim_draft_validations": "offers.maintenance",
}
QUEUES = sorted(set(ROUTES.values()))


def celery_config(settings: Settings, *, declare: bool = True) -> dict[str, Any]:
    """``declare``: whether this process declares the queues it sends to. The fleet does; a process
    that only sends (the operator CLI) must not need a broker user that may declare, and so delete, them."""
    if not settings.broker_url:
        raise ConfigError("invalid configuration: OFFERS_BROKER_URL is required")
    time_limit = settings.task_time_limit_seconds
    prefix = settings.redis_key_prefix
    config: dict[str, Any] = {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        **(rabbitmq_options(settings, declare) if settings.broker_is_rabbitmq else redis_options(settings, declare)),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_time_limit": time_limit,
        "task_soft_time_limit": max(1, time_limit - 15),
        "task_routes": {name: {"queue": queue} for name, queue in ROUTES.items()},
        "task_default_queue": "offers.intake",
        # Refuse to invent queues for misrouted tasks: a typo must fail loudly, not strand work.
        "task_create_missing_queues": False,
        "worker_hijack_root_logger": False,
        # A message the workers refuse (undecodable, unknown task) is recorded, not only logged.
        "worker_consumer": "tasks.consumer:FleetConsumer",
        # Recycle a pool child when it has grown, not every N tasks: the bench showed no growth in
        # the children, and a child forked from a grown parent starts at the parent's size.
        "worker_max_memory_per_child": 300_000,  # KiB
        # What Flower shows; the events carry ids, never the offer (tasks/redaction.py).
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "beat_schedule": beat_schedule(settings),
        "beat_scheduler": "tasks.beat:OffersBeatScheduler",
        "redbeat_key_prefix": f"{prefix}redbeat",
        "enable_utc": True,
        "timezone": "UTC",
    }
    results = settings.effective_redis_url
    if results:
        config["result_backend"] = results
        if settings.broker_key_prefix:
            # Opted in: Celery's keys carry the prefix, results as well as queues. Otherwise a
            # validate_draft caller reads its answer with nothing but the backend URL.
            config["result_backend_transport_options"] = {"global_keyprefix": settings.broker_key_prefix}
        config["result_expires"] = 3600
        config["redbeat_redis_url"] = results
        if is_sentinel(results):
            config["result_backend_transport_options"] = {
                **config.get("result_backend_transport_options", {}),
                **sentinel_options(settings),
            }
            config.update(redbeat_sentinel_options(settings, results))
        if results.startswith("rediss://"):
            # RedBeat falls back on broker_use_ssl, an amqps:// broker's socket options, which redis refuses.
            query = parse_qs(urlsplit(results).query)
            config["redbeat_redis_use_ssl"] = {k: v[-1] for k, v in query.items() if k in REDIS_TLS_QUERY}
    return config


#: RabbitMQ's own delivery limit for the fleet's queues, set by a policy (docs/operations.md,
#: section 4), not a queue argument: a declared queue's arguments cannot change, and a client that
#: declares the queue without the same argument is refused. A backstop far above
#: OFFERS_POISON_DELIVERIES: RabbitMQ also counts the messages a dead worker had only reserved.
BROKER_DELIVERY_LIMIT = 50

#: RabbitMQ: the exchange every stage queue is bound to by its own name. A topic exchange, because
#: Celery's native delayed delivery (retry countdowns on quorum queues) re-routes through it.
EXCHANGE = Exchange("offers", type="topic", durable=True)


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """What kombu's and Celery's Sentinel support take beside a sentinel:// URL: the master's name,
    and how to reach the sentinels (their password)."""
    password = settings.secret("redis_sentinel_password") or None
    return {"master_name": settings.redis_sentinel_master, "sentinel_kwargs": sentinel_kwargs(password)}


def redbeat_sentinel_options(settings: Settings, url: str) -> dict[str, Any]:
    """RedBeat finds the master through the sentinels given in its options, not in its URL."""
    group = parse_sentinel_url(url)
    password = settings.secret("redis_sentinel_password") or None
    options = {
        "sentinels": group.sentinels,
        "service_name": settings.redis_sentinel_master,
        "db": group.db,
        "socket_timeout": 5,
        "sentinel_kwargs": sentinel_kwargs(password),
    }
    options.update({k: v for k, v in (("username", group.username), ("password", group.password)) if v})
    return {"redbeat_redis_url": "redis-sentinel://", "redbeat_redis_options": options}


def redis_options(settings: Settings, declare: bool = True) -> dict[str, Any]:
    visibility_timeout = broker_visibility_timeout(settings)
    sentinel = is_sentinel(settings.broker_url)
    return {
        # kombu's Redis transport, but an envelope it cannot read is recorded instead of stopping
        # the worker (the broker URL keeps its redis:// or sentinel:// scheme).
        "broker_transport": (
            "tasks.redis_envelopes:SentinelTransport" if sentinel else "tasks.redis_envelopes:RedisTransport"
        ),
        "broker_transport_options": {
            **(sentinel_options(settings) if sentinel else {}),
            "visibility_timeout": visibility_timeout,
            # Queues carry their plain names unless a deployment opts in: the names are the contract.
            "global_keyprefix": settings.broker_key_prefix,
            # Look for messages of dead workers ten times per timeout, not every 100 s (kombu's default).
            "unacked_restore_interval": max(1, visibility_timeout // 10),
            "unacked_restore_throttle": 1,
        },
        "task_queues": [Queue(q, routing_key=q, no_declare=not declare) for q in QUEUES],
    }


#: kombu's retry of a send on RabbitMQ: 0, 0.5, 1, 1.5, then every 2 s, 12 tries in all.
PUBLISH_RETRY_POLICY = {"max_retries": 12, "interval_start": 0, "interval_step": 0.5, "interval_max": 2}
#: Seconds a blocking read or write on a broker connection waits (a send's confirm, a declare's
#: answer): a hung node (paused, cut off) must not hold a sender forever, and a worker's event
#: loop that sends its events must get back to its heartbeats; the retry goes to the next node.
BROKER_SOCKET_TIMEOUT_S = 10


def rabbitmq_options(settings: Settings, declare: bool = True) -> dict[str, Any]:
    """Durable quorum queues (replicated, survive a broker node), publisher confirms, heartbeats.

    A worker's unacked messages return to the queue the moment its connection closes: a killed
    worker at once, a host cut off once the broker misses its heartbeats. No visibility timeout.
    """
    return {
        **({"broker_use_ssl": broker_tls(settings)} if (settings.broker_url or "").startswith("amqps://") else {}),
        # A send returns only once the broker has the message: a broker crash cannot eat a hand-on.
        "broker_transport_options": {
            "confirm_publish": True,
            "read_timeout": BROKER_SOCKET_TIMEOUT_S,
            "write_timeout": BROKER_SOCKET_TIMEOUT_S,
        },
        "broker_heartbeat": settings.broker_heartbeat_seconds,
        # OFFERS_BROKER_URL may list a cluster's nodes (amqp://a;amqp://b;amqp://c): each reconnection
        # tries the next one.
        "broker_failover_strategy": "round-robin",
        # A send rides out a node's loss for ~20 s: the nacks while a quorum queue elects a new leader,
        # and the move to the next node. Celery's default gives up after 0.6 s, and the stage dead-letters.
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "task_queues": [
            Queue(
                q,
                EXCHANGE,
                routing_key=q,
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
                no_declare=not declare,
            )
            for q in QUEUES
        ],
    }


#: The TLS options a rediss:// URL carries in its query (what redis-py reads from it).
REDIS_TLS_QUERY = ("ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile")


def broker_tls(settings: Settings) -> dict[str, Any]:
    """amqps://: py-amqp's socket options. It checks the chain only when asked to, and the host name
    only when given one: None makes kombu fill in the host of the node it connects to."""
    return {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": str(settings.broker_tls_ca_file) if settings.broker_tls_ca_file else None,
        "certfile": str(settings.broker_tls_cert_file) if settings.broker_tls_cert_file else None,
        "keyfile": str(settings.broker_tls_key_file) if settings.broker_tls_key_file else None,
        "server_hostname": None,
        "tls_minimum_version": ssl.TLSVersion.TLSv1_2,
    }


def broker_visibility_timeout(settings: Settings) -> int:
    """Seconds before Redis hands an unacked message (a dead worker's) to another worker.

    It must exceed the longest a healthy worker keeps a message unacked: the task's time limit
    plus the longest retry countdown it holds the message for, or a slow task runs twice at once.
    Shorter brings a killed worker's messages back sooner.
    """
    floor = settings.task_time_limit_seconds + LONGEST_COUNTDOWN * settings.retry_delay_scale
    if settings.broker_visibility_timeout_seconds is None:
        return int(2 * floor)
    if settings.broker_visibility_timeout_seconds <= floor:
        raise ConfigError(
            f"invalid configuration: OFFERS_BROKER_VISIBILITY_TIMEOUT_SECONDS must exceed the task time limit plus"
            f" the longest retry countdown ({floor:.0f} s)"
        )
    return settings.broker_visibility_timeout_seconds
