"""Sift: payment-abuse score for an offer, sent as a ``$create_order`` event."""

from __future__ import annotations

from typing import Any

import requests
import sift
from requests.adapters import HTTPAdapter
from sift.client import ApiException

from config.settings import Settings
from offers_workers.domain.errors import PermanentError, TransientError
from offers_workers.partners.interfaces import KEPT_CONNECTIONS, OrderToScore, RiskScore

#: Our payment-method kinds -> Sift ``$payment_type``.
PAYMENT_TYPES = {
    "card": "$credit_card",
    "bank_account": "$electronic_fund_transfer",
    "bank": "$electronic_fund_transfer",
}
#: Body status 60 is "rate limited"; negative ones are Sift-side failures. Everything else is permanent.
_RETRYABLE_STATUS = {60}


def _body_error(status: Any, message: str | None, http_status: int | None) -> Exception:
    code = f"status_{status}"
    if isinstance(status, int) and (status < 0 or status in _RETRYABLE_STATUS):
        return TransientError("sift", code, message or "sift error", http_status)
    return PermanentError("sift", code, message or "sift error", http_status)


def _reasons(raw: Any) -> tuple[str, ...]:
    # Sift gives reasons as {"name": …, "value": …}; only the names say anything without its console.
    if not isinstance(raw, list):
        return ()
    return tuple(str(r.get("name", r)) if isinstance(r, dict) else str(r) for r in raw)


class SiftRisk:
    """``RiskScoring`` through the Sift SDK (see ``interfaces.RiskScoring``)."""

    def __init__(self, settings: Settings) -> None:
        session = requests.Session()
        session.mount("https://", HTTPAdapter(pool_maxsize=KEPT_CONNECTIONS))
        session.mount("http://", HTTPAdapter(pool_maxsize=KEPT_CONNECTIONS))
        self._client = sift.Client(
            session=session,
            api_key=settings.secret("sift_api_key"),
            account_id=settings.sift_account_id,  # omitted, the client would read env var ACCOUNT_ID
            api_url=settings.sift_api_url,
            timeout=(settings.partner_connect_timeout, settings.partner_read_timeout),
        )

    def score_order(self, order: OrderToScore) -> RiskScore:
        """The ``payment_abuse`` score in [0, 1] for this offer, with Sift's reasons."""
        props: dict[str, Any] = {
            "$user_id": order.buyer_id,
            "$order_id": order.offer_id,
            "$user_email": order.email,
            "$ip": order.ip,
            "$session_id": order.session_id,
            "$amount": order.amount_cents * 10_000,  # Sift amounts are micros
            "$currency_code": order.currency.upper(),
        }
        payment_method = order.payment_method
        if payment_method:
            props["$payment_methods"] = [
                {
                    "$payment_type": PAYMENT_TYPES.get(payment_method, payment_method)
                    if not payment_method.startswith("$")
                    else payment_method
                }
            ]
        props = {k: v for k, v in props.items() if v is not None}
        try:
            response = self._client.track("$create_order", props, return_score=True, abuse_types=["payment_abuse"])
        except ApiException as exc:
            status = exc.http_status_code
            code = f"status_{exc.api_status}" if exc.api_status is not None else "http_error"
            message = exc.api_error_message or str(exc)[:300]
            if status is None or status == 429 or status >= 500:  # timeout, refused, throttled, Sift down
                raise TransientError("sift", code, message, status) from None
            raise PermanentError("sift", code, message, status) from None
        except (TypeError, ValueError) as exc:  # the client's own argument checks
            raise PermanentError("sift", "invalid_request", str(exc)) from None
        body = response.body or {}
        if body.get("status") != 0:
            raise _body_error(body.get("status"), body.get("error_message"), response.http_status_code)
        score_response = body.get("score_response") or {}
        if score_response.get("status", 0) != 0:
            raise _body_error(
                score_response.get("status"), score_response.get("error_message"), response.http_status_code
            )
        try:
            abuse = score_response["scores"]["payment_abuse"]
            score = float(abuse["score"])
        except (KeyError, TypeError, ValueError):
            raise PermanentError(
                "sift", "missing_score", "response has no payment_abuse score", response.http_status_code
            ) from None
        return RiskScore(score, _reasons(abuse.get("reasons")))
