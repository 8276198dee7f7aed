"""Offer rows, guarded state transitions, the audit trail and the event outbox.

A transition is ``UPDATE … WHERE state = expected`` plus its audit event in the caller's
transaction: a redelivered task finds the state already moved and changes nothing.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from offers_workers.domain import states
from offers_workers.domain.payload import FieldError, OfferPayload, body_sha256

#: The stage timestamp column each state sets when an offer first enters it.
STATE_TIMESTAMP = {
    states.VALIDATED: "validated_at",
    states.PAYMENT_HELD: "payment_held_at",
    states.RISK_CLEARED: "risk_cleared_at",
    states.AUCTION_TRIGGERED: "auction_triggered_at",
    states.SUBMITTED: "completed_at",
    states.REJECTED: "rejected_at",
    states.CANCELLED: "cancelled_at",
    states.DEAD_LETTERED: "dead_lettered_at",
}
#: Stamps that move to the latest entry: an offer dead-lettered again has waited since then. Every
#: other stamp keeps the first entry (see ``transition``).
RESTAMPED = frozenset({"dead_lettered_at"})
#: Columns a stage may set along with its transition.
SETTABLE = frozenset({"payment_intent_id", "hold_status", "risk_score", "return_risk_score", "reason"})

#: Namespace for event ids: stable per offer and event type, so consumers can drop repeats.
EVENT_NAMESPACE = uuid.UUID("6f2b3c1e-8d0a-4f6e-9b1c-0ffe25000001")


@dataclass(frozen=True)
class Offer:
    offer_id: str
    state: str
    reason: str | None
    payload: OfferPayload
    payment_intent_id: str | None
    hold_status: str
    risk_score: float | None
    row: dict[str, Any]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Offer:
        return cls(
            offer_id=row["offer_id"],
            state=row["state"],
            reason=row["reason"],
            payload=OfferPayload.model_validate(row["payload"]),
            payment_intent_id=row["payment_intent_id"],
            hold_status=row["hold_status"],
            risk_score=row["risk_score"],
            row=row,
        )


def load_offer(conn: psycopg.Connection, offer_id: str, *, for_update: bool = False) -> Offer | None:
    query = "SELECT * FROM offers WHERE offer_id = %s" + (" FOR UPDATE" if for_update else "")
    row = conn.execute(query, (offer_id,)).fetchone()
    return Offer.from_row(row) if row else None


def insert_offer(conn: psycopg.Connection, offer: OfferPayload, raw: dict[str, Any], *, actor: str) -> bool:
    """Record a new offer as ``received``; False when the offer_id exists already."""
    # The row and its audit event in one statement (one round trip).
    row = conn.execute(
        """
        WITH inserted AS (
            INSERT INTO offers (offer_id, listing_id, maker_id, buyer_id, amount_cents, currency,
                                payment_method, payload, body_sha256, synthetic, state)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (offer_id) DO NOTHING
            RETURNING offer_id, state)
        INSERT INTO audit_events (offer_id, kind, to_state, actor, data)
        SELECT offer_id, 'transition', state, %s, '{}'::jsonb FROM inserted
        RETURNING offer_id
        """,
        (
            offer.offer_id,
            offer.listing_id,
            offer.maker_id,
            offer.buyer_id,
            offer.amount_cents,
            offer.currency,
            offer.payment.method,
            Jsonb(offer.model_dump(mode="json")),
            body_sha256(raw),
            offer.synthetic,
            states.RECEIVED,
            actor,
        ),
    ).fetchone()
    return row is not None


def transition(
    conn: psycopg.Connection,
    offer_id: str,
    from_state: str,
    to_state: str,
    *,
    actor: str,
    reason: str | None = None,
    fields: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Move the offer from ``from_state`` to ``to_state`` if it is still there; audit it.

    Returns False (and changes nothing) when the offer is no longer in ``from_state``.
    """
    states.check_transition(from_state, to_state)
    values: dict[str, Any] = dict(fields or {})
    if reason is not None:
        values["reason"] = reason
    unknown = set(values) - SETTABLE
    if unknown:
        raise ValueError(f"not settable by a transition: {sorted(unknown)}")
    assignments = [sql.SQL("state = {}").format(sql.Literal(to_state))]
    assignments += [sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values]
    stamp = STATE_TIMESTAMP.get(to_state)
    if stamp in RESTAMPED:
        assignments.append(sql.SQL("{} = clock_timestamp()").format(sql.Identifier(stamp)))
    elif stamp:
        # A replay re-enters a state without re-running the stage that produced it: keep when that
        # stage really finished (the hold watch's clock, and honest stage latencies and auction lag).
        assignments.append(sql.SQL("{0} = coalesce({0}, clock_timestamp())").format(sql.Identifier(stamp)))
    assignments.append(sql.SQL("updated_at = clock_timestamp()"))
    # The move and its audit row in one statement: one round trip, and the audit chain's lock is
    # taken as late as possible in the transaction.
    query = sql.SQL(
        "WITH moved AS ("
        " UPDATE offers SET {} WHERE offer_id = %(offer_id)s AND state = %(from_state)s RETURNING offer_id)"
        " INSERT INTO audit_events (offer_id, kind, from_state, to_state, reason, actor, data)"
        " SELECT offer_id, 'transition', %(from_state)s, %(to_state)s, %(reason)s, %(actor)s, %(data)s FROM moved"
        " RETURNING offer_id"
    ).format(sql.SQL(", ").join(assignments))
    params = {
        **values,
        "offer_id": offer_id,
        "from_state": from_state,
        "to_state": to_state,
        "reason": reason,
        "actor": actor,
        "data": Jsonb(data or {}),
    }
    return conn.execute(query, params).fetchone() is not None


def record_audit(
    conn: psycopg.Connection,
    offer_id: str | None,
    kind: str,
    *,
    actor: str,
    from_state: str | None = None,
    to_state: str | None = None,
    reason: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        "INSERT INTO audit_events (offer_id, kind, from_state, to_state, reason, actor, data)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (offer_id, kind, from_state, to_state, reason, actor, Jsonb(data or {})),
    )


def audit_trail(conn: psycopg.Connection, offer_id: str) -> list[dict[str, Any]]:
    return conn.execute(
        "SELECT id, at, kind, from_state, to_state, reason, actor, data FROM audit_events"
        " WHERE offer_id = %s ORDER BY id",
        (offer_id,),
    ).fetchall()


def record_intake_rejection(
    conn: psycopg.Connection,
    *,
    reason: str,
    errors: list[FieldError],
    raw_body: str,
    raw_size: int,
    offer_id: str | None,
    task_id: str | None,
) -> int:
    row = conn.execute(
        "INSERT INTO intake_rejections (task_id, offer_id, reason, errors, raw_body, raw_size)"
        " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (task_id, offer_id, reason, Jsonb([e.model_dump() for e in errors]), raw_body, raw_size),
    ).fetchone()
    return row["id"]


def event_id(offer_id: str, detail_type: str) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{offer_id}/{detail_type}"))


def build_event(offer: Offer, detail_type: str, *, state: str, reason: str | None) -> dict[str, Any]:
    p = offer.payload
    return {
        "event_id": event_id(offer.offer_id, detail_type),
        "offer_id": offer.offer_id,
        "listing_id": p.listing_id,
        "maker_id": p.maker_id,
        "state": state,
        "reason": reason,
        "amount_cents": p.amount_cents,
        "currency": p.currency,
        "payment_method": p.payment.method,
        "synthetic": p.synthetic,
    }


def add_outbox_event(conn: psycopg.Connection, detail: dict[str, Any], detail_type: str, *, published: bool) -> None:
    """Keep the event in the outbox (idempotent by event_id); ``published`` when already sent."""
    conn.execute(
        "INSERT INTO offer_events (event_id, offer_id, detail_type, detail, published_at)"
        " VALUES (%s, %s, %s, %s, CASE WHEN %s THEN clock_timestamp() END)"
        " ON CONFLICT (event_id) DO UPDATE SET published_at ="
        "   COALESCE(offer_events.published_at, EXCLUDED.published_at)",
        (detail["event_id"], detail["offer_id"], detail_type, Jsonb(detail), published),
    )


def load_outbox_event(conn: psycopg.Connection, event_id_: str) -> dict[str, Any] | None:
    return conn.execute("SELECT * FROM offer_events WHERE event_id = %s", (event_id_,)).fetchone()


def mark_event_published(conn: psycopg.Connection, event_id_: str) -> None:
    conn.execute(
        "UPDATE offer_events SET published_at = clock_timestamp() WHERE event_id = %s AND published_at IS NULL",
        (event_id_,),
    )


def offer_summary(row: dict[str, Any]) -> dict[str, Any]:
    """The JSON an operator sees for one offer (`offers show --json`, `offers list --json`)."""

    def ms_between(a: str, b: str) -> float | None:
        if row.get(a) and row.get(b):
            return round((row[b] - row[a]).total_seconds() * 1000, 1)
        return None

    return {
        "offer_id": row["offer_id"],
        "state": row["state"],
        "reason": row["reason"],
        "amount_cents": row["amount_cents"],
        "currency": row["currency"].strip(),
        "listing_id": row["listing_id"],
        "maker_id": row["maker_id"],
        "buyer_id": row["buyer_id"],
        "payment_method": row["payment_method"],
        "payment_intent_id": row["payment_intent_id"],
        "hold_status": row["hold_status"],
        "risk_score": row["risk_score"],
        "return_risk_score": row["return_risk_score"],
        "synthetic": row["synthetic"],
        "received_at": row["received_at"].isoformat(),
        "updated_at": row["updated_at"].isoformat(),
        "auction_lag_ms": ms_between("received_at", "auction_triggered_at"),
    }


def offer_history(conn: psycopg.Connection, offer_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT to_state, at, reason, actor FROM audit_events WHERE offer_id = %s AND kind = 'transition' ORDER BY id",
        (offer_id,),
    ).fetchall()
    return [{"state": r["to_state"], "at": r["at"].isoformat(), "reason": r["reason"], "by": r["actor"]} for r in rows]
