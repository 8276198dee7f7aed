"""Intake rejections: every submit that did not yield an offer, with its raw body and field errors."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from offers_workers.domain.payload import FieldError
from offers_workers.store.db import Connection, one_row


def record(
    conn: Connection,
    *,
    reason: str,
    errors: list[FieldError],
    raw_body: str,
    raw_size: int,
    offer_id: str | None,
    task_id: str | None,
) -> int:
    """Record one rejection; returns its id."""
    row = one_row(
        conn.execute(
            "INSERT INTO intake_rejections (task_id, offer_id, reason, errors, raw_body, raw_size)"
            " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
            (task_id, offer_id, reason, Jsonb([e.model_dump() for e in errors]), raw_body, raw_size),
        )
    )
    return int(row["id"])


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    """One intake rejection as `intake rejections` lists it, its raw body with it."""

    id: int
    received_at: datetime
    task_id: str | None
    offer_id: str | None
    reason: str
    #: The field errors as recorded (``field``, ``code``, ``message``).
    errors: list[dict[str, Any]]
    raw_size: int
    raw_body: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self) | {"received_at": self.received_at.isoformat()}


@dataclass(frozen=True)
class Rejection:
    reason: str
    #: The field errors as recorded (``field``, ``code``, ``message``).
    errors: list[dict[str, Any]]


def latest_for_offer(conn: Connection, offer_id: str) -> Rejection | None:
    row = conn.execute(
        "SELECT reason, errors FROM intake_rejections WHERE offer_id = %s ORDER BY id DESC LIMIT 1", (offer_id,)
    ).fetchone()
    return Rejection(row["reason"], row["errors"] or []) if row else None


def reasons_by_offer(conn: Connection, offer_ids: list[str]) -> dict[str, list[str]]:
    """The reasons each of these offer ids was rejected for, in no particular order."""
    found: dict[str, list[str]] = defaultdict(list)
    for r in conn.execute("SELECT offer_id, reason FROM intake_rejections WHERE offer_id = ANY(%s)", (offer_ids,)):
        found[r["offer_id"]].append(r["reason"])
    return found


def counts_by_reason(conn: Connection, offer_id_prefix: str) -> dict[str, int]:
    """Rejections of offer ids starting with ``offer_id_prefix`` (a run's), per reason, by reason."""
    prefix = offer_id_prefix.replace("%", r"\%").replace("_", r"\_") + "%"
    rows = conn.execute(
        "SELECT reason, count(*) AS n FROM intake_rejections WHERE offer_id LIKE %s GROUP BY reason ORDER BY reason",
        (prefix,),
    )
    return {r["reason"]: r["n"] for r in rows}
