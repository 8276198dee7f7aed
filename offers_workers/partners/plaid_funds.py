"""Plaid: available balance and Signal return risk for bank-account offers."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar

import plaid
import urllib3
from plaid.api import plaid_api
from plaid.exceptions import OpenApiException
from plaid.model.accounts_balance_get_request import AccountsBalanceGetRequest
from plaid.model.accounts_balance_get_request_options import AccountsBalanceGetRequestOptions
from plaid.model.signal_evaluate_request import SignalEvaluateRequest

from config.settings import Settings
from offers_workers.domain.errors import PermanentError, TransientError
from offers_workers.partners.interfaces import KEPT_CONNECTIONS, Balance, ReturnRisk, client_transaction_id

__all__ = ["PlaidFunds", "client_transaction_id", "sort_error"]

T = TypeVar("T")
#: error_type or error_code values worth retrying (Plaid's errors reference); any 5xx/429 is retried too.
RETRYABLE = {"INSTITUTION_DOWN", "INSTITUTION_NOT_RESPONDING", "RATE_LIMIT_EXCEEDED", "API_ERROR", "RATE_LIMIT"}


def _to_cents(dollars: float) -> int:
    return int((Decimal(str(dollars)) * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def sort_error(exc: plaid.ApiException) -> Exception:
    try:
        body = json.loads(exc.body) if exc.body else {}
    except (TypeError, ValueError):
        body = {}
    body = body if isinstance(body, dict) else {}
    code = body.get("error_code") or f"http_{exc.status}"
    message = body.get("error_message") or str(exc.reason or "plaid error")
    status = exc.status or None
    if code in RETRYABLE or body.get("error_type") in RETRYABLE or status is None or status == 429 or status >= 500:
        return TransientError("plaid", code, message, status)
    return PermanentError("plaid", code, message, status)


class PlaidFunds:
    """``BankFunds`` through the Plaid SDK (see ``interfaces.BankFunds``)."""

    def __init__(self, settings: Settings) -> None:
        cfg = plaid.Configuration(
            host=settings.plaid_host,
            api_key={"clientId": settings.plaid_client_id, "secret": settings.secret("plaid_secret")},
        )
        cfg.retries = False  # left at None, urllib3 silently retries refused connections 3 times
        cfg.connection_pool_maxsize = KEPT_CONNECTIONS
        self._api = plaid_api.PlaidApi(plaid.ApiClient(cfg))
        self._timeout = (settings.partner_connect_timeout, settings.partner_read_timeout)

    def _call(self, fn: Callable[..., T], request: Any) -> T:
        try:
            return fn(request, _request_timeout=self._timeout)
        except plaid.ApiException as exc:
            raise sort_error(exc) from None
        except urllib3.exceptions.HTTPError as exc:  # timeouts, refused, reset: raw urllib3 errors
            raise TransientError("plaid", type(exc).__name__, str(exc)[:300]) from None
        except OpenApiException as exc:  # request or response failed the SDK's model validation
            raise PermanentError("plaid", type(exc).__name__, str(exc)[:300]) from None

    def balance(self, *, access_token: str, account_id: str) -> Balance:
        """Available balance (or current, when the institution reports no available) in cents."""
        request = AccountsBalanceGetRequest(
            access_token=access_token, options=AccountsBalanceGetRequestOptions(account_ids=[account_id])
        )
        response = self._call(self._api.accounts_balance_get, request)
        account = next((a for a in response.accounts if a.account_id == account_id), None)
        if account is None:
            # No id in the message: an account id is a payment secret.
            raise PermanentError("plaid", "account_not_found", "the offer's account is not on this item")
        balance = account.balances.available
        from_current = balance is None
        if balance is None:
            balance = account.balances.current
        if balance is None:
            raise PermanentError("plaid", "balance_unavailable", "no balance for the offer's account")
        return Balance(account_id, _to_cents(balance), from_current)

    def return_risk(self, *, offer_id: str, access_token: str, account_id: str, amount_cents: int) -> ReturnRisk:
        """Signal's return-risk scores (1-99) for debiting ``amount_cents`` from the account."""
        request = SignalEvaluateRequest(
            access_token=access_token,
            account_id=account_id,
            client_transaction_id=client_transaction_id(offer_id),
            amount=float(Decimal(amount_cents) / 100),
        )
        response = self._call(self._api.signal_evaluate, request)
        found: dict[str, int | None] = {}
        for name in ("customer_initiated_return_risk", "bank_initiated_return_risk"):
            risk = response.scores.get(name) if response.get("scores") is not None else None
            found[name] = int(risk.score.value) if risk is not None else None  # SignalScore wraps the int
        if all(score is None for score in found.values()):
            raise PermanentError("plaid", "missing_score", "signal response has no return-risk score")
        return ReturnRisk(found["customer_initiated_return_risk"], found["bank_initiated_return_risk"])
