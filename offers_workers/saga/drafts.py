"""Real-time validation of a draft (``offers.validate_draft``): the validation stage's checks on an
offer that is not submitted, with no side effects."""

from __future__ import annotations

from offers_workers.domain.payload import FieldError, PayloadRejected, parse_offer
from offers_workers.domain.validation import check_offer
from offers_workers.runtime import Runtime


def validate_draft(rt: Runtime, draft: object) -> dict[str, object]:
    """Real-time validation of a draft offer: the validation stage's checks, no side effects.

    ``{"valid": bool, "errors": [{"field", "code", "message"}]}``; when the REAL_TIME_VALIDATION flag
    is off, ``valid`` is None and the one error says so.
    """
    if not rt.flags.enabled("REAL_TIME_VALIDATION"):
        off = FieldError(
            field="",
            code="real_time_validation_off",
            message="real-time validation is switched off; the offer is checked when submitted",
        )
        return {"valid": None, "errors": [off.model_dump()]}
    try:
        offer = parse_offer(draft)
    except PayloadRejected as rejected:
        return {"valid": False, "errors": [e.model_dump() for e in rejected.errors]}
    problems = check_offer(offer, rt.policies.lookup(rt.db, offer.listing_id))
    return {"valid": not problems, "errors": [p.model_dump() for p in problems]}
