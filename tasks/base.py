"""The one base task: logging context, retries with backoff, dead-lettering, after-commit sends,
and poison messages (tasks/deliveries.py)."""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from celery.exceptions import Retry, SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerUnreachable

from config.retry import STORE_OUTAGE, RetryPolicy
from offers_workers import logs, tracing
from offers_workers.domain import stage_tasks
from offers_workers.domain.errors import PartnerError
from offers_workers.domain.states import State
from offers_workers.runtime import get_runtime
from offers_workers.saga import deadletter, decisions
from offers_workers.saga.decisions import Dispatch
from offers_workers.store import counters, offers
from tasks import deliveries, failpoints
from tasks.authority import STORE_ERRORS, AuthenticatedTask

log = logging.getLogger("offers_workers.tasks")

#: Our stores away, the broker too: a send after the commit that fails while a Redis master fails
#: over is retried (the sweep re-sends it if the retry cannot be sent either), never dead-lettered.
OUTAGE_ERRORS = (*STORE_ERRORS, BrokerUnreachable)


class OffersTask(AuthenticatedTask):
    """A saga step. ``stage`` names its dead-letter queue and retry policy.

    The task body returns the messages to send next; they are sent here, after the body's
    transaction has committed, never from inside it. Register one with ``stage_task``, which takes
    its stage and state from its declaration.
    """

    abstract = True
    #: No default: a task that forgot its stage would retry and dead-letter as another's.
    stage: str
    #: The state an offer is moved out of when this step is dead-lettered (stages only).
    from_state: State | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "stage", None) is None:
            raise TypeError(f"task {cls.__name__}: no stage (register it with tasks.base.stage_task)")
        # A stage outside deadletter.STAGES would fill a queue `dlq list/replay --stage` cannot name.
        if cls.stage not in deadletter.STAGES:
            raise TypeError(f"task {cls.__name__}: stage {cls.stage!r} is not in offers_workers.saga.deadletter.STAGES")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rt = get_runtime()
        if self.refused(rt.settings):  # checked before anything else: a refused message is recorded, never run
            return None
        context = {"task_id": self.request.id, "stage": self.stage, "attempt": self.request.retries + 1}
        if "offer_id" in kwargs:
            context["offer_id"] = kwargs["offer_id"]
        token = logs.task_context.set(context)
        # The Celery instrumentation's span for this run (when tracing is on): the offer's ids, no payload.
        tracing.annotate(id=context.get("offer_id"), stage=self.stage, attempt=context["attempt"])
        # Counted before the task runs, so a run that kills its worker counts too.
        delivery = None if self.request.called_directly else deliveries.start(rt, self.request)
        poisoned = delivery is not None and delivery.poisoned(rt.settings.poison_deliveries)
        try:
            if delivery is not None and poisoned:
                self.dead_letter_or_retry(deliveries.PoisonMessage(delivery), kwargs, {})
                return None
            failpoints.crash_if_armed(rt.settings, deadletter.offer_id_of(kwargs))
            failpoints.arm_partners(rt)
            result = self.run(*args, **kwargs)
            self.send_all(result)
            return None if isinstance(result, list) else result
        except Retry:
            raise
        except Exception as exc:
            fields = self.partner_failure(exc)
            failure = decisions.on_failure(
                exc,
                stage=self.stage,
                retries_done=self.request.retries,
                store_errors=OUTAGE_ERRORS,
                # A run that overstayed its soft time limit met a slow partner or lock; every stage is safe to rerun.
                also_retryable=(SoftTimeLimitExceeded,),
            )
            if isinstance(failure, decisions.RetryLater):
                self.retry_later(exc, failure.policy, fields)
            self.dead_letter_or_retry(exc, kwargs, fields)
        finally:
            # A poison message keeps its count: a retry or a stray redelivery is dead-lettered at once.
            if delivery is not None and not poisoned:
                deliveries.finish(rt, delivery)
            logs.task_context.reset(token)
        return None

    @staticmethod
    def partner_failure(exc: BaseException) -> dict[str, Any]:
        """Log fields of a partner failure (stripe_error, sift_error, plaid_error…), counted for /metrics."""
        if not isinstance(exc, PartnerError):
            return {}
        rt = get_runtime()
        counters.count_partner_error(
            rt.redis, rt.settings.redis_key_prefix, exc.partner, exc.code or type(exc).__name__, exc.sns_topic
        )
        return exc.log_fields()

    def retry_later(
        self, exc: BaseException, policy: RetryPolicy, fields: dict[str, Any], *, limit: bool = True
    ) -> None:
        countdown = policy.countdown(self.request.retries) * get_runtime().settings.retry_delay_scale
        log.warning(
            "transient failure; retrying", extra={**fields, "error": str(exc)[:300], "countdown_s": round(countdown, 2)}
        )
        tracing.annotate(outcome="retry", reason=getattr(exc, "code", None) or type(exc).__name__)
        if not isinstance(exc, OUTAGE_ERRORS):
            self.note_retry_due(countdown)
        raise self.retry(exc=exc, countdown=countdown, max_retries=policy.max_retries if limit else None)

    def note_retry_due(self, countdown: float) -> None:
        """Tell the recovery sweep a retry is pending, so it does not start a second chain."""
        offer_id = self.request.kwargs.get("offer_id") if self.request.kwargs else None
        if self.from_state is None or not isinstance(offer_id, str):
            return
        try:
            with get_runtime().db.transaction() as conn:
                offers.note_retry_due(conn, offer_id, countdown)
        except STORE_ERRORS:
            # Only a hint: the retry is sent anyway, and at worst the sweep re-sends the stage too.
            log.warning("could not note the pending retry", exc_info=True)

    def dead_letter_or_retry(self, exc: BaseException, kwargs: dict[str, Any], fields: dict[str, Any]) -> None:
        try:
            self.dead_letter(exc, kwargs, fields)
        except STORE_ERRORS as store_exc:
            # The DLQ is in Postgres: while it cannot be written the message stays with the broker.
            self.retry_later(store_exc, STORE_OUTAGE, fields, limit=False)

    def send_all(self, result: Any) -> None:
        if isinstance(result, list):
            for dispatch in result:
                if isinstance(dispatch, Dispatch):
                    self.app.send_dispatch(dispatch)

    def dead_letter(self, exc: BaseException, kwargs: dict[str, Any], fields: dict[str, Any]) -> None:
        if isinstance(exc, deliveries.PoisonMessage):
            # Its workers died before anything could be caught: the deliveries tell what happened.
            details, attempts = exc.delivery.history(), exc.delivery.died
        else:
            details, attempts = "".join(traceback.format_exception(exc))[-8000:], self.request.retries + 1
        entry_id = deadletter.record(
            get_runtime(),
            stage=self.stage,
            task_name=self.name,
            kwargs=kwargs,
            error=exc,
            traceback_text=details,
            attempts=attempts,
            from_state=self.from_state,
        )
        tracing.annotate(outcome="dead_lettered", reason=type(exc).__name__)
        log.error(
            "stage failed; dead-lettered",
            extra={**fields, "error_type": type(exc).__name__, "error": str(exc)[:500], "dead_letter_id": entry_id},
        )


def stage_task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """Register the task ``name`` as declared (``offers_workers.domain.stage_tasks``): its stage and the
    state it starts from come from its row, its queue from the routes; ``options`` are Celery's."""
    declared = stage_tasks.BY_NAME[name]
    # The app is built from the settings when a task module loads, not when the base task's tests import this.
    from tasks.app import app

    return app.task(
        name=name, base=OffersTask, bind=True, stage=declared.stage, from_state=declared.from_state, **options
    )
