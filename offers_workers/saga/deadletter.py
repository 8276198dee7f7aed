"""Durable dead-letter queues, one per stage, kept in Postgres (a Redis list would vanish with Redis).

Recording an entry and moving its offer to ``dead_lettered`` happen in one transaction. A dead-
lettered offer keeps its payment hold, so a replay can carry on where it stopped.
"""

from __future__ import annotations

import logging
from typing import Any

from offers_workers.domain import secrets, stage_tasks, states
from offers_workers.runtime import Runtime
from offers_workers.saga.decisions import Dispatch, traced
from offers_workers.store import audit_trail, dead_letters, offers

log = logging.getLogger(__name__)

#: Every dead-letter queue, by the ``stage`` of the tasks that fill it: the saga's stages, then the
#: rest of tasks/, as declared (``domain.stage_tasks``). `dlq --stage` offers these, and OffersTask
#: refuses any other stage.
STAGES = stage_tasks.STAGES


def offer_id_of(kwargs: dict[str, Any]) -> str | None:
    """The offer a task's message is about: its ``offer_id``, or the id inside a submit's ``offer``."""
    offer_id = kwargs.get("offer_id")
    if not isinstance(offer_id, str):
        offer = kwargs.get("offer")
        offer_id = offer.get("offer_id") if isinstance(offer, dict) else None
    # A message's kwargs are whatever its sender wrote: anything but a string names no offer.
    return offer_id if isinstance(offer_id, str) else None


def record(
    rt: Runtime,
    *,
    stage: str,
    task_name: str,
    kwargs: dict[str, Any],
    error: BaseException,
    traceback_text: str,
    attempts: int,
    from_state: states.State | None,
) -> int:
    """Record a stage run that failed for good and move its offer to ``dead_lettered``; the entry's id."""
    offer_id = offer_id_of(kwargs)
    with rt.db.transaction() as conn:
        entry_id = dead_letters.record_failure(
            conn,
            stage=stage,
            task_name=task_name,
            offer_id=offer_id,
            # Sealed, not removed: a replay re-sends them (an offers.submit's offer holds its Plaid token).
            kwargs=rt.settings.payment_keys.seal_within(kwargs),
            error_type=type(error).__name__,
            error_message=secrets.redact_text(str(error)[:2000]),
            traceback_text=secrets.redact_text(traceback_text),
            attempts=attempts,
        )
        if offer_id and from_state:
            offers.transition(
                conn,
                offer_id,
                from_state,
                states.DEAD_LETTERED,
                actor=task_name,
                data={"dead_letter_id": entry_id, "error_type": type(error).__name__},
            )
    return entry_id


def claim_for_replay(rt: Runtime, entry_id: int, *, actor: str = "cli") -> Dispatch | None:
    """Mark a pending entry replayed and put its offer back where the stage found it.

    Returns the message to re-send (same kwargs, so the same idempotency keys), or None when the
    entry is not pending or another replay holds it: replaying twice, or from two terminals at
    once, processes it once.
    """
    with rt.db.transaction() as conn:
        found = dead_letters.peek(conn, entry_id)
        if found is None:
            return None
        # Lock the offer before the entry, in the same order as a cancel does: no deadlock between them.
        offer = offers.load_offer(conn, found.offer_id, for_update=True) if found.offer_id else None
        entry = dead_letters.lock_pending(conn, entry_id)
        if entry is None:
            return None
        # Opened before anything changes: a key missing from the ring leaves the entry pending.
        kwargs = rt.settings.payment_keys.open_within(entry.kwargs)
        stage = states.STAGE_BY_NAME.get(entry.stage)
        if stage and offer is not None:
            if offer.state != states.DEAD_LETTERED:
                # The offer moved on (cancelled, or resumed some other way): nothing left to replay.
                dead_letters.discard(conn, entry_id, resolution=f"offer is {offer.state}")
                return None
            offers.transition(
                conn,
                offer.offer_id,
                states.DEAD_LETTERED,
                stage.from_state,
                actor=actor,
                data={"dead_letter_id": entry_id},
            )
        dead_letters.mark_replayed(conn, entry_id)
        audit_trail.record_audit(
            conn, entry.offer_id, "dead_letter_replayed", actor=actor, data={"dead_letter_id": entry_id}
        )
    # The replay, however many days later, is a span of the offer's own trace.
    trace_parent = offer.trace_parent if offer is not None else None
    return traced(Dispatch(entry.task_name, kwargs), trace_parent, "dlq replay")


def discard(rt: Runtime, entry_id: int, *, reason: str, actor: str = "cli") -> bool:
    """Close a pending entry without replaying it; the offer stays dead-lettered (holds: `holds release`)."""
    with rt.db.transaction() as conn:
        discarded = dead_letters.discard(conn, entry_id, resolution=reason)
        if discarded is None:
            return False
        audit_trail.record_audit(
            conn,
            discarded.offer_id,
            "dead_letter_discarded",
            actor=actor,
            reason=reason,
            data={"dead_letter_id": entry_id},
        )
    return True
