"""Durable dead-letter queues, one per stage, kept in Postgres (a Redis list would vanish with Redis).

Recording an entry and moving its offer to ``dead_lettered`` happen in one transaction. A dead-
lettered offer keeps its payment hold, so a replay can carry on where it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from offers_workers import store
from offers_workers.domain import states
from offers_workers.runtime import Runtime
from offers_workers.saga.stages import Dispatch

log = logging.getLogger(__name__)

#: Every dead-letter queue, by the ``stage`` of the tasks that fill it: the saga's stages, then the
#: rest of tasks/. The one list: `dlq --stage` offers these, and OffersTask refuses any other stage.
STAGES = (*states.STAGE_BY_NAME, "intake", "cancellation", "events", "compensation", "maintenance")


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
        values = (type(error).__name__, str(error)[:2000], traceback_text, attempts)
        # A replayed entry that fails again comes back (its replay count kept), not a second entry.
        row = None
        if offer_id:
            row = conn.execute(
                """
                UPDATE dead_letters SET status = 'pending', resolved_at = NULL, resolution = NULL,
                    error_type = %s, error_message = %s, traceback = %s, attempts = attempts + %s,
                    last_failed_at = clock_timestamp()
                WHERE id = (SELECT id FROM dead_letters WHERE stage = %s AND offer_id = %s
                            AND status IN ('pending', 'replayed') ORDER BY id DESC LIMIT 1)
                RETURNING id
                """,
                (*values, stage, offer_id),
            ).fetchone()
        if row is None:
            row = conn.execute(
                "INSERT INTO dead_letters (stage, task_name, offer_id, kwargs, error_type, error_message, traceback, attempts)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (stage, task_name, offer_id, Jsonb(kwargs), *values),
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


#: Entries of a stage (or every stage) in a status (or any), unordered: `entries` and `dlq list` read them.
ENTRIES = sql.SQL(
    "SELECT id, stage, task_name, offer_id, kwargs, error_type, error_message, attempts, first_failed_at,"
    " last_failed_at, replay_count, status, resolution FROM dead_letters"
    " WHERE (%(stage)s::text IS NULL OR stage = %(stage)s) AND (%(status)s::text IS NULL OR status = %(status)s)"
)


def entries(
    conn: psycopg.Connection, *, stage: str | None = None, status: str | None = "pending"
) -> list[dict[str, Any]]:
    return conn.execute(sql.SQL("{} ORDER BY id").format(ENTRIES), {"stage": stage, "status": status}).fetchall()


def entry(conn: psycopg.Connection, entry_id: int) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM dead_letters WHERE id = %s", (entry_id,)).fetchone()


def claim_for_replay(rt: Runtime, entry_id: int, *, actor: str = "cli") -> Dispatch | None:
    """Mark a pending entry replayed and put its offer back where the stage found it.

    Returns the message to re-send (same kwargs, so the same idempotency keys), or None when the
    entry is not pending or another replay holds it: replaying twice, or from two terminals at
    once, processes it once.
    """
    with rt.db.transaction() as conn:
        peek = conn.execute("SELECT offer_id FROM dead_letters WHERE id = %s", (entry_id,)).fetchone()
        if peek is None:
            return None
        # Lock the offer before the entry, in the same order as a cancel does: no deadlock between them.
        offer = store.load_offer(conn, peek["offer_id"], for_update=True) if peek["offer_id"] else None
        row = conn.execute(
            "SELECT * FROM dead_letters WHERE id = %s AND status = 'pending' FOR UPDATE SKIP LOCKED", (entry_id,)
        ).fetchone()
        if row is None:
            return None
        stage = states.STAGE_BY_NAME.get(row["stage"])
        if stage and offer is not None:
            if offer.state != states.DEAD_LETTERED:
                # The offer moved on (cancelled, or resumed some other way): nothing left to replay.
                conn.execute(
                    "UPDATE dead_letters SET status = 'discarded', resolved_at = clock_timestamp(), resolution = %s WHERE id = %s",
                    (f"offer is {offer.state}", entry_id),
                )
                return None
            store.transition(
                conn,
                row["offer_id"],
                states.DEAD_LETTERED,
                stage.from_state,
                actor=actor,
                data={"dead_letter_id": entry_id},
            )
        conn.execute(
            "UPDATE dead_letters SET status = 'replayed', replay_count = replay_count + 1, resolved_at = clock_timestamp(),"
            " resolution = 'replayed' WHERE id = %s",
            (entry_id,),
        )
        store.record_audit(
            conn, row["offer_id"], "dead_letter_replayed", actor=actor, data={"dead_letter_id": entry_id}
        )
    return Dispatch(row["task_name"], row["kwargs"])


def discard(rt: Runtime, entry_id: int, *, reason: str, actor: str = "cli") -> bool:
    """Close a pending entry without replaying it; the offer stays dead-lettered (holds: `holds release`)."""
    with rt.db.transaction() as conn:
        row = conn.execute(
            "UPDATE dead_letters SET status = 'discarded', resolved_at = clock_timestamp(), resolution = %s"
            " WHERE id = %s AND status = 'pending' RETURNING offer_id",
            (reason, entry_id),
        ).fetchone()
        if row is None:
            return False
        store.record_audit(
            conn,
            row["offer_id"],
            "dead_letter_discarded",
            actor=actor,
            reason=reason,
            data={"dead_letter_id": entry_id},
        )
    return True
