"""Cancel requests: every ``offers.cancel`` and what it did, tombstones for offers not received yet among them."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from offers_workers.domain.payload import FieldError
from offers_workers.domain.states import CancelOutcome
from offers_workers.store.db import Connection


@dataclass(frozen=True)
class Asked:
    """One cancel as it was asked for: which offer, why, by whom, in which task run (any may be missing)."""

    offer_id: str | None
    reason: str | None
    actor: str | None
    task_id: str | None = None


def record(conn: Connection, asked: Asked, outcome: CancelOutcome, errors: list[FieldError] | None = None) -> None:
    """Record one request and its outcome (``cancelled`` ones are applied at once)."""
    conn.execute(
        "INSERT INTO cancel_requests (offer_id, reason, actor, outcome, errors, task_id, applied_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, CASE WHEN %s THEN clock_timestamp() END)",
        (
            asked.offer_id,
            asked.reason,
            asked.actor,
            outcome,
            Jsonb([e.model_dump() for e in errors]) if errors else None,
            asked.task_id,
            outcome == "cancelled",
        ),
    )


@dataclass(frozen=True, slots=True)
class Request:
    """One cancel request as `cancel-requests list` shows it: who asked, why, and what it did."""

    id: int
    received_at: datetime
    offer_id: str | None
    reason: str | None
    actor: str | None
    outcome: CancelOutcome
    #: The field errors of a refused request (``field``, ``code``, ``message``); None otherwise.
    errors: list[dict[str, Any]] | None
    applied_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        applied_at = self.applied_at.isoformat() if self.applied_at else None
        return asdict(self) | {"received_at": self.received_at.isoformat(), "applied_at": applied_at}


@dataclass(frozen=True)
class Tombstone:
    """A cancel that came before its offer: who cancelled and why."""

    reason: str
    actor: str


def apply_tombstone(conn: Connection, offer_id: str) -> Tombstone | None:
    """Mark the offer's first tombstone applied and return it; None when there is none."""
    row = conn.execute(
        "UPDATE cancel_requests SET outcome = 'tombstone_applied', applied_at = clock_timestamp()"
        " WHERE id = (SELECT id FROM cancel_requests WHERE offer_id = %s AND outcome = 'tombstone' ORDER BY id LIMIT 1)"
        " RETURNING reason, actor",
        (offer_id,),
    ).fetchone()
    return Tombstone(row["reason"], row["actor"]) if row else None
