"""Soft launch: a global token bucket in Redis that every intake worker shares (Celery's own
``rate_limit`` is per worker), and an optional maker allow-list. Over the rate, an offer waits and
goes through later; it is never rejected for the rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

# Refill by elapsed time on Redis's clock (one clock for the whole fleet), then take a token if
# there is one; otherwise answer how long until there will be.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
return tostring(wait)
"""


@dataclass(frozen=True)
class Admission:
    admitted: bool
    #: Seconds until a token is free (when not admitted for the rate).
    wait_s: float = 0.0
    #: The maker is not on the soft-launch allow-list.
    refused: bool = False


class SoftLaunch:
    def __init__(
        self, client: redis.Redis, *, key_prefix: str, rate: float, burst: int, makers: frozenset[str]
    ) -> None:
        self.key = f"{key_prefix}soft-launch:bucket"
        self.rate = rate
        self.burst = burst
        self.makers = makers
        self._take = client.register_script(_TAKE)

    def admit(self, maker_id: str, *, exempt: bool = False) -> Admission:
        """``exempt``: admitted whatever the allow-list (the synthetic journey's maker); the rate applies."""
        if self.makers and maker_id not in self.makers and not exempt:
            return Admission(False, refused=True)
        wait = float(self._take(keys=[self.key], args=[self.rate, self.burst]))
        return Admission(wait == 0, wait_s=wait)
