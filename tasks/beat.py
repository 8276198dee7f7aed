"""The single beat's scheduler: RedBeat (one beat holds a lock in Redis), made to survive a Redis
that lost its data.

RedBeat keeps the schedule and its lock in Redis. After a FLUSHALL, or a failover to a replica
without them, plain RedBeat stops sending anything (its schedule is empty) or dies extending a
lock that is gone. The recovery sweep is what completes offers after such a loss, so the beat
must notice, take its lock back and lay the schedule down again. While the master is unreachable
(seconds, during a Sentinel failover) it keeps trying instead of exiting.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import redis
from redbeat import RedBeatScheduler
from redbeat.schedulers import acquire_distributed_beat_lock, get_redis

log = logging.getLogger(__name__)

#: Seconds between tries while Redis cannot be reached (a Sentinel failover takes a few).
UNREACHABLE_RETRY_S = 1.0


class OffersBeatScheduler(RedBeatScheduler):
    #: The schedule is in Redis as this beat's configuration has it (False: laying it down failed).
    _schedule_laid = True

    def setup_schedule(self) -> None:
        # Also called while the scheduler is built: a beat (re)started mid-failover would exit.
        try:
            super().setup_schedule()
            self._schedule_laid = True
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            log.warning("beat: Redis unreachable (%s) laying down the schedule; trying again", type(exc).__name__)
            self._schedule_laid = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            return self._tick(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Celery's beat exits on any error out of a tick: a master that died would take the
            # beat with it. The lock's timeout outlasts a failover, so this beat keeps it meanwhile.
            log.warning("beat: Redis unreachable (%s); trying again", type(exc).__name__)
            return UNREACHABLE_RETRY_S

    def _tick(self, *args: Any, **kwargs: Any) -> float:
        if self.lock is None and self.lock_key:
            # Waiting for the lock at start-up failed (a standby whose Redis went away): wait again,
            # or this beat would run beside the one that holds it.
            log.warning("beat: waiting for the lock again")
            acquire_distributed_beat_lock(SimpleNamespace(scheduler=self))
        if self.lock is not None and not self.lock.owned():
            # The lock key vanished. Take it back unless another beat already has: then stop, and
            # let the process manager start this one again as a standby (it waits for the lock).
            if not self.lock.acquire(blocking=False):
                raise SystemExit("beat: another beat holds the lock; stopping")
            log.warning("beat: lock was lost (Redis flushed?); re-acquired it")
        if not self._schedule_laid:
            self.setup_schedule()
        elif not get_redis(self.app).exists(self.app.redbeat_conf.statics_key):
            log.warning("beat: schedule missing from Redis (flushed?); laying it down again")
            self.setup_schedule()
        return super().tick(*args, **kwargs)
