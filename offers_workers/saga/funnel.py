"""The product funnel (draft → submitted → auction): which saga steps Segment hears of, and what
each event carries.

A step's event is built from the offer's payload and handed to the funnel partner only after the
step's transaction committed (``send``), so Segment never hears of a step Postgres does not keep.
Synthetic offers are probes, not buyers: left out, as ``stats`` leaves them out. Properties are ids,
the amount and currency, and a rejection's reason and stage: the payload's ``buyer_context`` (email,
IP, session) never leaves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from offers_workers.domain.payload import OfferPayload
from offers_workers.partners.interfaces import FunnelEvent
from offers_workers.saga.decisions import Advance, Outcome, Reject

if TYPE_CHECKING:
    from offers_workers.runtime import Runtime

DRAFT_VALIDATED = "Offer Draft Validated"
SUBMITTED = "Offer Submitted"
REJECTED = "Offer Rejected"
AUCTION_TRIGGERED = "Offer Auction Triggered"
CANCELLED = "Offer Cancelled"
#: Every funnel event, in the funnel's order (the ends last).
EVENTS = (DRAFT_VALIDATED, SUBMITTED, AUCTION_TRIGGERED, REJECTED, CANCELLED)


def event(name: str, offer: OfferPayload, *, message_id: str, **extra: Any) -> FunnelEvent | None:
    """``name``'s event for ``offer`` (None for a synthetic offer); ``extra`` adds properties."""
    if offer.synthetic:
        return None
    properties: dict[str, Any] = {
        "offer_id": offer.offer_id,
        "listing_id": offer.listing_id,
        "maker_id": offer.maker_id,
        "amount_cents": offer.amount_cents,
        "currency": offer.currency,
        **extra,
    }
    return FunnelEvent(name, offer.buyer_id, properties, message_id)


def draft_validated(draft: OfferPayload, *, valid: bool, draft_id: int) -> FunnelEvent | None:
    """A draft checked by ``offers.validate_draft`` (each check counts, so its own id)."""
    return event(DRAFT_VALIDATED, draft, message_id=f"draft:{draft_id}", valid=valid)


def submitted(offer: OfferPayload) -> FunnelEvent | None:
    """Intake recorded the offer."""
    return event(SUBMITTED, offer, message_id=f"{offer.offer_id}:submitted")


def cancelled(offer: OfferPayload, reason: str | None) -> FunnelEvent | None:
    return event(CANCELLED, offer, message_id=f"{offer.offer_id}:cancelled", reason=reason)


def after_stage(stage: str, offer: OfferPayload, outcome: Outcome) -> FunnelEvent | None:
    """The event of a stage's committed outcome: a rejection (any stage's, with its reason), or the
    auction triggered; None for the other steps."""
    if isinstance(outcome, Reject):
        return event(REJECTED, offer, message_id=f"{offer.offer_id}:rejected", reason=outcome.reason, stage=stage)
    if isinstance(outcome, Advance) and stage == "auction":
        return event(AUCTION_TRIGGERED, offer, message_id=f"{offer.offer_id}:auction_triggered")
    return None


def send(rt: Runtime, step: FunnelEvent | None) -> None:
    """Hand a committed step's event to the funnel, when it is on: returns at once, never raises."""
    if step is not None and rt.funnel is not None:
        rt.funnel.track(step)
