"""The order Sift is asked to score, as the partner tests send it."""

from __future__ import annotations

from offers_workers.partners.interfaces import OrderToScore


def order_to_score(
    buyer_id: str, *, offer_id: str = "off_1", amount_cents: int = 12_500, with_buyer_context: bool = True
) -> OrderToScore:
    """A card offer in US dollars; with ``with_buyer_context`` the buyer's email, IP and session, else none of them."""
    return OrderToScore(
        offer_id=offer_id,
        buyer_id=buyer_id,
        amount_cents=amount_cents,
        currency="usd",
        email="buyer@example.com" if with_buyer_context else None,
        ip="203.0.113.7" if with_buyer_context else None,
        session_id="sess_1" if with_buyer_context else None,
        payment_method="card",
    )
