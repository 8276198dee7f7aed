"""Stripe: card holds as manual-capture PaymentIntents, with a stable idempotency key per saga step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import stripe
from stripe.params import PaymentIntentCreateParams

from config.settings import Settings
from offers_workers.domain.errors import OfferRejected, PermanentError, TransientError
from offers_workers.domain.states import RejectionReason
from offers_workers.partners.interfaces import Hold, adopt_or_key

__all__ = ["Hold", "StripePayments", "sort_error"]


def _hold(pi: Any) -> Hold:
    metadata = pi.metadata.to_dict() if pi.metadata else {}
    return Hold(pi.id, pi.status, pi.amount, pi.currency, metadata.get("offer_id"), pi.created)


def _code(exc: stripe.StripeError) -> str:
    code = exc.code or (exc.error.code if exc.error else None)
    return code or type(exc).__name__


def sort_error(exc: stripe.StripeError) -> Exception:
    """Sort a Stripe SDK error into OfferRejected, TransientError or PermanentError (Stripe's error reference)."""
    code, status = _code(exc), exc.http_status
    message = " ".join((exc.user_message or type(exc).__name__).split())[:300]
    if isinstance(exc, stripe.CardError):
        decline = exc.error.decline_code if exc.error else None
        reason: RejectionReason = (
            "insufficient_funds" if "insufficient_funds" in (decline, exc.code) else "payment_declined"
        )
        return OfferRejected(reason, decline or code)
    if isinstance(exc, stripe.RateLimitError):
        return TransientError("stripe", code, message, status)
    if isinstance(exc, stripe.APIConnectionError):
        # should_retry is False for TLS and malformed-request failures: a retry would fail the same way.
        kind = TransientError if exc.should_retry else PermanentError
        return kind("stripe", code, message, status)
    # APIError covers 5xx and 409 (idempotency_key_in_use, lock_timeout): the same request may succeed later.
    if isinstance(exc, stripe.APIError) and status is not None and (status >= 500 or status == 409):
        return TransientError("stripe", code, message, status)
    return PermanentError("stripe", code, message, status)


class StripePayments:
    """``Payments`` through the Stripe SDK (see ``interfaces.Payments`` for what each method promises)."""

    def __init__(self, settings: Settings) -> None:
        self._client = stripe.StripeClient(
            settings.secret("stripe_api_key"),
            base_addresses={"api": settings.stripe_api_base},
            http_client=stripe.RequestsClient(
                timeout=(settings.partner_connect_timeout, settings.partner_read_timeout)
            ),
            max_network_retries=0,  # the saga retries, with the same idempotency key
        )

    def place_hold(
        self,
        *,
        offer_id: str,
        amount_cents: int,
        currency: str,
        payment_method_id: str,
        metadata: dict[str, str],
        first_attempt: bool = False,
    ) -> Hold:
        """Authorise ``amount_cents`` without capturing, or adopt the offer's live hold. Normally
        returns status ``requires_capture``."""
        found = [] if first_attempt else self._holds_for(offer_id)
        plan = adopt_or_key(found, offer_id=offer_id, amount_cents=amount_cents, currency=currency)
        if isinstance(plan, Hold):
            return plan
        params: dict[str, Any] = {
            "amount": amount_cents,
            "currency": currency.lower(),
            "payment_method": payment_method_id,
            "payment_method_types": ["card"],
            "capture_method": "manual",
            "confirm": True,
            "metadata": {**metadata, "offer_id": offer_id},
        }
        try:
            # The SDK's TypedDict lacks payment_method_types, which the API takes.
            pi = self._client.v1.payment_intents.create(
                cast("PaymentIntentCreateParams", params), {"idempotency_key": plan}
            )
        except stripe.StripeError as exc:
            raise sort_error(exc) from None
        return _hold(pi)

    def _holds_for(self, offer_id: str) -> list[Hold]:
        """The offer's PaymentIntents, newest first, through Stripe's Search (list cannot filter by metadata).

        Search lags writes by about a minute (more during an outage), so the idempotency key still
        guards a retry that soon; this lookup guards the late ones (a replay, a sweep) after Stripe
        dropped the key (24 h). A live hold is read again before it is adopted: retrieve is
        consistent, and the index may not show its release yet.
        """
        query = f"metadata['offer_id']:'{offer_id}'"  # offer ids are [A-Za-z0-9_-]: nothing to escape
        try:
            pages = self._client.v1.payment_intents.search({"query": query, "limit": 100})
            found = sorted((_hold(pi) for pi in pages.auto_paging_iter()), key=lambda h: h.created or 0, reverse=True)
        except stripe.StripeError as exc:
            raise sort_error(exc) from None
        return [self.get_hold(h.payment_intent_id) if h.status == "requires_capture" else h for h in found]

    def release_hold(self, *, offer_id: str, payment_intent_id: str) -> str:
        """Cancel the hold; an already-canceled hold counts as released. Returns the final status."""
        try:
            pi = self._client.v1.payment_intents.cancel(
                payment_intent_id,
                {"cancellation_reason": "abandoned"},
                {"idempotency_key": f"offer:{offer_id}:release"},
            )
            return pi.status
        except stripe.InvalidRequestError as exc:
            if _code(exc) != "payment_intent_unexpected_state":
                raise sort_error(exc) from None
        except stripe.StripeError as exc:
            raise sort_error(exc) from None
        status = self.get_hold(payment_intent_id).status
        if status == "canceled":
            return status
        code = "payment_intent_captured" if status == "succeeded" else "payment_intent_unexpected_state"
        raise PermanentError("stripe", code, f"cannot release {payment_intent_id}: it is {status}", 400)

    def get_hold(self, payment_intent_id: str) -> Hold:
        """The PaymentIntent as Stripe has it now."""
        try:
            pi = self._client.v1.payment_intents.retrieve(payment_intent_id)
        except stripe.StripeError as exc:
            raise sort_error(exc) from None
        return _hold(pi)

    def list_holds(self, *, status: str | None = None, after: str | None = None) -> Iterator[Hold]:
        """Every PaymentIntent, newest first, from Stripe's cursor ``after`` (Stripe's list has no
        status filter: filtered here)."""
        params: stripe.params.PaymentIntentListParams = {"limit": 100}
        if after:
            params["starting_after"] = after
        try:
            for pi in self._client.v1.payment_intents.list(params).auto_paging_iter():
                if status is None or pi.status == status:
                    yield _hold(pi)
        except stripe.StripeError as exc:
            raise sort_error(exc) from None
