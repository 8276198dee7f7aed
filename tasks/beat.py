"""The single beat's scheduler: RedBeat (one beat holds a lock in Redis), made to survive a Redis
that lost its data.

RedBeat keeps the schedule and its lock in Redis. After a FLUSHALL, or a failover to a replica
without them, plain RedBeat stops sending anything (its schedule is empty) or dies extending a
lock that is gone. The recovery sweep is what completes offers after such a loss, so the beat
must notice, take its lock back and lay the schedule down again.
"""

from __future__ import annotations

import logging
from typing import Any

from redbeat import RedBeatScheduler
from redbeat.schedulers import get_redis

log = logging.getLogger(__name__)


class OffersBeatScheduler(RedBeatScheduler):
    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self.lock is not None and not self.lock.owned():
            # The lock key vanished. Take it back unless another beat already has: then stop, and
            # let the process manager start this one again as a standby (it waits for the lock).
            if not self.lock.acquire(blocking=False):
                raise SystemExit("beat: another beat holds the lock; stopping")
            log.warning("beat: lock was lost (Redis flushed?); re-acquired it")
        if not get_redis(self.app).exists(self.app.redbeat_conf.statics_key):
            log.warning("beat: schedule missing from Redis (flushed?); laying it down again")
            self.setup_schedule()
        return super().tick(*args, **kwargs)
