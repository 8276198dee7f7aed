"""Real-time validation of a draft (``offers.validate_draft``): the validation stage's checks on an
offer that is not submitted. Its one side effect is the count of checked drafts (the product funnel)."""

from __future__ import annotations

import logging

import psycopg

from offers_workers.domain.payload import FieldError, OfferPayload, PayloadRejected, parse_offer
from offers_workers.domain.validation import check_offer
from offers_workers.runtime import Runtime
from offers_workers.saga import funnel
from offers_workers.store import draft_validations

log = logging.getLogger(__name__)


def validate_draft(rt: Runtime, draft: object) -> dict[str, object]:
    """Real-time validation of a draft offer: the validation stage's checks; a checked draft is counted.

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
    _count(rt, offer, valid=not problems)
    return {"valid": not problems, "errors": [p.model_dump() for p in problems]}


#: Rows deleted per statement: each is a short transaction, so the table's writers never wait long.
TRIM_BATCH = 5000


def trim_validations(rt: Runtime, older_than_s: float, *, batch: int = TRIM_BATCH) -> int:
    """Delete the counts of drafts checked more than ``older_than_s`` ago, ``batch`` rows per
    statement; how many went."""
    deleted = 0
    while True:
        with rt.db.autocommit() as conn:
            went = draft_validations.delete_older(conn, older_than_s, batch)
        deleted += went
        if went < batch:
            return deleted


def _count(rt: Runtime, draft: OfferPayload, *, valid: bool) -> None:
    """The funnel's first step: counted in Postgres (``stats``), then, committed, sent to the funnel."""
    try:
        with rt.db.transaction() as conn:
            draft_id = draft_validations.record(conn, draft, valid=valid)
    except psycopg.Error:
        # The caller waits for its answer: a count that cannot be written is not worth failing it.
        log.warning("draft validation not counted", extra={"offer_id": draft.offer_id}, exc_info=True)
        return
    funnel.send(rt, funnel.draft_validated(draft, valid=valid, draft_id=draft_id))
