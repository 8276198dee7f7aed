"""Offer payload v1: the JSON body upstream services send with ``offers.submit``.

Unknown fields are rejected and the whole message is capped at 32 KiB, so a bad producer is told
exactly what is wrong (field-level errors) instead of having its data silently dropped.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError

MAX_MESSAGE_BYTES = 32 * 1024
#: How much of a rejected message's raw body is kept in its intake-rejection row.
RAW_BODY_KEEP_BYTES = 4 * 1024

#: Control characters have no place in these fields (and Postgres refuses NUL in text and jsonb).
NO_CONTROLS = r"^[^\x00-\x1f\x7f]*$"
#: Ids (offer, listing, maker, buyer): 1-64 letters, digits, '_' or '-'.
ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"
Identifier = Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN}$")]
#: An offer id, as intake and cancellation check a claimed one before the payload is parsed.
OFFER_ID = re.compile(ID_PATTERN)
CurrencyCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=255, pattern=NO_CONTROLS)]


def _ip_address(value: str) -> str:
    ipaddress.ip_address(value)  # ValueError → a field error naming buyer_context.ip
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CardPayment(_Strict):
    method: Literal["card"]
    payment_method_id: ShortText


class BankAccountPayment(_Strict):
    method: Literal["bank_account"]
    plaid_access_token: ShortText
    plaid_account_id: ShortText


class BuyerContext(_Strict):
    email: (
        Annotated[str, StringConstraints(max_length=254, pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$")] | None
    ) = None
    ip: Annotated[str, StringConstraints(max_length=45), AfterValidator(_ip_address)] | None = None
    session_id: Annotated[str, StringConstraints(max_length=128, pattern=NO_CONTROLS)] | None = None


class OfferPayload(_Strict):
    """One offer, as the upstream service submits it."""

    offer_id: Identifier
    listing_id: Identifier
    maker_id: Identifier
    buyer_id: Identifier
    amount_cents: Annotated[int, Field(ge=1, le=100_000_000)]
    currency: CurrencyCode
    payment: Annotated[CardPayment | BankAccountPayment, Field(discriminator="method")]
    buyer_context: BuyerContext = BuyerContext()
    # Line breaks and tabs are fine in a message to the maker; other control characters are not.
    message: (
        Annotated[str, StringConstraints(max_length=1000, pattern=r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f]*$")] | None
    ) = None
    # Strict mode would refuse ISO strings; timestamps arrive as JSON text, so parse them leniently.
    submitted_at: Annotated[datetime, Field(strict=False)] | None = None
    synthetic: bool = False


class FieldError(BaseModel):
    field: str
    code: str
    message: str


class PayloadRejected(Exception):
    """The message is not a usable offer; ``errors`` say why, field by field."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__("; ".join(f"{e.field or '(message)'}: {e.message}" for e in errors))
        self.errors = errors


def canonical_json(value: Any) -> str:
    """Stable JSON text of a decoded body: the same offer always hashes the same."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def body_sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def _field_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False, include_input=False):
        # Drop pydantic's union-branch names ("card", "bank_account") from the path.
        # Field names come from the sender: cap them and drop NULs (Postgres text refuses them).
        loc = [str(p)[:100].replace("\x00", "") for p in err["loc"] if p not in ("card", "bank_account")]
        # Messages may quote the sender's input (a union tag, say): same care.
        message = err["msg"][:500].replace("\x00", "\\u0000")
        errors.append(FieldError(field=".".join(loc), code=err["type"], message=message))
    return errors


def parse_offer(raw: Any) -> OfferPayload:
    """Check a decoded message against payload v1; raise PayloadRejected with field-level errors."""
    try:
        size = len(canonical_json(raw).encode())
    except RecursionError:
        raise PayloadRejected(
            [FieldError(field="", code="too_deep", message="the message is nested too deeply")]
        ) from None
    except ValueError as exc:  # e.g. an integer too long to print
        raise PayloadRejected([FieldError(field="", code="not_serialisable", message=str(exc)[:200])]) from None
    if size > MAX_MESSAGE_BYTES:
        raise PayloadRejected(
            [
                FieldError(
                    field="", code="too_large", message=f"message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}"
                )
            ]
        )
    if not isinstance(raw, dict):
        raise PayloadRejected(
            [
                FieldError(
                    field="", code="not_an_object", message=f"offer must be a JSON object, got {type(raw).__name__}"
                )
            ]
        )
    try:
        return OfferPayload.model_validate(raw)
    except ValidationError as exc:
        raise PayloadRejected(_field_errors(exc)) from None


def json_schema() -> dict[str, Any]:
    schema = OfferPayload.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Offer payload v1"
    schema["description"] = (
        "kwargs['offer'] of Celery task 'offers.submit' on queue 'offers.intake' (JSON serializer). "
        f"Whole message at most {MAX_MESSAGE_BYTES} bytes; offer_id is the idempotency key."
    )
    return schema
