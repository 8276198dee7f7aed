"""Stripe sandbox: PaymentIntents over Stripe's form-encoded v1 wire format, with Stripe's idempotency.

Test payment methods: ``pm_card_visa`` succeeds, ``pm_card_chargeDeclined`` is declined
(``generic_decline``), ``pm_card_chargeDeclinedInsufficientFunds`` is declined (``insufficient_funds``).
Idempotency keys are forgotten after 24 hours of the sandbox's clock, which ``/__sandbox/clock``
moves forward, so a test can be 25 hours later at once.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from offers_workers.local.sandbox.faults import CLOCK_PATH
from offers_workers.local.sandbox.http import PartnerHandler
from offers_workers.partners.interfaces import STRIPE_IDEMPOTENCY_TTL_S

#: pm id -> (code, decline_code, message); None means the card authorises.
TEST_PAYMENT_METHODS: dict[str, tuple[str, str, str] | None] = {
    "pm_card_visa": None,
    "pm_card_chargeDeclined": ("card_declined", "generic_decline", "Your card was declined."),
    "pm_card_chargeDeclinedInsufficientFunds": (
        "card_declined",
        "insufficient_funds",
        "Your card has insufficient funds.",
    ),
}
CANCELLABLE = {"requires_payment_method", "requires_capture", "requires_confirmation", "requires_action", "processing"}
CANCELLATION_REASONS = {"duplicate", "fraudulent", "requested_by_customer", "abandoned"}
CREATE_PARAMS = {
    "amount",
    "currency",
    "payment_method",
    "payment_method_types",
    "capture_method",
    "confirm",
    "metadata",
    "description",
    "customer",
    "receipt_email",
    "statement_descriptor",
    "statement_descriptor_suffix",
    "off_session",
    "setup_future_usage",
    "confirmation_method",
    "return_url",
    "error_on_requires_action",
    "expand",
    "automatic_payment_methods",
    "payment_method_options",
    "on_behalf_of",
}

#: One clause of a search query: ``status:'requires_capture'``, ``metadata['offer_id']:"off_1"``.
SEARCH_CLAUSE = re.compile(
    r"(?P<field>status|currency|customer|metadata)(?:\[(?P<q>['\"])(?P<key>[^'\"]+)(?P=q)\])?"
    r":(?P<vq>['\"])(?P<value>[^'\"]*)(?P=vq)"
)


class StripeApiError(Exception):
    """An error answer. ``save``: whether the idempotency layer stores it (Stripe skips validation)."""

    def __init__(self, status: int, error: dict[str, Any], save: bool = True) -> None:
        super().__init__(error.get("message", ""))
        self.status = status
        self.error = error
        self.save = save


def _invalid(
    message: str, *, code: str | None = None, param: str | None = None, status: int = 400, save: bool = False
) -> StripeApiError:
    error: dict[str, Any] = {"type": "invalid_request_error", "message": message}
    if code:
        error["code"] = code
    if param:
        error["param"] = param
    return StripeApiError(status, error, save=save)


def _missing(kind: str, ident: str, param: str | None = None) -> StripeApiError:
    return _invalid(
        f"No such {kind}: '{ident}'",
        code="resource_missing",
        param=param,
        status=404 if param is None else 400,
        save=True,
    )


@dataclass
class _IdemEntry:
    fingerprint: tuple[Any, ...]
    request_id: str
    created: float  # the sandbox's clock: Stripe forgets the key idempotency_ttl_s later
    response: tuple[int, Any] | None = None  # None while the first request is in progress


@dataclass
class StripeState:
    lock: threading.RLock = field(default_factory=threading.RLock)
    intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)  # creation order; lists are newest first
    position: dict[str, int] = field(default_factory=dict)
    idempotency: dict[tuple[str, str], _IdemEntry] = field(default_factory=dict)
    idempotency_ttl_s: float = STRIPE_IDEMPOTENCY_TTL_S
    #: How far the sandbox's clock runs ahead of the machine's (``/__sandbox/clock``).
    advanced_s: float = 0.0

    def now(self) -> float:
        return time.time() + self.advanced_s

    def clock(self) -> dict[str, Any]:
        return {"now": int(self.now()), "advanced_s": self.advanced_s, "idempotency_ttl_s": self.idempotency_ttl_s}


def nest_params(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """``metadata[offer_id]=x&payment_method_types[0]=card`` -> nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+|(?<=\[)(?=\])", key)
        node = root
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise _invalid(f"Invalid parameter: {key}", code="parameter_invalid_string", param=key)
        node[parts[-1] if parts else key] = value

    def listify(obj: Any) -> Any:
        if isinstance(obj, dict):
            obj = {k: listify(v) for k, v in obj.items()}
            if obj and all(k.isdigit() for k in obj):
                return [obj[k] for k in sorted(obj, key=int)]
        return obj

    nested: dict[str, Any] = listify(root)
    return nested


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


class StripeHandler(PartnerHandler):
    server_version = "stripe-sandbox"

    @property
    def state(self) -> StripeState:
        state: StripeState = self.server.state
        return state

    # -- faults ----------------------------------------------------------------------------------

    def fault_response(self, status: int) -> tuple[Any, dict[str, str]]:
        headers = {"Request-Id": _new_id("req")}
        if status == 429:
            error = {
                "type": "invalid_request_error",
                "code": "rate_limit",
                "message": "Too many requests hit the API too quickly.",
            }
        elif status >= 500:
            error = {"type": "api_error", "message": "An unknown error occurred (sandbox fault)."}
        elif status == 409:
            error = {
                "type": "invalid_request_error",
                "code": "lock_timeout",
                "message": "This object cannot be accessed right now (sandbox fault).",
            }
        else:
            error = {"type": "invalid_request_error", "code": "sandbox_fault", "message": f"Injected HTTP {status}."}
        return {"error": error}, headers

    # -- the sandbox's clock ----------------------------------------------------------------------

    def sandbox_control(self, path: str, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        """``GET /__sandbox/clock``; ``POST`` ``{"advance_s": N}`` moves it forward (never back, as time goes)."""
        if path != CLOCK_PATH:
            return super().sandbox_control(path, method, body)
        if method == "POST":
            try:
                advance = json.loads(body or b"{}").get("advance_s")
            except (ValueError, AttributeError):
                advance = None
            if not isinstance(advance, int | float) or isinstance(advance, bool) or advance < 0:
                return 400, {"error": 'give {"advance_s": seconds}, a number >= 0'}
            with self.state.lock:
                self.state.advanced_s += advance
        elif method != "GET":
            return 405, {"error": "use GET or POST"}
        return 200, self.state.clock()

    # -- request handling ------------------------------------------------------------------------

    def handle_partner(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> None:
        request_id = _new_id("req")
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer sk_test_"):
            # Never echo the key back: Stripe shows only its last four characters.
            tail = auth[-4:] if len(auth) > 11 else ""
            err = {"type": "invalid_request_error", "message": f"Invalid API Key provided: sk_****{tail}"}
            self.send_json(401, {"error": err}, {"Request-Id": request_id})
            return
        if method == "GET":
            pairs = [(k, v) for k, vs in query.items() for v in vs]
        else:
            pairs = parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        key = self.headers.get("Idempotency-Key")
        if method == "POST" and key:
            self._idempotent(auth, key, method, path, pairs, request_id)
            return
        status, payload = self._execute(method, path, pairs)
        self.send_json(status, payload, {"Request-Id": request_id})

    def _execute(
        self, method: str, path: str, pairs: list[tuple[str, str]], save: list[bool] | None = None
    ) -> tuple[int, Any]:
        try:
            return 200, self._route(method, path, nest_params(pairs))
        except StripeApiError as exc:
            if save is not None:
                save.append(exc.save)
            return exc.status, {"error": exc.error}

    def _idempotent(
        self, auth: str, key: str, method: str, path: str, pairs: list[tuple[str, str]], request_id: str
    ) -> None:
        fingerprint = (method, path, tuple(sorted(pairs)))
        scope = (auth, key)  # Stripe scopes keys per account
        with self.state.lock:
            now = self.state.now()
            entry = self.state.idempotency.get(scope)
            if entry is not None and now - entry.created >= self.state.idempotency_ttl_s:
                entry = None  # Stripe prunes keys after 24 h: the same key is then a new request
            mine = entry is None
            if entry is None:
                entry = self.state.idempotency[scope] = _IdemEntry(fingerprint, request_id, now)
            response = entry.response
        headers = {"Request-Id": request_id, "Idempotency-Key": key}
        if not mine:
            if entry.fingerprint != fingerprint:
                msg = (
                    f"Keys for idempotent requests can only be used with the same parameters they were first used "
                    f"with. Try using a key other than '{key}' if you meant to execute a different request."
                )
                self.send_json(400, {"error": {"type": "idempotency_error", "message": msg}}, headers)
            elif response is None:
                msg = (
                    "There is currently another in-progress request using this Idempotency-Key (that probably "
                    "means you submitted twice, and the other request is still going through). Please try again later."
                )
                err = {"type": "invalid_request_error", "code": "idempotency_key_in_use", "message": msg}
                self.send_json(409, {"error": err}, headers)
            else:
                headers.update({"Idempotent-Replayed": "true", "Original-Request": entry.request_id})
                self.send_json(response[0], response[1], headers)
            return
        save: list[bool] = []
        try:
            status, payload = self._execute(method, path, pairs, save)
        except Exception:
            with self.state.lock:
                self.state.idempotency[scope].response = (
                    500,
                    {"error": {"type": "api_error", "message": "An unknown error occurred."}},
                )
            raise
        with self.state.lock:
            if save and not save[0]:
                del self.state.idempotency[scope]  # failed validation: nothing ran, nothing is stored
            else:
                entry.response = (status, payload)
        self.send_json(status, payload, headers)

    def _route(self, method: str, path: str, params: dict[str, Any]) -> Any:
        parts = path.strip("/").split("/")
        if parts[:2] != ["v1", "payment_intents"]:
            raise _invalid(f"Unrecognized request URL ({method}: {path}).", status=404)
        if len(parts) == 2 and method == "POST":
            return self._create(params)
        if len(parts) == 2 and method == "GET":
            return self._list(params)
        if parts[2:] == ["search"] and method == "GET":
            return self._search(params)
        if len(parts) == 3 and method in ("GET", "POST"):
            return self._retrieve(parts[2]) if method == "GET" else self._update(parts[2], params)
        if len(parts) == 4 and method == "POST" and parts[3] in ("cancel", "capture", "confirm"):
            return getattr(self, f"_{parts[3]}")(parts[2], params)
        raise _invalid(f"Unrecognized request URL ({method}: {path}).", status=404)

    # -- PaymentIntents --------------------------------------------------------------------------

    def _get(self, intent_id: str) -> dict[str, Any]:
        pi = self.state.intents.get(intent_id)
        if pi is None:
            raise _missing("payment_intent", intent_id)
        return pi

    def _create(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = set(params) - CREATE_PARAMS
        if unknown:
            name = sorted(unknown)[0]
            raise _invalid(f"Received unknown parameter: {name}", code="parameter_unknown", param=name)
        amount = params.get("amount")
        if amount is None:
            raise _invalid("Missing required param: amount.", code="parameter_missing", param="amount")
        if not str(amount).isdigit() or int(amount) < 1:
            raise _invalid("Invalid positive integer", code="parameter_invalid_integer", param="amount")
        currency = params.get("currency")
        if not currency:
            raise _invalid("Missing required param: currency.", code="parameter_missing", param="currency")
        if not re.fullmatch(r"[A-Za-z]{3}", currency):
            raise _invalid(f"Invalid currency: {currency.lower()}.", code="parameter_invalid_string", param="currency")
        capture_method = params.get("capture_method", "automatic_async")
        if capture_method not in ("automatic", "automatic_async", "manual"):
            raise _invalid(
                f"Invalid capture_method: {capture_method}", code="parameter_invalid_string", param="capture_method"
            )
        metadata = params.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise _invalid("Invalid metadata: must be an object", code="parameter_invalid_string", param="metadata")
        pm = params.get("payment_method") or None
        if pm is not None and pm not in TEST_PAYMENT_METHODS:
            raise _missing("PaymentMethod", pm, param="payment_method")
        confirm = params.get("confirm") == "true"
        if confirm and pm is None:
            raise _invalid(
                "You cannot confirm this PaymentIntent because it's missing a payment method.",
                code="payment_intent_unexpected_state",
                save=True,
            )
        pm_types = params.get("payment_method_types") or ["card"]
        with self.state.lock:
            pi = {
                "id": _new_id("pi"),
                "object": "payment_intent",
                "amount": int(amount),
                "amount_capturable": 0,
                "amount_received": 0,
                "canceled_at": None,
                "cancellation_reason": None,
                "capture_method": capture_method,
                "client_secret": None,
                "confirmation_method": params.get("confirmation_method", "automatic"),
                "created": int(self.state.now()),
                "currency": currency.lower(),
                "customer": params.get("customer"),
                "description": params.get("description"),
                "last_payment_error": None,
                "latest_charge": None,
                "livemode": False,
                "metadata": {k: v for k, v in metadata.items() if v != ""},
                "payment_method": pm,
                "payment_method_types": pm_types if isinstance(pm_types, list) else [pm_types],
                "status": "requires_confirmation" if pm else "requires_payment_method",
            }
            pi["client_secret"] = f"{pi['id']}_secret_{secrets.token_hex(8)}"
            self.state.intents[pi["id"]] = pi
            self.state.position[pi["id"]] = len(self.state.order)
            self.state.order.append(pi["id"])
            if confirm:
                self._authorise(pi)
            return copy.deepcopy(pi)

    def _authorise(self, pi: dict[str, Any]) -> None:
        """Confirm ``pi`` with its payment method; a decline leaves the PI behind, as Stripe does."""
        outcome = TEST_PAYMENT_METHODS[pi["payment_method"]]
        charge = _new_id("ch")
        pi["latest_charge"] = charge
        if outcome is None:
            if pi["capture_method"] == "manual":
                pi.update(status="requires_capture", amount_capturable=pi["amount"])
            else:
                pi.update(status="succeeded", amount_received=pi["amount"])
            return
        code, decline_code, message = outcome
        pm_obj = {"id": pi["payment_method"], "object": "payment_method", "type": "card", "livemode": False}
        error = {
            "type": "card_error",
            "code": code,
            "decline_code": decline_code,
            "message": message,
            "charge": charge,
            "doc_url": f"https://stripe.com/docs/error-codes/{code.replace('_', '-')}",
            "payment_method": pm_obj,
        }
        pi.update(status="requires_payment_method", payment_method=None, last_payment_error=error)
        raise StripeApiError(402, {**error, "payment_intent": copy.deepcopy(pi)})

    def _retrieve(self, intent_id: str) -> dict[str, Any]:
        with self.state.lock:
            return copy.deepcopy(self._get(intent_id))

    def _update(self, intent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            pi = self._get(intent_id)
            for key, value in (params.get("metadata") or {}).items():
                if value == "":
                    pi["metadata"].pop(key, None)
                else:
                    pi["metadata"][key] = value
            if "description" in params:
                pi["description"] = params["description"] or None
            return copy.deepcopy(pi)

    def _unexpected_state(self, pi: dict[str, Any], action: str, allowed: str) -> StripeApiError:
        msg = (
            f"You cannot {action} this PaymentIntent because it has a status of {pi['status']}. "
            f"Only a PaymentIntent with one of the following statuses may be {action}ed: {allowed}."
        )
        err = _invalid(msg, code="payment_intent_unexpected_state", save=True)
        err.error["payment_intent"] = copy.deepcopy(pi)
        return err

    def _cancel(self, intent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        reason = params.get("cancellation_reason")
        if reason is not None and reason not in CANCELLATION_REASONS:
            raise _invalid(
                f"Invalid cancellation_reason: must be one of {', '.join(sorted(CANCELLATION_REASONS))}",
                code="parameter_invalid_string",
                param="cancellation_reason",
            )
        with self.state.lock:
            pi = self._get(intent_id)
            if pi["status"] not in CANCELLABLE:
                raise self._unexpected_state(pi, "cancel", ", ".join(sorted(CANCELLABLE)))
            pi.update(
                status="canceled", cancellation_reason=reason, canceled_at=int(self.state.now()), amount_capturable=0
            )
            return copy.deepcopy(pi)

    def _capture(self, intent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        with self.state.lock:
            pi = self._get(intent_id)
            if pi["status"] != "requires_capture":
                raise self._unexpected_state(pi, "capture", "requires_capture")
            to_capture = int(params.get("amount_to_capture") or pi["amount"])
            if to_capture > pi["amount_capturable"]:
                raise _invalid(
                    "amount_to_capture is greater than amount_capturable",
                    code="amount_too_large",
                    param="amount_to_capture",
                )
            pi.update(status="succeeded", amount_received=to_capture, amount_capturable=0)
            return copy.deepcopy(pi)

    def _confirm(self, intent_id: str, params: dict[str, Any]) -> dict[str, Any]:
        pm = params.get("payment_method")
        if pm is not None and pm not in TEST_PAYMENT_METHODS:
            raise _missing("PaymentMethod", pm, param="payment_method")
        with self.state.lock:
            pi = self._get(intent_id)
            if pi["status"] not in ("requires_confirmation", "requires_payment_method"):
                raise self._unexpected_state(pi, "confirm", "requires_confirmation, requires_payment_method")
            if pm is not None:
                pi["payment_method"] = pm
            if pi["payment_method"] is None:
                raise _invalid(
                    "You cannot confirm this PaymentIntent because it's missing a payment method.",
                    code="payment_intent_unexpected_state",
                    save=True,
                )
            self._authorise(pi)
            return copy.deepcopy(pi)

    def _list(self, params: dict[str, Any]) -> dict[str, Any]:
        limit_raw = params.get("limit", "10")
        if not str(limit_raw).isdigit() or not 1 <= int(limit_raw) <= 100:
            raise _invalid(
                "Invalid integer: limit must be between 1 and 100", code="parameter_invalid_integer", param="limit"
            )
        limit = int(limit_raw)
        after, before = params.get("starting_after"), params.get("ending_before")
        with self.state.lock:
            newest_first = self.state.order[::-1]
            if after:
                if after not in self.state.position:
                    raise _missing("payment_intent", after, param="starting_after")
                rest = newest_first[newest_first.index(after) + 1 :]
                page, has_more = rest[:limit], len(rest) > limit
            elif before:
                if before not in self.state.position:
                    raise _missing("payment_intent", before, param="ending_before")
                rest = newest_first[: newest_first.index(before)]
                page, has_more = rest[-limit:], len(rest) > limit
            else:
                page, has_more = newest_first[:limit], len(newest_first) > limit
            data = [copy.deepcopy(self.state.intents[i]) for i in page]
        return {"object": "list", "data": data, "has_more": has_more, "url": "/v1/payment_intents"}

    def _search(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stripe's Search, for ``field:'value'`` clauses joined by ``AND`` on ``status``, ``currency``,
        ``customer`` and ``metadata['key']``, newest first. Unlike Stripe's, whose index lags writes by
        about a minute, it sees every write at once."""
        query = params.get("query")
        if not query:
            raise _invalid("Missing required param: query.", code="parameter_missing", param="query")
        clauses = []
        for clause in str(query).split(" AND "):
            match = SEARCH_CLAUSE.fullmatch(clause.strip())
            if match is None or (match.group("field") == "metadata") != (match.group("key") is not None):
                raise _invalid(f"Invalid query: {clause.strip()!r} is not a supported clause.", param="query")
            clauses.append((match.group("field"), match.group("key"), match.group("value")))
        limit_raw = params.get("limit", "10")
        if not str(limit_raw).isdigit() or not 1 <= int(limit_raw) <= 100:
            raise _invalid(
                "Invalid integer: limit must be between 1 and 100", code="parameter_invalid_integer", param="limit"
            )
        page = params.get("page") or "0"
        if not str(page).isdigit():
            raise _invalid(f"Invalid page: {page}", param="page")
        start, limit = int(page), int(limit_raw)

        def matches(pi: dict[str, Any]) -> bool:
            return all(
                (pi["metadata"].get(key) if name == "metadata" else pi.get(name)) == value
                for name, key, value in clauses
            )

        with self.state.lock:
            hits = [i for i in self.state.order[::-1] if matches(self.state.intents[i])]
            data = [copy.deepcopy(self.state.intents[i]) for i in hits[start : start + limit]]
        more = len(hits) > start + limit
        return {
            "object": "search_result",
            "data": data,
            "has_more": more,
            "next_page": str(start + limit) if more else None,
            "url": "/v1/payment_intents/search",
        }
