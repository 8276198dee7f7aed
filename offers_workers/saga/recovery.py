"""Recovery: a lost message, a flushed Redis or a dead worker delays an offer, never loses it.

Postgres knows where every offer stands. A periodic sweep re-sends the stage of offers that have
sat in an open state too long, publishes outbox events still unpublished, and releases holds of
offers that ended without their release being recorded. Every stage is idempotent, so re-sending
work that was merely slow costs a duplicate message, nothing more.
"""

from __future__ import annotations

from offers_workers.domain import states
from offers_workers.runtime import Runtime
from offers_workers.saga.stages import PUBLISH_EVENT_TASK, RELEASE_HOLD_TASK, Dispatch, hand_on

#: Why a hold was released by the authorization-window job (audit trail, `holds list`).
AUTHORIZATION_WINDOW = "authorization_window"

#: At most this many offers are re-sent per sweep, so a backlog drains without a flood.
BATCH = 500


def sweep(rt: Runtime, *, stuck_after_s: float) -> list[Dispatch]:
    params = {"open": list(states.OPEN), "ended": list(states.TERMINAL), "age": stuck_after_s, "batch": BATCH}
    with rt.db.transaction() as conn:
        # The re-send counts as a pending retry: an offer that is merely queued behind a backlog
        # gets one more message per `age`, not one per sweep; SKIP LOCKED lets two sweeps overlap.
        stuck = conn.execute(
            "UPDATE offers SET retry_due_at = clock_timestamp() WHERE offer_id IN ("
            " SELECT offer_id FROM offers WHERE state = ANY(%(open)s)"
            " AND updated_at < clock_timestamp() - make_interval(secs => %(age)s)"
            " AND (retry_due_at IS NULL OR retry_due_at < clock_timestamp() - make_interval(secs => %(age)s))"
            " ORDER BY updated_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
            " RETURNING offer_id, state",
            params,
        ).fetchall()
        events = conn.execute(
            "UPDATE offer_events SET resent_at = clock_timestamp() WHERE event_id IN ("
            " SELECT event_id FROM offer_events WHERE published_at IS NULL"
            " AND created_at < clock_timestamp() - make_interval(secs => %(age)s)"
            " AND (resent_at IS NULL OR resent_at < clock_timestamp() - make_interval(secs => %(age)s))"
            " ORDER BY created_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
            " RETURNING event_id",
            params,
        ).fetchall()
        holds = conn.execute(
            "UPDATE offers SET retry_due_at = clock_timestamp() WHERE offer_id IN ("
            " SELECT offer_id FROM offers WHERE hold_status = 'held' AND state = ANY(%(ended)s)"
            " AND updated_at < clock_timestamp() - make_interval(secs => %(age)s)"
            " AND (retry_due_at IS NULL OR retry_due_at < clock_timestamp() - make_interval(secs => %(age)s))"
            " LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
            " RETURNING offer_id",
            params,
        ).fetchall()
    dispatches = [d for row in stuck for d in hand_on(row["offer_id"], row["state"])]
    dispatches += [Dispatch(PUBLISH_EVENT_TASK, {"event_id": row["event_id"]}) for row in events]
    dispatches += [Dispatch(RELEASE_HOLD_TASK, {"offer_id": row["offer_id"]}) for row in holds]
    return dispatches


def expiring_holds(rt: Runtime, *, older_than_s: float) -> list[Dispatch]:
    """Release holds placed longer ago than ``older_than_s``, whatever their offer's state: an
    authorization Stripe lets lapse is worth nothing, and a released one is at least on record."""
    with rt.db.transaction() as conn:
        rows = conn.execute(
            "SELECT offer_id FROM offers WHERE hold_status = 'held'"
            " AND payment_held_at < clock_timestamp() - make_interval(secs => %s) ORDER BY payment_held_at LIMIT %s",
            (older_than_s, BATCH),
        ).fetchall()
    return [Dispatch(RELEASE_HOLD_TASK, {"offer_id": row["offer_id"], "reason": AUTHORIZATION_WINDOW}) for row in rows]
