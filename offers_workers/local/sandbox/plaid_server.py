"""Plaid sandbox: ``/accounts/balance/get`` and ``/signal/evaluate`` as plaid-python sends them.

Tokens: ``access-sandbox-low-balance`` has 0.00; ``access-sandbox-high-risk`` has return risk 95;
``access-sandbox-login-required`` fails ``ITEM_LOGIN_REQUIRED``; any other ``access-…`` token has
50000.00 USD and return risk ~10; anything else is ``INVALID_ACCESS_TOKEN``. The item holds whatever
account ids the request names (so ``account_id`` always matches the returned account).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from offers_workers.local.sandbox.http import PartnerHandler

LOW_BALANCE = "access-sandbox-low-balance"
HIGH_RISK = "access-sandbox-high-risk"
LOGIN_REQUIRED = "access-sandbox-login-required"


def missing_fields(names: list[str]) -> PlaidApiError:
    """Plaid's answer to a request lacking required fields."""
    return PlaidApiError(
        400, "INVALID_REQUEST", "MISSING_FIELDS", f"the following required fields are missing: {', '.join(names)}"
    )


class PlaidApiError(Exception):
    def __init__(self, status: int, error_type: str, error_code: str, message: str, display: str | None = None) -> None:
        super().__init__(message)
        self.status, self.error_type, self.error_code, self.display = status, error_type, error_code, display


def error_body(
    status: int, error_type: str, error_code: str, message: str, display: str | None = None
) -> dict[str, Any]:
    return {
        "error_type": error_type,
        "error_code": error_code,
        "error_code_reason": None,
        "error_message": message,
        "display_message": display,
        "request_id": secrets.token_hex(8),
        "causes": [],
        "status": status,
        "documentation_url": f"https://plaid.com/docs/errors/{error_type.lower().replace('_', '-')}/",
        "suggested_action": None,
    }


def _digest(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:4], "big")


def _tier(score: int, tiers: int) -> int:
    return min(tiers, 1 + (score - 1) * tiers // 99)


class PlaidHandler(PartnerHandler):
    server_version = "plaid-sandbox"

    def fault_response(self, status: int) -> tuple[Any, dict[str, str]]:
        if status == 429:
            body = error_body(429, "RATE_LIMIT_EXCEEDED", "RATE_LIMIT", "rate limit exceeded (sandbox fault)")
        elif status >= 500:
            body = error_body(
                status, "API_ERROR", "INTERNAL_SERVER_ERROR", "an unexpected error occurred (sandbox fault)"
            )
        else:
            body = error_body(status, "INVALID_REQUEST", "SANDBOX_FAULT", f"injected HTTP {status}")
        return body, {}

    def handle_partner(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        try:
            result = self._route(method, path, body)
        except PlaidApiError as exc:
            self.send_json(exc.status, error_body(exc.status, exc.error_type, exc.error_code, str(exc), exc.display))
            return
        self.send_json(200, result)

    def _route(self, method: str, path: str, raw: bytes) -> dict[str, Any]:
        if method != "POST" or path not in ("/accounts/balance/get", "/signal/evaluate"):
            raise PlaidApiError(404, "INVALID_REQUEST", "UNKNOWN_ROUTE", f"unknown route {method} {path}")
        try:
            req = json.loads(raw or b"{}")
        except ValueError:
            raise PlaidApiError(400, "INVALID_REQUEST", "INVALID_BODY", "body could not be parsed as JSON") from None
        if not isinstance(req, dict):
            raise PlaidApiError(400, "INVALID_REQUEST", "INVALID_BODY", "body must be a JSON object")
        client_id = self.headers.get("PLAID-CLIENT-ID") or req.get("client_id")
        secret = self.headers.get("PLAID-SECRET") or req.get("secret")
        missing = [n for n, v in (("client_id", client_id), ("secret", secret)) if not v]
        if missing:
            raise missing_fields(missing)
        token = req.get("access_token")
        if not isinstance(token, str) or not token:
            raise PlaidApiError(
                400, "INVALID_REQUEST", "MISSING_FIELDS", "the following required fields are missing: access_token"
            )
        if not token.startswith("access-"):
            raise PlaidApiError(
                400,
                "INVALID_INPUT",
                "INVALID_ACCESS_TOKEN",
                "provided access token is in an invalid format. expected format: access-<environment>-<identifier>",
            )
        if token == LOGIN_REQUIRED:
            raise PlaidApiError(
                400,
                "ITEM_ERROR",
                "ITEM_LOGIN_REQUIRED",
                "the login details of this item have changed (credentials, MFA, or required user action) "
                "and a user login is required to update this information.",
                "'Please update your credentials to continue.'",
            )
        return self._balance(token, req) if path == "/accounts/balance/get" else self._signal(token, req)

    def _account(self, token: str, account_id: str) -> dict[str, Any]:
        funds = 0.0 if token == LOW_BALANCE else 50000.0
        return {
            "account_id": account_id,
            "balances": {
                "available": funds,
                "current": funds,
                "limit": None,
                "iso_currency_code": "USD",
                "unofficial_currency_code": None,
                "last_updated_datetime": None,
            },
            "mask": f"{_digest(token, account_id) % 10_000:04d}",
            "name": "Plaid Checking",
            "official_name": "Plaid Gold Standard 0% Interest Checking",
            "type": "depository",
            "subtype": "checking",
            "verification_status": "automatically_verified",
            "persistent_account_id": hashlib.sha256(account_id.encode()).hexdigest()[:40],
            "holder_category": "personal",
        }

    def _balance(self, token: str, req: dict[str, Any]) -> dict[str, Any]:
        options = req.get("options") or {}
        ids = options.get("account_ids") if isinstance(options, dict) else None
        if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids)):
            raise PlaidApiError(400, "INVALID_INPUT", "INVALID_ACCOUNT_ID", "one or more of the account IDs is invalid")
        ids = ids or [f"acc-{hashlib.sha256(token.encode()).hexdigest()[:24]}"]
        item = {
            "item_id": f"item-{hashlib.sha256(token.encode()).hexdigest()[:24]}",
            "webhook": None,
            "error": None,
            "available_products": ["balance", "signal"],
            "billed_products": ["auth"],
            "products": ["auth"],
            "consent_expiration_time": None,
            "update_type": "background",
            "institution_id": "ins_109508",
            "institution_name": "First Platypus Bank",
            "auth_method": "INSTANT_AUTH",
        }
        return {"accounts": [self._account(token, i) for i in ids], "item": item, "request_id": secrets.token_hex(8)}

    def _signal(self, token: str, req: dict[str, Any]) -> dict[str, Any]:
        account_id, txn, amount = req.get("account_id"), req.get("client_transaction_id"), req.get("amount")
        missing = [
            n for n, v in (("account_id", account_id), ("client_transaction_id", txn), ("amount", amount)) if v is None
        ]
        if missing:
            raise missing_fields(missing)
        if not isinstance(account_id, str):
            raise PlaidApiError(400, "INVALID_REQUEST", "INVALID_FIELD", "account_id must be a string")
        if not isinstance(txn, str) or not 1 <= len(txn) <= 36:
            raise PlaidApiError(
                400, "INVALID_REQUEST", "INVALID_FIELD", "client_transaction_id must be 1 to 36 characters"
            )
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount <= 0:
            raise PlaidApiError(400, "INVALID_REQUEST", "INVALID_FIELD", "amount must be a positive number")
        if token == HIGH_RISK:
            customer = bank = 95
        else:
            customer = 5 + _digest(token, account_id, "customer") % 11  # 5..15, stable per account
            bank = 5 + _digest(token, account_id, "bank") % 11
        return {
            "request_id": secrets.token_hex(8),
            "scores": {
                "customer_initiated_return_risk": {"score": customer, "risk_tier": _tier(customer, 5)},
                "bank_initiated_return_risk": {"score": bank, "risk_tier": _tier(bank, 8)},
            },
            "core_attributes": {
                "days_since_first_plaid_connection": 120,
                "is_savings_or_money_market_account": False,
            },
            "warnings": [],
        }
