"""The events the fleet publishes to EventBridge and SNS: their detail as partners see it
(docs/upstream.md, "Events")."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from typing import Any

#: Namespace for event ids: stable per offer and event type, so consumers can drop repeats.
EVENT_NAMESPACE = uuid.UUID("6f2b3c1e-8d0a-4f6e-9b1c-0ffe25000001")


def event_id(offer_id: str, detail_type: str) -> str:
    return str(uuid.uuid5(EVENT_NAMESPACE, f"{offer_id}/{detail_type}"))


@dataclass(frozen=True, slots=True)
class EventDetail:
    """One offer event's detail, field for field what EventBridge and SNS carry."""

    event_id: str
    offer_id: str
    listing_id: str
    maker_id: str
    state: str
    reason: str | None
    amount_cents: int
    currency: str
    payment_method: str
    synthetic: bool

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
