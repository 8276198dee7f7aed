"""The benchmark's baseline: a bare chain of no-op tasks through the saga's queues.

``offers-workers bench`` sends ``chain(hop × 4, finish)`` with each hop on one stage queue, so the
same worker processes and pools carry it as carry the saga. Nothing here touches Postgres or a
partner: it is the upper bound a chain of Celery tasks can reach on this broker and fleet.
"""

from __future__ import annotations

import time

from offers_workers.runtime import get_runtime
from tasks.app import app


@app.task(name="offers.bench.hop")
def hop() -> None:
    return None


@app.task(name="offers.bench.finish")
def finish(run_key: str, sent_at: float) -> None:
    # One Redis push per chain: how the benchmark counts finished chains and their latency.
    client = get_runtime().required_redis
    client.rpush(run_key, f"{sent_at:.6f} {time.time():.6f}")
    client.expire(run_key, 3600)
