"""The product funnel's send queue, flushed when a worker process stops (Segment, best effort).

Loaded by every worker through ``tasks.intake``. A prefork child sends its own events (its Segment
thread is its own) and flushes them in ``worker_process_shutdown``; a thread-pool or solo worker
does in ``worker_shutdown``. The flush waits a few seconds at most; what is left is counted unsent.
"""

from __future__ import annotations

import logging

from celery import signals

from offers_workers.runtime import get_runtime

log = logging.getLogger("offers_workers.funnel")


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def flush_funnel(**_: object) -> None:
    try:
        funnel = get_runtime().funnel
        if funnel is not None:
            funnel.flush(timeout_s=5.0)
    except Exception:
        # A worker on its way out must still exit: the funnel is never worth a hang or a crash here.
        log.warning("could not flush the funnel", exc_info=True)
