"""The event outbox: each offer event kept in Postgres until EventBridge has it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from offers_workers.domain.events import EventDetail, event_id
from offers_workers.store.db import Connection, typed
from offers_workers.store.offers import Offer


def build_event(offer: Offer, detail_type: str, *, state: str, reason: str | None) -> EventDetail:
    """The event's detail as partners see it."""
    p = offer.payload
    return EventDetail(
        event_id=event_id(offer.offer_id, detail_type),
        offer_id=offer.offer_id,
        listing_id=p.listing_id,
        maker_id=p.maker_id,
        state=state,
        reason=reason,
        amount_cents=p.amount_cents,
        currency=p.currency,
        payment_method=p.payment.method,
        synthetic=p.synthetic,
    )


def add_event(
    conn: Connection,
    detail: EventDetail,
    detail_type: str,
    *,
    published: bool,
    bus_event_id: str | None = None,
    sns_message_id: str | None = None,
) -> None:
    """Keep the event in the outbox (idempotent by event_id); ``published`` when already sent, with
    the ids EventBridge and SNS gave its delivery."""
    conn.execute(
        "INSERT INTO offer_events (event_id, offer_id, detail_type, detail, published_at, bus_event_id, sns_message_id)"
        " VALUES (%s, %s, %s, %s, CASE WHEN %s THEN clock_timestamp() END, %s, %s)"
        " ON CONFLICT (event_id) DO UPDATE SET published_at ="
        "   COALESCE(offer_events.published_at, EXCLUDED.published_at),"
        " bus_event_id = COALESCE(offer_events.bus_event_id, EXCLUDED.bus_event_id),"
        " sns_message_id = COALESCE(offer_events.sns_message_id, EXCLUDED.sns_message_id)",
        (
            detail.event_id,
            detail.offer_id,
            detail_type,
            Jsonb(detail.as_json()),
            published,
            bus_event_id,
            sns_message_id,
        ),
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event of an offer and what its delivery got back (None: not published yet, or no SNS topic)."""

    event_id: str
    detail_type: str
    published_at: datetime | None
    bus_event_id: str | None
    sns_message_id: str | None

    def as_json(self) -> dict[str, Any]:
        published_at = self.published_at.isoformat() if self.published_at else None
        return {
            "event_id": self.event_id,
            "detail_type": self.detail_type,
            "published_at": published_at,
            "bus_event_id": self.bus_event_id,
            "sns_message_id": self.sns_message_id,
        }


def offer_events(conn: Connection, offer_id: str) -> list[Delivery]:
    """The offer's events, oldest first, with what their delivery got back (``offers show``)."""
    return (
        typed(conn, Delivery)
        .execute(
            "SELECT event_id, detail_type, published_at, bus_event_id, sns_message_id FROM offer_events"
            " WHERE offer_id = %s ORDER BY created_at, event_id",
            (offer_id,),
        )
        .fetchall()
    )


@dataclass(frozen=True, slots=True)
class OfferEvent:
    """One event in the outbox: its detail as partners see it, and whether EventBridge has it."""

    event_id: str
    offer_id: str
    detail_type: str
    detail: dict[str, Any]
    published_at: datetime | None


def load_event(conn: Connection, event_id_: str) -> OfferEvent | None:
    return (
        typed(conn, OfferEvent)
        .execute(
            "SELECT event_id, offer_id, detail_type, detail, published_at FROM offer_events WHERE event_id = %s",
            (event_id_,),
        )
        .fetchone()
    )


def mark_published(
    conn: Connection, event_id_: str, *, bus_event_id: str | None = None, sns_message_id: str | None = None
) -> None:
    conn.execute(
        "UPDATE offer_events SET published_at = clock_timestamp(), bus_event_id = %s, sns_message_id = %s"
        " WHERE event_id = %s AND published_at IS NULL",
        (bus_event_id, sns_message_id, event_id_),
    )


def is_published(conn: Connection, offer_id: str, detail_type: str) -> bool:
    """Whether the offer's event of this type has reached EventBridge."""
    row = conn.execute(
        "SELECT published_at FROM offer_events WHERE offer_id = %s AND detail_type = %s", (offer_id, detail_type)
    ).fetchone()
    return bool(row and row["published_at"])


def claim_unpublished(conn: Connection, older_than_s: float, limit: int) -> list[tuple[str, str | None]]:
    """Events still unpublished ``older_than_s`` after they were written (or last re-sent), oldest
    first, marked as re-sent now, with their offer's traceparent; SKIP LOCKED lets two sweeps overlap."""
    rows = conn.execute(
        "UPDATE offer_events e SET resent_at = clock_timestamp() FROM offers o WHERE o.offer_id = e.offer_id"
        " AND e.event_id IN ("
        " SELECT event_id FROM offer_events WHERE published_at IS NULL"
        " AND created_at < clock_timestamp() - make_interval(secs => %(age)s)"
        " AND (resent_at IS NULL OR resent_at < clock_timestamp() - make_interval(secs => %(age)s))"
        " ORDER BY created_at LIMIT %(batch)s FOR UPDATE OF offer_events SKIP LOCKED)"
        " RETURNING e.event_id, o.trace_parent",
        {"age": older_than_s, "batch": limit},
    ).fetchall()
    return [(r["event_id"], r["trace_parent"]) for r in rows]
