"""Retry policy per stage: how often and how patiently a transient failure is retried.

Countdowns stay short (well under the broker's visibility timeout) and are spent by the broker,
never by a sleeping worker. When the attempts run out the stage goes to its dead-letter queue.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from offers_workers.domain import stage_tasks
from offers_workers.domain.stage_tasks import RetryKind


@dataclass(frozen=True)
class RetryPolicy:
    #: Retries after the first attempt.
    max_retries: int
    #: Countdown of the first retry, in seconds; doubles on every further retry.
    base_delay: float
    #: The longest countdown, in seconds.
    max_delay: float
    #: Full jitter: the countdown is drawn from [delay / 2, delay] so retries do not stampede.
    jitter: bool = True

    def countdown(self, retries_done: int) -> float:
        delay = min(self.max_delay, self.base_delay * (2**retries_done))
        return random.uniform(delay / 2, delay) if self.jitter else delay


#: Our own work (intake, validation, the audit check): about a minute and a half of trouble.
BRIEF = RetryPolicy(max_retries=8, base_delay=0.5, max_delay=30)

#: Partner stages ride out about ten minutes of trouble (1+2+…+32 s, then 60 s steps) before the
#: DLQ: a 30 % error rate on every partner then dead-letters roughly one offer in 100,000.
PARTNER = RetryPolicy(max_retries=16, base_delay=1, max_delay=60)

#: A periodic job: its next run picks up what this one left.
PERIODIC = RetryPolicy(max_retries=5, base_delay=0.5, max_delay=30)

BY_KIND: dict[RetryKind, RetryPolicy] = {"brief": BRIEF, "partner": PARTNER, "periodic": PERIODIC}

#: Per stage (DLQ stage names), for a partner's transient errors: each stage's declared kind.
POLICIES: dict[str, RetryPolicy] = {stage: BY_KIND[kind] for stage, kind in stage_tasks.STAGE_RETRY.items()}

#: Our own stores away (Postgres restarting, Redis failing over): about twenty minutes at the cap.
#: The DLQ lives in Postgres, so this budget is spent before an outage can dead-letter anything.
STORE_OUTAGE = RetryPolicy(max_retries=40, base_delay=0.5, max_delay=30)

#: The longest a message can wait for its retry; the broker's visibility timeout must exceed it.
LONGEST_COUNTDOWN = max(p.max_delay for p in [*POLICIES.values(), STORE_OUTAGE])


def policy_for(stage: str) -> RetryPolicy:
    """The stage's policy; a stage not declared (``offers_workers.domain.stage_tasks``) is a KeyError."""
    return POLICIES[stage]
