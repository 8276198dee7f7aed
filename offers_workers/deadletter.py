"""Durable dead-letter queues, one per stage, kept in Postgres (a Redis list would vanish with Redis).

Recording an entry and moving its offer to ``dead_lettered`` happen in one transaction. A dead-
lettered offer keeps its payment hold, so a replay can carry on where it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg.types.json import Jsonb

from offers_workers import states, store
from offers_workers.runtime import Runtime

log = logging.getLogger(__name__)


def record(
    rt: Runtime,
    *,
    stage: str,
    task_name: str,
    kwargs: dict[str, Any],
    error: BaseException,
    traceback_text: str,
    attempts: int,
    from_state: str | None,
) -> int:
    offer_id = kwargs.get("offer_id") if isinstance(kwargs.get("offer_id"), str) else None
    if offer_id is None and isinstance(kwargs.get("offer"), dict):
        offer_id = kwargs["offer"].get("offer_id") if isinstance(kwargs["offer"].get("offer_id"), str) else None
    with rt.db.transaction() as conn:
        row = conn.execute(
            """
            INSERT INTO dead_letters (stage, task_name, offer_id, kwargs, error_type, error_message, traceback, attempts)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (stage, offer_id) WHERE status = 'pending' DO UPDATE SET
                error_type = EXCLUDED.error_type, error_message = EXCLUDED.error_message,
                traceback = EXCLUDED.traceback, attempts = dead_letters.attempts + EXCLUDED.attempts,
                last_failed_at = clock_timestamp()
            RETURNING id
            """,
            (stage, task_name, offer_id, Jsonb(kwargs), type(error).__name__, str(error)[:2000], traceback_text, attempts),
        ).fetchone()
        if offer_id and from_state:
            store.transition(
                conn,
                offer_id,
                from_state,
                states.DEAD_LETTERED,
                actor=task_name,
                data={"dead_letter_id": row["id"], "error_type": type(error).__name__},
            )
    return row["id"]
