"""The saga's decisions as pure functions: given an offer's state and what a partner answered,
what happens next.

No I/O and no Celery here. The stage functions (``stages``, ``intake``, ``cancellation``) load the
offer, call partners, ask these functions what the answer means, commit it and send the messages
it names; the task layer asks ``on_failure`` whether a failed run is retried or dead-lettered.
So every rule (reject or advance, the risk thresholds, compensation, who may cancel what) can be
tested without Postgres, Redis or a partner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Literal, Protocol

from config.retry import STORE_OUTAGE, RetryPolicy, policy_for
from offers_workers.domain import states
from offers_workers.domain.errors import OfferRejected, PermanentError, TransientError
from offers_workers.domain.events import EventDetail
from offers_workers.domain.payload import OFFER_ID, FieldError, OfferPayload
from offers_workers.domain.policy import ListingPolicy
from offers_workers.domain.states import Stage, State
from offers_workers.domain.validation import check_offer

PUBLISH_EVENT_TASK = "offers.publish_event"
RELEASE_HOLD_TASK = "offers.release_hold"


# --- what a stage hands to the task layer and the commit -----------------------------------------


@dataclass(frozen=True)
class Dispatch:
    """A task to send once the current transaction has committed."""

    task: str
    kwargs: dict[str, Any]
    #: The offer's stored ``traceparent``, for a message sent outside its trace (sweep, replay).
    trace_parent: str | None = None
    #: What sends it outside the offer's trace ("recovery sweep", "dlq replay"): the resumed span's name.
    resent_by: str | None = None


@dataclass(frozen=True)
class Advance:
    """The stage succeeded: move the offer on to the stage's next state."""

    fields: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    #: A hold placed by this stage, recorded even if the offer moved meanwhile (so it is released).
    payment_intent_id: str | None = None
    #: An event this stage has already published, kept in the outbox as published.
    published: tuple[EventDetail, str] | None = None
    #: What EventBridge and SNS answered for that event (SNS's MessageId: None without a topic).
    bus_event_id: str | None = None
    sns_message_id: str | None = None


@dataclass(frozen=True)
class Reject:
    """A business outcome: the offer ends ``rejected`` with ``reason``."""

    reason: states.RejectionReason
    fields: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


Outcome = Advance | Reject


def traced(dispatch: Dispatch, trace_parent: str | None, resent_by: str) -> Dispatch:
    """``dispatch`` sent from outside its offer's trace (by ``resent_by``), resuming that trace."""
    return replace(dispatch, trace_parent=trace_parent, resent_by=resent_by)


def hand_on(offer_id: str, state: State) -> list[Dispatch]:
    """The stage to send for an offer sitting in ``state`` (none once the saga is done with it)."""
    stage = states.next_stage(state)
    return [Dispatch(stage.task, {"offer_id": offer_id})] if stage else []


# --- arriving at a stage -------------------------------------------------------------------------


class Arrival(Enum):
    """What a stage does with the offer it was sent for."""

    #: The offer sits in the stage's from-state: do the work.
    WORK = "work"
    #: The offer already sits in the stage's to-state: a previous run committed but may have died
    #: before sending the next stage, so send it again.
    HAND_ON = "hand_on"
    #: The offer is gone, or elsewhere (another delivery did the work, or it ended): change nothing.
    NOTHING = "nothing"


def on_arrival(stage: Stage, state: State | None) -> Arrival:
    """Decide from the offer's current state (None: no such offer) whether ``stage`` works on it."""
    if state is None:
        return Arrival.NOTHING
    if state == stage.from_state:
        return Arrival.WORK
    return Arrival.HAND_ON if state == stage.to_state else Arrival.NOTHING


def rejected(exc: OfferRejected) -> Reject:
    """A partner's business refusal (a card decline, say) ends the offer with its reason."""
    return Reject(exc.reason, data={"detail": exc.detail} if exc.detail else {})


# --- the stages' own rules -----------------------------------------------------------------------


def decide_validation(payload: OfferPayload, found: ListingPolicy | None) -> Outcome:
    """Reject with the first (most fundamental) rule the offer breaks, listing them all; else advance."""
    problems = check_offer(payload, found)
    if problems:
        reason = problems[0].code
        # A rule that named a code outside the contract is a bug: dead-lettered, not sent to upstreams.
        if not states.is_rejection_reason(reason):
            raise PermanentError("validation", "unknown_reason", f"validation named {reason!r}, not a contract reason")
        return Reject(reason, data={"errors": [p.model_dump() for p in problems]})
    return Advance()


def card_held(payment_intent_id: str) -> Advance:
    """A placed hold advances the offer and is recorded with it."""
    return Advance(payment_intent_id=payment_intent_id, data={"payment_intent_id": payment_intent_id})


def funds_checked(available_cents: int, amount_cents: int) -> Outcome:
    """A bank-account offer advances when the account's balance covers the amount."""
    if available_cents < amount_cents:
        return Reject("insufficient_funds", data={"funds_verified": False})
    return Advance(data={"funds_verified": True})


def decide_risk(
    score: float, return_risk: int | None, *, risk_block_threshold: float, return_risk_block_threshold: int
) -> Outcome:
    """Block at or above either threshold; the scores are kept on the offer whichever way it goes."""
    scores: dict[str, Any] = {"risk_score": score, "return_risk_score": return_risk}
    blocked = score >= risk_block_threshold or (return_risk is not None and return_risk >= return_risk_block_threshold)
    return Reject("risk_blocked", fields=scores, data=scores) if blocked else Advance(fields=scores, data=scores)


def auction_triggered(
    detail: EventDetail, *, bus_event_id: str | None = None, sns_message_id: str | None = None
) -> Advance:
    """The submitted event went out: keep it in the outbox as published, with the ids EventBridge
    and SNS gave it (in the audit row too), and advance."""
    return Advance(
        published=(detail, "offer.submitted"),
        data={"event_id": detail.event_id, "bus_event_id": bus_event_id, "sns_message_id": sns_message_id},
        bus_event_id=bus_event_id,
        sns_message_id=sns_message_id,
    )


def decide_audit(reached: Sequence[State]) -> Advance:
    """The offer is submitted only when its trail shows every step, in order; a replayed offer
    passes some states twice, which is fine. Raises ``PermanentError`` (dead letter) otherwise."""
    expected = list(states.HAPPY_PATH[:-1])
    firsts = [reached.index(s) for s in expected if s in reached]
    if len(firsts) != len(expected) or firsts != sorted(firsts):
        raise PermanentError("audit", "incomplete_trail", f"audit trail shows {list(reached)}, expected {expected}")
    return Advance()


# --- after the commit: events and compensation ---------------------------------------------------


def on_end(offer_id: str, event_id: str, hold_status: str) -> list[Dispatch]:
    """An offer just ended (rejected or cancelled): publish its event and release any hold."""
    dispatches = [Dispatch(PUBLISH_EVENT_TASK, {"event_id": event_id})]
    if hold_status == "held":
        dispatches.append(Dispatch(RELEASE_HOLD_TASK, {"offer_id": offer_id}))
    return dispatches


def on_lost_race(offer_id: str, state: State | None, hold_status: str | None) -> list[Dispatch]:
    """Someone else moved the offer while a stage worked (a duplicate delivery, a cancel). If it
    has ended holding a hold (one this stage placed meanwhile, say), release it; else nothing."""
    if state in states.TERMINAL and hold_status == "held":
        return [Dispatch(RELEASE_HOLD_TASK, {"offer_id": offer_id})]
    return []


# --- failures ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryLater:
    """Retry the run under ``policy`` (its countdown; the broker holds the message meanwhile)."""

    policy: RetryPolicy


@dataclass(frozen=True)
class DeadLetter:
    """Stop retrying: the run goes to its stage's dead-letter queue for an operator."""


Failure = RetryLater | DeadLetter


def on_failure(
    exc: BaseException,
    *,
    stage: str,
    retries_done: int,
    store_errors: tuple[type[BaseException], ...] = (),
    also_retryable: tuple[type[BaseException], ...] = (),
) -> Failure:
    """A stage run raised ``exc``. A partner's transient error (and ``also_retryable``) is retried
    under the stage's policy, our own stores away (``store_errors``) under the outage budget, until
    the budget is spent; anything else (a permanent partner error, a bug) is dead-lettered at once.
    A business refusal never gets here: the stage turned it into a rejection."""
    if store_errors and isinstance(exc, store_errors):
        policy = STORE_OUTAGE
    elif isinstance(exc, (TransientError, *also_retryable)):
        policy = policy_for(stage)
    else:
        return DeadLetter()
    return RetryLater(policy) if retries_done < policy.max_retries else DeadLetter()


# --- cancellation --------------------------------------------------------------------------------

#: Who may send ``offers.cancel``.
CANCEL_ACTORS = frozenset(states.CANCEL_ACTORS)
#: Reasons a cancel request may give.
REQUEST_REASONS = frozenset(states.CANCEL_REASONS)
#: The SLA job's own reason and actor: a cancel request may not give them.
SLA_EXPIRED = "maker_sla_expired"
SLA_ACTOR = "offers.expire_offers"

CancelOutcome = Literal["cancelled", "tombstone", "already_cancelled", "already_rejected"]


def cancel_request_errors(
    offer_id: object, reason: object, actor: object, unexpected: Mapping[str, object]
) -> list[FieldError]:
    """Everything wrong with an ``offers.cancel`` message's arguments (empty when it may proceed)."""
    errors = [
        FieldError(field=k, code="unexpected_argument", message="offers.cancel takes offer_id, reason and actor")
        for k in sorted(unexpected)
    ]
    if not isinstance(offer_id, str) or not OFFER_ID.fullmatch(offer_id):
        errors.append(
            FieldError(field="offer_id", code="invalid", message="1-64 characters: letters, digits, '_' or '-'")
        )
    # Only a string can be one of them: a list or a dict from the wire must be refused, not crash the lookup.
    if not isinstance(reason, str) or reason not in REQUEST_REASONS:
        errors.append(
            FieldError(field="reason", code="invalid", message=f"one of {', '.join(sorted(REQUEST_REASONS))}")
        )
    if not isinstance(actor, str) or actor not in CANCEL_ACTORS:
        errors.append(FieldError(field="actor", code="invalid", message=f"one of {', '.join(sorted(CANCEL_ACTORS))}"))
    return errors


@dataclass(frozen=True, slots=True)
class KeptArguments:
    """What of a refused cancel's arguments is recorded (None: missing, not a string, or too long)."""

    offer_id: str | None
    reason: str | None
    actor: str | None


def kept_cancel_arguments(offer_id: object, reason: object, actor: object) -> KeptArguments:
    """What of a refused cancel's arguments is worth recording: short strings only."""

    def short(value: object) -> str | None:
        return value if isinstance(value, str) and len(value) <= 64 else None

    return KeptArguments(short(offer_id), short(reason), short(actor))


def decide_cancel(state: State | None) -> CancelOutcome:
    """A valid cancel of an offer in ``state`` (None: not received yet). A missing offer leaves a
    tombstone its late submit honours; an ended one stays as it is; any other (in flight,
    submitted or dead-lettered) is cancelled."""
    if state is None:
        return "tombstone"
    if state in states.TERMINAL:
        return "already_cancelled" if state == states.CANCELLED else "already_rejected"
    return "cancelled"


# --- intake --------------------------------------------------------------------------------------


def claimed_offer_id(raw: object) -> str | None:
    """The offer id a refused body claims, when it is a well-formed one (kept with the rejection)."""
    claimed = raw.get("offer_id") if isinstance(raw, dict) else None
    return claimed if isinstance(claimed, str) and OFFER_ID.fullmatch(claimed) else None


def submit_argument_errors(raw: object, unexpected: Mapping[str, object]) -> list[FieldError]:
    """Problems with the ``offers.submit`` call itself, before its body is read."""
    if unexpected:
        return [
            FieldError(field=k, code="unexpected_argument", message="offers.submit takes only 'offer'")
            for k in sorted(unexpected)
        ]
    if raw is None:
        return [FieldError(field="offer", code="missing", message="the 'offer' argument is required")]
    return []


class AdmissionLike(Protocol):
    """The soft-launch bucket's answer (``saga.admission.Admission``)."""

    @property
    def admitted(self) -> bool: ...
    @property
    def wait_s(self) -> float: ...
    @property
    def refused(self) -> bool: ...


@dataclass(frozen=True)
class Gate:
    """An offer not let in at the door: wait ``wait_s`` (throttled) or refused with ``error``."""

    wait_s: float = 0.0
    error: FieldError | None = None


def door_open(submission_on: bool, soft_launch: bool) -> bool:
    """With submission on and no soft launch every offer is admitted without asking anything else."""
    return submission_on and not soft_launch


def may_exempt(admission: AdmissionLike, *, synthetic: bool) -> bool:
    """Only a synthetic offer refused by the allow-list may ask again as the synthetic journey's
    maker (the caller then checks the maker is marked synthetic in Postgres)."""
    return admission.refused and synthetic


def admission_gate(submission_on: bool, admission: AdmissionLike | None) -> Gate | None:
    """The door's answer once the flags are not simply open: None admits the offer.
    ``admission`` is the soft-launch bucket's answer (None when submission is off: it is not asked)."""
    if not submission_on or admission is None:
        return Gate(
            error=FieldError(field="offer", code="submission_disabled", message="offer submission is switched off")
        )
    if admission.refused:
        return Gate(
            error=FieldError(
                field="maker_id", code="submission_disabled", message="soft launch: this maker is not admitted yet"
            )
        )
    return None if admission.admitted else Gate(wait_s=admission.wait_s)


@dataclass(frozen=True)
class Resubmit:
    """An offer id that exists already: ``duplicate`` (the same body) or ``duplicate_conflict``."""

    outcome: Literal["duplicate", "duplicate_conflict"]
    dispatches: list[Dispatch]


def duplicate_conflict_error() -> FieldError:
    """The field error a conflicting resubmit is recorded with."""
    return FieldError(
        field="offer_id",
        code="duplicate_conflict",
        message="an offer with this id was already submitted with a different body",
    )


def on_resubmit(offer_id: str, *, stored_sha256: str, body_sha256: str, stored_state: State) -> Resubmit:
    """The same body again is processed once; a redelivery after a crash between commit and send
    must still hand a ``received`` offer on. Another body under the same id is a conflict."""
    if stored_sha256 != body_sha256:
        return Resubmit("duplicate_conflict", [])
    dispatches = hand_on(offer_id, states.RECEIVED) if stored_state == states.RECEIVED else []
    return Resubmit("duplicate", dispatches)
