"""The three error buckets, as the task layer applies them: which failures are retried, under
which budget, and when a stage gives up and dead-letters."""

from __future__ import annotations

import pytest

from config.retry import POLICIES, STORE_OUTAGE, policy_for
from offers_workers.domain.errors import OfferRejected, PermanentError, TransientError
from offers_workers.saga import deadletter, decisions
from offers_workers.saga.decisions import DeadLetter, RetryLater


class StoreAway(Exception):
    """Stands in for psycopg.OperationalError / redis.ConnectionError, which the task layer passes."""


class SlowRun(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded."""


PARTNERS = ("stripe", "sift", "plaid", "aws")


def failure(exc: BaseException, stage: str, retries_done: int) -> decisions.Failure:
    return decisions.on_failure(
        exc, stage=stage, retries_done=retries_done, store_errors=(StoreAway,), also_retryable=(SlowRun,)
    )


@pytest.mark.parametrize("stage", sorted(deadletter.STAGES))
@pytest.mark.parametrize("partner", PARTNERS)
def test_a_transient_partner_error_is_retried_under_the_stages_policy(stage, partner) -> None:
    assert failure(TransientError(partner, "503", "unavailable", 503), stage, 0) == RetryLater(policy_for(stage))


@pytest.mark.parametrize("stage", sorted(deadletter.STAGES))
def test_a_transient_error_is_retried_until_the_budget_is_spent(stage) -> None:
    budget = policy_for(stage).max_retries
    exc = TransientError("sift", "status_-1", "sift down")
    assert failure(exc, stage, budget - 1) == RetryLater(policy_for(stage))
    assert failure(exc, stage, budget) == DeadLetter()
    assert failure(exc, stage, budget + 5) == DeadLetter()


@pytest.mark.parametrize("stage", sorted(deadletter.STAGES))
@pytest.mark.parametrize("partner", PARTNERS)
@pytest.mark.parametrize("retries_done", [0, 3])
def test_a_permanent_partner_error_is_dead_lettered_at_once(stage, partner, retries_done) -> None:
    assert failure(PermanentError(partner, "invalid_request", "bad", 400), stage, retries_done) == DeadLetter()


@pytest.mark.parametrize("stage", sorted(deadletter.STAGES))
def test_a_bug_is_dead_lettered_at_once(stage) -> None:
    assert failure(KeyError("payment_intent_id"), stage, 0) == DeadLetter()


@pytest.mark.parametrize("stage", sorted(deadletter.STAGES))
def test_our_stores_away_ride_out_the_outage_budget(stage) -> None:
    assert failure(StoreAway("connection refused"), stage, 0) == RetryLater(STORE_OUTAGE)
    assert failure(StoreAway("connection refused"), stage, STORE_OUTAGE.max_retries - 1) == RetryLater(STORE_OUTAGE)
    assert failure(StoreAway("connection refused"), stage, STORE_OUTAGE.max_retries) == DeadLetter()


def test_the_outage_budget_outlasts_every_partner_budget() -> None:
    # The DLQ lives in Postgres: an outage must not dead-letter before Postgres is back.
    assert all(STORE_OUTAGE.max_retries > p.max_retries for p in POLICIES.values())


@pytest.mark.parametrize("stage", sorted(deadletter.STAGES))
def test_a_run_over_its_soft_time_limit_is_retried(stage) -> None:
    assert failure(SlowRun(), stage, 0) == RetryLater(policy_for(stage))


def test_without_store_errors_named_nothing_is_taken_for_an_outage() -> None:
    assert decisions.on_failure(StoreAway(), stage="payment", retries_done=0) == DeadLetter()


@pytest.mark.parametrize("stage", ["payment", "risk", "auction", "events", "compensation"])
def test_partner_stages_ride_out_minutes_of_trouble(stage) -> None:
    assert policy_for(stage).max_retries >= 16


def test_a_business_refusal_is_not_a_failure_to_retry() -> None:
    # Stages turn OfferRejected into a rejection before the task layer sees it; if one ever
    # escaped it would be a bug, and a bug is dead-lettered, never retried.
    assert failure(OfferRejected("payment_declined"), "payment", 0) == DeadLetter()
