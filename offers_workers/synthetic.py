"""The synthetic journey (the runbook's nightly check): submit a synthetic offer, wait for
``submitted``, cancel it, and check the hold was released and the events published.

Synthetic offers carry ``synthetic: true`` and stay out of ``stats`` and ``/metrics``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from offers_workers import states
from offers_workers.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass
class Step:
    name: str
    ok: bool
    ms: float
    detail: str = ""


@dataclass
class Journey:
    offer_id: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def as_dict(self) -> dict[str, Any]:
        return {"offer_id": self.offer_id, "ok": self.ok, "steps": [s.__dict__ for s in self.steps]}


def synthetic_offer(rt: Runtime, offer_id: str) -> dict[str, Any]:
    s = rt.settings
    return {
        "offer_id": offer_id,
        "listing_id": s.synthetic_listing_id,
        "maker_id": s.synthetic_maker_id,
        "buyer_id": "synthetic_buyer",
        "amount_cents": s.synthetic_amount_cents,
        "currency": s.synthetic_currency,
        "payment": {"method": "card", "payment_method_id": s.synthetic_payment_method_id},
        "buyer_context": {"email": "synthetic@example.invalid", "ip": "192.0.2.1", "session_id": "synthetic"},
        "submitted_at": datetime.now(timezone.utc).isoformat(),
        "synthetic": True,
    }


def run(rt: Runtime, send: Callable[[str, dict[str, Any]], None], *, timeout_s: float = 60) -> Journey:
    """Walk the journey; each step records whether it held and how long it took."""
    journey = Journey(f"synthetic-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}")
    offer_id = journey.offer_id

    def offer() -> dict[str, Any] | None:
        with rt.db.transaction() as conn:
            return conn.execute("SELECT state, reason, hold_status, payment_intent_id FROM offers WHERE offer_id = %s", (offer_id,)).fetchone()

    def published(detail_type: str) -> bool:
        with rt.db.transaction() as conn:
            row = conn.execute(
                "SELECT published_at FROM offer_events WHERE offer_id = %s AND detail_type = %s", (offer_id, detail_type)
            ).fetchone()
        return bool(row and row["published_at"])

    def step(name: str, condition: Callable[[], Any], detail: Callable[[], str] = lambda: "") -> bool:
        started = time.monotonic()
        deadline = started + timeout_s
        while not (ok := bool(condition())) and time.monotonic() < deadline:
            time.sleep(0.1)
        journey.steps.append(Step(name, ok, round((time.monotonic() - started) * 1000), "" if ok else detail()))
        return ok

    def state() -> str:
        row = offer()
        return f"offer is {row['state']}/{row['reason']}, hold {row['hold_status']}" if row else "no offer recorded"

    send("offers.submit", {"offer": synthetic_offer(rt, offer_id)})
    if not step("submitted", lambda: (o := offer()) and o["state"] == states.SUBMITTED, state):
        return _logged(journey)
    pi = offer()["payment_intent_id"]
    step("hold placed", lambda: rt.stripe.get_hold(pi).status == "requires_capture", lambda: f"{pi} is {rt.stripe.get_hold(pi).status}")
    step("offer.submitted published", lambda: published("offer.submitted"))
    send("offers.cancel", {"offer_id": offer_id, "reason": "ops", "actor": "ops"})
    step("cancelled", lambda: (o := offer()) and o["state"] == states.CANCELLED, state)
    step("hold released", lambda: rt.stripe.get_hold(pi).status == "canceled" and offer()["hold_status"] == "released",
         lambda: f"{pi} is {rt.stripe.get_hold(pi).status}")
    step("offer.cancelled published", lambda: published("offer.cancelled"))
    return _logged(journey)


def _logged(journey: Journey) -> Journey:
    timings = {s.name: s.ms for s in journey.steps}
    if journey.ok:
        log.info("synthetic journey passed", extra={"offer_id": journey.offer_id, "timings_ms": timings})
    else:
        failed = next(s for s in journey.steps if not s.ok)
        log.error("synthetic journey failed", extra={"offer_id": journey.offer_id, "step": failed.name, "detail": failed.detail, "timings_ms": timings})
    return journey
