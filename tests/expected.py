"""What the contract promises, written down once for every test that checks it.

Literal on purpose: a test compares the code against these lists, so they are never read from the code under test.
"""

from __future__ import annotations

#: The offer payload's required top-level fields (payload v1), in the order the schema lists them.
REQUIRED_PAYLOAD_FIELDS = (
    "offer_id",
    "listing_id",
    "maker_id",
    "buyer_id",
    "amount_cents",
    "currency",
    "payment",
)

#: The steps of `offers-workers synthetic run`, in the order the journey takes them.
SYNTHETIC_STEPS = [
    "submitted",
    "hold placed",
    "offer.submitted published",
    "cancelled",
    "hold released",
    "offer.cancelled published",
]
