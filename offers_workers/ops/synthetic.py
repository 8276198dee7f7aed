"""The synthetic journey (the runbook's nightly check): submit a synthetic offer, wait for
``submitted``, cancel it, and check the hold was released and the events published.

It brings its own maker and listing (``OFFERS_SYNTHETIC_MAKER_ID`` / ``OFFERS_SYNTHETIC_LISTING_ID``,
default ``mkr_synthetic`` / ``lst_synthetic``), created on first use and marked ``synthetic``, so it
works whatever policy is loaded. Ids that name a real maker and listing are used as they are.

Synthetic offers carry ``synthetic: true`` and stay out of ``stats`` and ``/metrics``.

A step that cannot succeed fails at once with the reason (the offer rejected or dead-lettered, an
intake rejection, no worker on a queue the journey needs); a step still waiting fails after
``timeout_s``. What stops the journey before its offer is sent is reported as the ``submitted``
step, so the steps are the same whatever happens.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from offers_workers.domain import states
from offers_workers.runtime import Runtime
from offers_workers.store import audit_trail, dead_letters, intake_rejections, offers, outbox, policy

log = logging.getLogger(__name__)

ACTOR = "synthetic_journey"
MAKER_NAME = "Synthetic journey"
LISTING_TITLE = "Synthetic journey probe (not for sale)"

#: The queues a synthetic offer passes through, from its submit to its cancellation's event.
JOURNEY_QUEUES = ("offers.intake", *(stage.queue for stage in states.STAGES), "offers.events")
#: Seconds to wait for workers' answers to "which queues do you consume?" (asked twice at most).
CONSUMERS_TIMEOUTS_S = (1.0, 2.0)


class Blocked(Exception):
    """The journey cannot start; the message says why."""


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
        "submitted_at": datetime.now(UTC).isoformat(),
        "synthetic": True,
    }


def ensure_policy(rt: Runtime) -> None:
    """Make sure the journey's maker and listing exist, as synthetic rows; raise Blocked if not.

    Idempotent and safe when two journeys run at once (``INSERT … ON CONFLICT`` on the primary
    keys; the second waits for the first's row, then finds it). Rows not marked synthetic are real
    ones an operator pointed the journey at: never changed. A synthetic row is brought back to what
    the journey needs (active, in the synthetic currency, priced at the synthetic amount).
    """
    s = rt.settings
    maker_id, listing_id = s.synthetic_maker_id, s.synthetic_listing_id
    with rt.db.transaction() as conn:
        ensured = policy.ensure_synthetic_policy(
            conn,
            maker_id=maker_id,
            maker_name=MAKER_NAME,
            listing_id=listing_id,
            listing_title=LISTING_TITLE,
            amount_cents=s.synthetic_amount_cents,
            currency=s.synthetic_currency,
        )
        if ensured.listing_maker_id != maker_id:
            # Rolls back the maker just created, if it was: nothing is left half made.
            raise Blocked(
                f"listing {listing_id} (OFFERS_SYNTHETIC_LISTING_ID) belongs to maker {ensured.listing_maker_id},"
                f" not to {maker_id} (OFFERS_SYNTHETIC_MAKER_ID)"
            )
        maker_changed, listing_changed = ensured.maker_changed, ensured.listing_changed
        if maker_changed or listing_changed:
            audit_trail.record_audit(
                conn,
                None,
                "synthetic_policy_ensured",
                actor=ACTOR,
                data={
                    "maker_id": maker_id,
                    "maker_changed": maker_changed,
                    "listing_id": listing_id,
                    "listing_changed": listing_changed,
                },
            )
    if maker_changed or listing_changed:
        # Only this listing's cache entry (it carries its maker's policy) can be stale: a targeted
        # HDEL, not the whole hash, which would send every worker of a busy fleet back to Postgres
        # for every listing at once for the sake of one.
        rt.policies.forget(listing_id)
        log.info("synthetic maker and listing ready", extra={"maker_id": maker_id, "listing_id": listing_id})


def missing_consumers(app: Any) -> str | None:
    """Ask the workers, over the broker (Redis and RabbitMQ alike), which queues they consume;
    None if every queue of the journey has a consumer, else the reason the journey cannot run.
    For a caller outside the fleet (the CLI): the beat's journey runs inside a worker."""
    consumed: set[str] = set()
    answered: set[str] = set()
    for timeout_s in CONSUMERS_TIMEOUTS_S:
        replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
        answered |= set(replies)
        consumed |= {q["name"] for queues in replies.values() for q in (queues or [])}
        missing = [q for q in JOURNEY_QUEUES if q not in consumed]
        if not missing:
            return None
    who = (
        f"{len(answered)} worker(s) answered"
        if answered
        else f"no worker answered within {sum(CONSUMERS_TIMEOUTS_S):g} s"
    )
    return f"no worker consumes {', '.join(missing)} ({who})"


def run(
    rt: Runtime,
    send: Callable[[str, dict[str, Any]], None],
    *,
    timeout_s: float = 60,
    preflight: Callable[[], str | None] | None = None,
) -> Journey:
    """Walk the journey; each step records whether it held and how long it took.

    ``preflight`` may say why the journey cannot run (None: it can); it is asked after the maker
    and listing are ready, before the offer is sent.
    """
    journey = Journey(f"synthetic-{datetime.now(UTC):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}")
    offer_id = journey.offer_id

    started = time.monotonic()
    try:
        ensure_policy(rt)
        blocked = preflight() if preflight else None
    except Blocked as exc:
        blocked = str(exc)
    if blocked:
        journey.steps.append(Step("submitted", False, round((time.monotonic() - started) * 1000), blocked))
        return _logged(journey)

    def offer() -> offers.Offer | None:
        with rt.db.transaction() as conn:
            return offers.load_offer(conn, offer_id)

    def published(detail_type: str) -> bool:
        with rt.db.transaction() as conn:
            return outbox.is_published(conn, offer_id, detail_type)

    def dead_letter() -> str | None:
        with rt.db.transaction() as conn:
            dl = dead_letters.latest_pending(conn, offer_id)
        return f"offer dead-lettered at {dl.stage}: {dl.error_type}: {dl.error_message}" if dl else None

    def ended_otherwise(wanted: str) -> Callable[[], str | None]:
        """Why the offer can no longer reach ``wanted`` (None while it still can)."""

        def why() -> str | None:
            row = offer()
            if row is None:
                with rt.db.transaction() as conn:
                    rejection = intake_rejections.latest_for_offer(conn, offer_id)
                if rejection is None:
                    return None
                errors = "; ".join(f"{e.get('field') or '(message)'}: {e.get('message')}" for e in rejection.errors)
                return f"offer rejected at intake: {rejection.reason}" + (f" ({errors})" if errors else "")
            if row.state == wanted:
                return None
            if row.state == states.REJECTED:
                return f"offer rejected: {row.reason}"
            if row.state == states.CANCELLED:
                return f"offer cancelled: {row.reason}"
            if row.state == states.DEAD_LETTERED:
                return dead_letter() or "offer dead-lettered"
            return dead_letter()

        return why

    def step(
        name: str,
        condition: Callable[[], Any],
        detail: Callable[[], str] = lambda: "",
        doomed: Callable[[], str | None] = dead_letter,
    ) -> bool:
        """Wait for ``condition``; fail at once when ``doomed`` gives a reason, else after the timeout."""
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            if condition():
                ok, why = True, ""
                break
            if reason := doomed():
                ok, why = False, reason
                break
            if time.monotonic() >= deadline:
                ok, why = False, detail()
                break
            time.sleep(0.1)
        journey.steps.append(Step(name, ok, round((time.monotonic() - started) * 1000), why))
        return ok

    def state() -> str:
        row = offer()
        return f"offer is {row.state}/{row.reason}, hold {row.hold_status}" if row else "no offer recorded"

    send("offers.submit", {"offer": synthetic_offer(rt, offer_id)})
    if not step(
        "submitted", lambda: (o := offer()) and o.state == states.SUBMITTED, state, ended_otherwise(states.SUBMITTED)
    ):
        return _logged(journey)
    submitted = offer()
    # The journey pays by card: a submitted offer holds a PaymentIntent.
    assert submitted is not None and submitted.payment_intent_id is not None
    pi = submitted.payment_intent_id
    step(
        "hold placed",
        lambda: rt.stripe.get_hold(pi).status == "requires_capture",
        lambda: f"{pi} is {rt.stripe.get_hold(pi).status}",
    )
    step("offer.submitted published", lambda: published("offer.submitted"))
    send("offers.cancel", {"offer_id": offer_id, "reason": "ops", "actor": "ops"})
    step("cancelled", lambda: (o := offer()) and o.state == states.CANCELLED, state, ended_otherwise(states.CANCELLED))
    step(
        "hold released",
        lambda: (
            rt.stripe.get_hold(pi).status == "canceled" and (o := offer()) is not None and o.hold_status == "released"
        ),
        lambda: f"{pi} is {rt.stripe.get_hold(pi).status}",
    )
    step("offer.cancelled published", lambda: published("offer.cancelled"))
    return _logged(journey)


def _logged(journey: Journey) -> Journey:
    timings = {s.name: s.ms for s in journey.steps}
    if journey.ok:
        log.info("synthetic journey passed", extra={"offer_id": journey.offer_id, "timings_ms": timings})
    else:
        failed = next(s for s in journey.steps if not s.ok)
        log.error(
            "synthetic journey failed",
            extra={"offer_id": journey.offer_id, "step": failed.name, "detail": failed.detail, "timings_ms": timings},
        )
    return journey
