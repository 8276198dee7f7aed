"""Offer rows and their guarded state transitions.

A transition is ``UPDATE … WHERE state = expected`` plus its audit event in the caller's
transaction: a redelivered task finds the state already moved and changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from offers_workers.domain import secrets, states
from offers_workers.domain.payload import BankAccountPayment, OfferPayload, body_sha256
from offers_workers.domain.secrets import PaymentKeys
from offers_workers.domain.states import HoldStatus, State
from offers_workers.store.db import Connection, typed
from offers_workers.tracing import trace_id_of

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
#: States past the last Plaid call (the risk stage): an offer entering one keeps no payment secret.
SECRETS_USED_UP = frozenset(
    {states.RISK_CLEARED, states.AUCTION_TRIGGERED, states.SUBMITTED, states.REJECTED, states.CANCELLED}
)
#: Replaces a bank-account offer's Plaid token and account id by ``[dropped]`` (the payload stays valid).
DROP_SECRETS = sql.SQL(
    "payload = CASE WHEN payload->'payment' ? 'plaid_access_token' THEN jsonb_set(jsonb_set(payload,"
    " '{payment,plaid_access_token}', '\"[dropped]\"'), '{payment,plaid_account_id}', '\"[dropped]\"')"
    " ELSE payload END"
)
#: Columns a stage may set along with its transition.
SETTABLE = frozenset({"payment_intent_id", "hold_status", "risk_score", "return_risk_score", "reason"})

#: The one definition of a stuck offer: open, no progress and no retry due for longer than
#: ``%(age)s`` seconds. The recovery sweep re-sends these; ``stats``, ``health`` and ``/metrics``
#: count them, with the same words, so the figure on-call sees is what the sweep acts on.
STUCK = sql.SQL(
    "state = ANY(%(open)s)"
    " AND updated_at < clock_timestamp() - make_interval(secs => %(age)s)"
    " AND (retry_due_at IS NULL OR retry_due_at < clock_timestamp() - make_interval(secs => %(age)s))"
)


def stuck_params(older_than_s: float) -> dict[str, Any]:
    """The parameters ``STUCK`` reads."""
    return {"open": list(states.OPEN), "age": older_than_s}


@dataclass(frozen=True, slots=True)
class Offer:
    """One offer as the saga reads it, with its payload parsed (its payment secrets sealed)."""

    offer_id: str
    state: State
    reason: str | None
    payload: OfferPayload
    payment_intent_id: str | None
    hold_status: HoldStatus
    risk_score: float | None
    #: Starts of the payment stage so far (1: the first, so no hold of the offer can exist yet).
    payment_attempts: int
    #: The intake span's W3C traceparent: a re-send or replay resumes the offer's trace with it.
    trace_parent: str | None
    #: The payment secrets as stored, sealed (``for_partners`` opens them).
    sealed_secrets: Mapping[str, str]

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Offer:
        """The offer from its ``offers`` row (``SELECT *``)."""
        stored = row["payload"].get("payment", {})
        return cls(
            offer_id=row["offer_id"],
            state=row["state"],
            reason=row["reason"],
            # Sealed secrets show as placeholders: only a partner call opens them (``for_partners``).
            payload=OfferPayload.model_validate(secrets.placeholders(row["payload"])),
            payment_intent_id=row["payment_intent_id"],
            hold_status=row["hold_status"],
            risk_score=row["risk_score"],
            payment_attempts=row["payment_attempts"],
            trace_parent=row["trace_parent"],
            sealed_secrets={f: stored[f] for f in secrets.SECRET_FIELDS if isinstance(stored.get(f), str)},
        )

    def for_partners(self, keys: PaymentKeys) -> OfferPayload:
        """The payload with its payment secrets opened, for the partner call that needs them (Plaid)."""
        payment = self.payload.payment
        if not isinstance(payment, BankAccountPayment):
            return self.payload
        opened = {field: keys.open(sealed) for field, sealed in self.sealed_secrets.items()}
        return self.payload.model_copy(update={"payment": payment.model_copy(update=opened)})


@dataclass(frozen=True, slots=True)
class OfferRecord:
    """One offer as an operator sees it (``offers show``, ``offers list``): what it is, where it
    stands, and when it got there; its payload left out."""

    offer_id: str
    listing_id: str
    maker_id: str
    buyer_id: str
    amount_cents: int
    #: As stored: ``char(3)``.
    currency: str
    payment_method: str
    synthetic: bool
    state: State
    reason: str | None
    payment_intent_id: str | None
    hold_status: HoldStatus
    risk_score: float | None
    return_risk_score: int | None
    received_at: datetime
    auction_triggered_at: datetime | None
    updated_at: datetime
    trace_parent: str | None


def offer_record(conn: Connection, offer_id: str) -> OfferRecord | None:
    """The offer as `offers show` prints it (``offer_summary``); None if there is none."""
    return typed(conn, OfferRecord).execute("SELECT * FROM offers WHERE offer_id = %s", (offer_id,)).fetchone()


def load_offer(conn: Connection, offer_id: str, *, for_update: bool = False) -> Offer | None:
    """The offer, optionally locked until the transaction ends; None if there is none."""
    query = "SELECT * FROM offers WHERE offer_id = %s" + (" FOR UPDATE" if for_update else "")
    row = conn.execute(query, (offer_id,)).fetchone()
    return Offer.from_row(row) if row else None


def start_payment(conn: Connection, offer_id: str) -> Offer | None:
    """The offer, counting this start of its payment stage in ``payment_attempts`` (1: the first
    start of all, so no hold of the offer can exist yet). None if there is no such offer."""
    # updated_at is left alone: a start is not progress (the recovery sweep reads it).
    row = conn.execute(
        "UPDATE offers SET payment_attempts = payment_attempts + 1 WHERE offer_id = %s RETURNING *", (offer_id,)
    ).fetchone()
    return Offer.from_row(row) if row else None


def offers_by_id(conn: Connection, offer_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Where each of these offers stands (state, reason, hold), by offer id; missing ones left out.
    For the demo's and the drills' checks, which compare them with what each sample expects."""
    rows = conn.cursor(row_factory=dict_row).execute(
        "SELECT offer_id, state, reason, hold_status, payment_intent_id FROM offers WHERE offer_id = ANY(%s)",
        (offer_ids,),
    )
    return {r["offer_id"]: r for r in rows}


def exists(conn: Connection, offer_id: str) -> bool:
    return conn.execute("SELECT 1 FROM offers WHERE offer_id = %s", (offer_id,)).fetchone() is not None


@dataclass(frozen=True)
class Submitted:
    """What intake needs of an offer already taken in, to tell a redelivery from a conflict."""

    body_sha256: str
    state: State


def submitted(conn: Connection, offer_id: str) -> Submitted | None:
    row = conn.execute("SELECT body_sha256, state FROM offers WHERE offer_id = %s", (offer_id,)).fetchone()
    return Submitted(row["body_sha256"], row["state"]) if row else None


def lock_offer_id(conn: Connection, offer_id: str) -> None:
    """Serialise cancel and submit of one offer id until the transaction ends (the row may not exist yet)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (offer_id,))


def insert_offer(
    conn: Connection,
    offer: OfferPayload,
    raw: dict[str, Any],
    *,
    actor: str,
    keys: PaymentKeys,
    trace_parent: str | None = None,
    data: dict[str, Any] | None = None,
) -> bool:
    """Record a new offer as ``received``; False when the offer_id exists already. ``trace_parent``:
    the intake span's W3C traceparent, kept so a re-send or replay resumes the offer's trace; ``data``
    goes on its audit row (who signed the message, when an upstream did). Its payment secrets are
    sealed with ``keys``; ``body_sha256`` is of the body as it came, so a re-send still matches."""
    # The row and its audit event in one statement (one round trip).
    row = conn.execute(
        """
        WITH inserted AS (
            INSERT INTO offers (offer_id, listing_id, maker_id, buyer_id, amount_cents, currency,
                                payment_method, payload, body_sha256, synthetic, state, trace_parent)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (offer_id) DO NOTHING
            RETURNING offer_id, state)
        INSERT INTO audit_events (offer_id, kind, to_state, actor, data)
        SELECT offer_id, 'transition', state, %s, %s FROM inserted
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
            Jsonb(keys.seal_within(offer.model_dump(mode="json"))),
            body_sha256(raw),
            offer.synthetic,
            states.RECEIVED,
            trace_parent,
            actor,
            Jsonb(data or {}),
        ),
    ).fetchone()
    return row is not None


def transition(
    conn: Connection,
    offer_id: str,
    from_state: State,
    to_state: State,
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
    assignments: list[sql.Composable] = [sql.SQL("state = {}").format(sql.Literal(to_state))]
    assignments += [sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values]
    stamp = STATE_TIMESTAMP.get(to_state)
    if stamp in RESTAMPED:
        assignments.append(sql.SQL("{} = clock_timestamp()").format(sql.Identifier(stamp)))
    elif stamp:
        # A replay re-enters a state without re-running the stage that produced it: keep when that
        # stage really finished (the hold watch's clock, and honest stage latencies and auction lag).
        assignments.append(sql.SQL("{0} = coalesce({0}, clock_timestamp())").format(sql.Identifier(stamp)))
    if to_state in SECRETS_USED_UP:
        assignments.append(DROP_SECRETS)
    assignments.append(sql.SQL("updated_at = clock_timestamp()"))
    # The move and its audit row in one statement: one round trip. The row goes in unlinked; the
    # sealer links it into the chain after the commit (migration 0010).
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


# --- payment holds ------------------------------------------------------------------------------


def record_hold(conn: Connection, offer_id: str, payment_intent_id: str) -> None:
    """Note a hold the payment stage placed, whatever state the offer has moved to (so it is released)."""
    conn.execute(
        "UPDATE offers SET payment_intent_id = %s, hold_status = 'held' WHERE offer_id = %s AND hold_status = 'none'",
        (payment_intent_id, offer_id),
    )


def mark_hold_released(conn: Connection, offer_id: str) -> bool:
    """Record the offer's hold as released; False when it was not held (released already)."""
    return (
        conn.execute(
            "UPDATE offers SET hold_status = 'released', hold_released_at = clock_timestamp(),"
            " updated_at = clock_timestamp() WHERE offer_id = %s AND hold_status = 'held' RETURNING offer_id",
            (offer_id,),
        ).fetchone()
        is not None
    )


@dataclass(frozen=True, slots=True)
class HeldOffer:
    """An offer that says it holds an authorization, and which."""

    offer_id: str
    payment_intent_id: str


def held_offers(conn: Connection, placed_after_s: float | None) -> list[HeldOffer]:
    """Offers that say they hold an authorization (placed within ``placed_after_s``, if given)."""
    return (
        typed(conn, HeldOffer)
        .execute(
            "SELECT offer_id, payment_intent_id FROM offers WHERE hold_status = 'held' AND payment_intent_id IS NOT NULL"
            " AND (%s::float8 IS NULL OR payment_held_at > clock_timestamp() - make_interval(secs => %s::float8))",
            (placed_after_s, placed_after_s),
        )
        .fetchall()
    )


@dataclass(frozen=True, slots=True)
class Holding:
    """An offer holding an authorization, as `holds list` and `holds release` read it."""

    offer_id: str
    state: State
    reason: str | None
    payment_intent_id: str | None
    amount_cents: int
    #: As stored: ``char(3)``.
    currency: str
    #: None for a hold placed while its offer was cancelled (its transition lost).
    payment_held_at: datetime | None
    updated_at: datetime


def holds_placed_before(conn: Connection, older_than_s: float, limit: int) -> list[str]:
    """Offers holding an authorization placed more than ``older_than_s`` ago, oldest first."""
    rows = conn.execute(
        "SELECT offer_id FROM offers WHERE hold_status = 'held'"
        " AND payment_held_at < clock_timestamp() - make_interval(secs => %s) ORDER BY payment_held_at LIMIT %s",
        (older_than_s, limit),
    ).fetchall()
    return [r["offer_id"] for r in rows]


# --- recovery -------------------------------------------------------------------------------------


def note_retry_due(conn: Connection, offer_id: str, countdown_s: float) -> None:
    """A retry of the offer's stage is on its way: the recovery sweep leaves it alone until then."""
    conn.execute(
        "UPDATE offers SET retry_due_at = clock_timestamp() + make_interval(secs => %s) WHERE offer_id = %s",
        (countdown_s, offer_id),
    )


@dataclass(frozen=True)
class StuckOffer:
    offer_id: str
    state: State
    trace_parent: str | None = None


def claim_stuck(conn: Connection, older_than_s: float, limit: int) -> list[StuckOffer]:
    """Up to ``limit`` stuck offers (``STUCK``), longest waiting first, marked as having a retry due.

    The re-send counts as a pending retry: an offer merely queued behind a backlog gets one more
    message per ``older_than_s``, not one per sweep; SKIP LOCKED lets two sweeps overlap.
    """
    rows = conn.execute(
        sql.SQL(
            "UPDATE offers SET retry_due_at = clock_timestamp() WHERE offer_id IN ("
            " SELECT offer_id FROM offers WHERE {} ORDER BY updated_at LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
            " RETURNING offer_id, state, trace_parent"
        ).format(STUCK),
        {**stuck_params(older_than_s), "batch": limit},
    ).fetchall()
    return [StuckOffer(r["offer_id"], r["state"], r["trace_parent"]) for r in rows]


def claim_unreleased_holds(conn: Connection, older_than_s: float, limit: int) -> list[tuple[str, str | None]]:
    """Offers that ended more than ``older_than_s`` ago still holding an authorization (their
    release lost), marked as having a retry due, like ``claim_stuck``, with their traceparent."""
    rows = conn.execute(
        "UPDATE offers SET retry_due_at = clock_timestamp() WHERE offer_id IN ("
        " SELECT offer_id FROM offers WHERE hold_status = 'held' AND state = ANY(%(ended)s)"
        " AND updated_at < clock_timestamp() - make_interval(secs => %(age)s)"
        " AND (retry_due_at IS NULL OR retry_due_at < clock_timestamp() - make_interval(secs => %(age)s))"
        " LIMIT %(batch)s FOR UPDATE SKIP LOCKED)"
        " RETURNING offer_id, trace_parent",
        {"ended": list(states.TERMINAL), "age": older_than_s, "batch": limit},
    ).fetchall()
    return [(r["offer_id"], r["trace_parent"]) for r in rows]


def past_maker_sla(conn: Connection, limit: int) -> list[str]:
    """Submitted offers whose maker did not answer within the policy's SLA window, oldest first."""
    rows = conn.execute(
        "SELECT o.offer_id FROM offers o JOIN makers m USING (maker_id)"
        " WHERE o.state = 'submitted' AND o.completed_at + make_interval(secs => m.sla_hours * 3600) < clock_timestamp()"
        " ORDER BY o.completed_at LIMIT %s",
        (limit,),
    ).fetchall()
    return [r["offer_id"] for r in rows]


# --- what an operator sees ------------------------------------------------------------------------


def offer_summary(offer: OfferRecord) -> dict[str, Any]:
    """The JSON an operator sees for one offer (`offers show --json`, `offers list --json`)."""
    lag = offer.auction_triggered_at - offer.received_at if offer.auction_triggered_at else None
    return {
        "offer_id": offer.offer_id,
        "state": offer.state,
        "reason": offer.reason,
        "amount_cents": offer.amount_cents,
        "currency": offer.currency.strip(),
        "listing_id": offer.listing_id,
        "maker_id": offer.maker_id,
        "buyer_id": offer.buyer_id,
        "payment_method": offer.payment_method,
        "payment_intent_id": offer.payment_intent_id,
        "hold_status": offer.hold_status,
        "risk_score": offer.risk_score,
        "return_risk_score": offer.return_risk_score,
        "synthetic": offer.synthetic,
        "received_at": offer.received_at.isoformat(),
        "updated_at": offer.updated_at.isoformat(),
        "auction_lag_ms": round(lag.total_seconds() * 1000, 1) if lag is not None else None,
        # The offer's trace in the tracing backend (None when the fleet ran untraced).
        "trace_id": trace_id_of(offer.trace_parent),
    }
