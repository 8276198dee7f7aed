"""The offer state machine: which state each saga stage takes an offer from and to.

``received → validated → payment_held → risk_cleared → auction_triggered → submitted``, with the
outcomes ``rejected``, ``cancelled`` and ``dead_lettered`` (waiting for an operator; resumable).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, TypeGuard, get_args

#: An offer's state, as the ``offers.state`` column and the events on the wire carry it (the contract).
State = Literal[
    "received",
    "validated",
    "payment_held",
    "risk_cleared",
    "auction_triggered",
    "submitted",
    "rejected",
    "cancelled",
    "dead_lettered",
]
RECEIVED: Final = "received"
VALIDATED: Final = "validated"
PAYMENT_HELD: Final = "payment_held"
RISK_CLEARED: Final = "risk_cleared"
AUCTION_TRIGGERED: Final = "auction_triggered"
SUBMITTED: Final = "submitted"
REJECTED: Final = "rejected"
CANCELLED: Final = "cancelled"
DEAD_LETTERED: Final = "dead_lettered"

HAPPY_PATH: tuple[State, ...] = (RECEIVED, VALIDATED, PAYMENT_HELD, RISK_CLEARED, AUCTION_TRIGGERED, SUBMITTED)
ALL_STATES: tuple[State, ...] = get_args(State)
#: States no stage moves an offer out of (a submitted offer can still be cancelled).
TERMINAL: frozenset[State] = frozenset({REJECTED, CANCELLED})
#: States in which the saga still has work to do.
OPEN: frozenset[State] = frozenset({RECEIVED, VALIDATED, PAYMENT_HELD, RISK_CLEARED, AUCTION_TRIGGERED})

#: Whether an offer holds a card authorization (``offers.hold_status``).
HoldStatus = Literal["none", "held", "released"]

#: Reason codes of the contract: why an offer ended rejected.
RejectionReason = Literal[
    "invalid_payload",
    "submission_disabled",
    "duplicate_conflict",
    "listing_not_found",
    "listing_unavailable",
    "maker_mismatch",
    "currency_mismatch",
    "below_minimum",
    "below_auto_reject_threshold",
    "bank_payments_not_accepted",
    "payment_declined",
    "insufficient_funds",
    "risk_blocked",
]
REJECTION_REASONS: frozenset[RejectionReason] = frozenset(get_args(RejectionReason))


def is_rejection_reason(code: str) -> TypeGuard[RejectionReason]:
    return code in REJECTION_REASONS


#: Why a message became an intake rejection rather than an offer (``intake rejections --reason``);
#: unauthenticated: a message whose task needs a sender it could not prove (docs/production.md, "Trust boundary").
IntakeRejectionReason = Literal["invalid_payload", "submission_disabled", "duplicate_conflict", "unauthenticated"]
INTAKE_REJECTION_REASONS: tuple[IntakeRejectionReason, ...] = get_args(IntakeRejectionReason)
#: Reasons a cancel request (``offers.cancel``, ``offers-workers cancel``) may give.
CancelReason = Literal["buyer_withdrew", "maker_rejected", "ops"]
CANCEL_REASONS: tuple[CancelReason, ...] = get_args(CancelReason)
#: Who may send a cancel request.
CancelActor = Literal["buyer", "maker", "ops"]
CANCEL_ACTORS: tuple[CancelActor, ...] = get_args(CancelActor)
#: Every reason a cancelled offer may carry: a request's, or the maker SLA job's own.
CancellationReason = Literal[CancelReason, "maker_sla_expired"]
CANCELLATION_REASONS: frozenset[CancellationReason] = frozenset({*CANCEL_REASONS, "maker_sla_expired"})
#: What a cancel request did, as `cancel_requests.outcome` records it.
CancelOutcome = Literal[
    "cancelled", "tombstone", "tombstone_applied", "already_cancelled", "already_rejected", "invalid"
]
CANCEL_OUTCOMES: tuple[CancelOutcome, ...] = get_args(CancelOutcome)


@dataclass(frozen=True)
class Stage:
    """One step of the saga: the state it expects, the state it produces, its task and queue."""

    name: str
    from_state: State
    to_state: State
    task: str
    queue: str


VALIDATION_STAGE = Stage("validation", RECEIVED, VALIDATED, "offers.stage.validate", "offers.validation")
PAYMENT_STAGE = Stage("payment", VALIDATED, PAYMENT_HELD, "offers.stage.hold_payment", "offers.payment")
RISK_STAGE = Stage("risk", PAYMENT_HELD, RISK_CLEARED, "offers.stage.score_risk", "offers.risk")
AUCTION_STAGE = Stage("auction", RISK_CLEARED, AUCTION_TRIGGERED, "offers.stage.trigger_auction", "offers.auction")
AUDIT_STAGE = Stage("audit", AUCTION_TRIGGERED, SUBMITTED, "offers.stage.complete", "offers.audit")
STAGES = (VALIDATION_STAGE, PAYMENT_STAGE, RISK_STAGE, AUCTION_STAGE, AUDIT_STAGE)
STAGE_BY_NAME = {s.name: s for s in STAGES}
#: The stage that works on an offer sitting in a given state.
STAGE_FOR_STATE = {s.from_state: s for s in STAGES}

_ALLOWED: dict[State, set[State]] = {s.from_state: {s.to_state} for s in STAGES}
for _state in OPEN:
    _ALLOWED[_state] |= {REJECTED, CANCELLED, DEAD_LETTERED}
_ALLOWED[SUBMITTED] = {CANCELLED}
# A dead-lettered offer resumes where it stopped (replay), or ends.
_ALLOWED[DEAD_LETTERED] = set(OPEN) | {REJECTED, CANCELLED}
_ALLOWED[REJECTED] = set()
_ALLOWED[CANCELLED] = set()


class IllegalTransition(Exception):
    def __init__(self, from_state: str, to_state: str) -> None:
        super().__init__(f"an offer cannot go from {from_state} to {to_state}")
        self.from_state = from_state
        self.to_state = to_state


def can_transition(from_state: State, to_state: State) -> bool:
    return to_state in _ALLOWED.get(from_state, set())


def check_transition(from_state: State, to_state: State) -> None:
    if not can_transition(from_state, to_state):
        raise IllegalTransition(from_state, to_state)


def next_stage(state: State) -> Stage | None:
    """The stage to run for an offer in ``state`` (None when the saga has nothing to do)."""
    return STAGE_FOR_STATE.get(state)
