"""Can upstream clients reach the workers on RabbitMQ? Checked once a worker is ready (``tasks/app.py``)."""

from __future__ import annotations

import uuid
from typing import Any


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
