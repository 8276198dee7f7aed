"""Poison messages: a message whose every run kills its worker is dead-lettered, not run forever.

A worker that dies mid-task (a segfault in a library, the OOM killer) gives its message back:
Celery requeues a lost pool child's message at once, RabbitMQ a closed connection's at once, Redis
a dead worker's after the visibility timeout. A message that kills every worker it reaches would
loop forever (Redis, RabbitMQ 3.x) or be dropped without a record (RabbitMQ 4.x's delivery limit).

So each start of a message is written down in Redis before its task runs, and wiped when the run
returns, however it ends: what is left are the starts that never returned. A message that comes
with more than OFFERS_POISON_DELIVERIES of them (this one included) is dead-lettered instead.

The count is ours on both brokers. RabbitMQ's x-delivery-count also counts every message a dead
worker had only reserved (up to 40 per queue in worker_partners), so a message that kills its
worker would take those with it to the limit; it is shown in the history, not used.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from offers_workers.runtime import Runtime

log = logging.getLogger("offers_workers.tasks")

#: How long starts that never returned are kept: far longer than a redelivery takes (a Redis
#: visibility timeout is minutes), short enough that they do not pile up.
KEPT_S = 24 * 3600
#: RabbitMQ's counts of a message's earlier deliveries (4.3 counts every return in the second).
BROKER_COUNTS = ("x-delivery-count", "x-acquired-count")


@dataclass(frozen=True)
class Delivery:
    key: str
    #: The message's starts that never returned ("when, on which worker"), this one last.
    starts: tuple[str, ...]
    #: What RabbitMQ counted of the earlier deliveries, when it says.
    broker_counts: dict[str, int] = field(default_factory=dict)

    @property
    def died(self) -> int:
        """Earlier runs of this message that never returned: their worker died."""
        return len(self.starts) - 1

    def poisoned(self, limit: int) -> bool:
        """Delivered more than ``limit`` times, this time included: not to be run again."""
        return len(self.starts) > limit

    def history(self) -> str:
        """What a poison message's dead letter shows in place of a traceback."""
        lines = [f"delivery {n}: started {start}; the worker died" for n, start in enumerate(self.starts[:-1], 1)]
        lines.append(f"delivery {len(self.starts)}: {self.starts[-1]}; not run, dead-lettered")
        lines += [f"RabbitMQ's {name}: {count}" for name, count in self.broker_counts.items()]
        return "\n".join(lines)


class PoisonMessage(Exception):
    """A message whose worker died in every run: dead-lettered with its delivery history."""

    def __init__(self, delivery: Delivery) -> None:
        super().__init__(f"delivered {delivery.died} times, the worker died each time; not run again")
        self.delivery = delivery


def start(rt: Runtime, request: Any) -> Delivery | None:
    """Write down this start of the task's message; None when it cannot be counted."""
    if rt.redis is None or not request.id:
        return None
    key = f"{rt.settings.redis_key_prefix}deliveries:{request.id}"
    entry = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} on {request.hostname} (pid {os.getpid()})"
    try:
        pipe = rt.redis.pipeline(transaction=False)
        pipe.rpush(key, entry)
        pipe.expire(key, KEPT_S)
        pipe.lrange(key, 0, -1)
        *_, starts = pipe.execute()
    except redis.RedisError:
        # Not evidence of poison: the run goes ahead, and the broker's delivery limit stays the backstop.
        log.warning("could not count this delivery; running it uncounted", exc_info=True)
        return None
    counts = {name: request.get(name) for name in BROKER_COUNTS if isinstance(request.get(name), int)}
    delivery = Delivery(key, tuple(s.decode() if isinstance(s, bytes) else s for s in starts), counts)
    if delivery.died:
        log.warning("started again after its worker died", extra={"deliveries": len(delivery.starts)})
    return delivery


def finish(rt: Runtime, delivery: Delivery) -> None:
    """The run returned, so it was no crash: the message's starts no longer count."""
    try:
        if rt.redis is not None:
            rt.redis.delete(delivery.key)
    except redis.RedisError:
        # At worst the message, if delivered again within a day, counts this start once too often.
        log.warning("could not wipe this delivery's count", exc_info=True)
