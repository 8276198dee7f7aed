"""The Celery app. Workers run ``celery -A tasks.app worker …`` (see Procfile)."""

from __future__ import annotations

import functools
import logging
import sys
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

from celery import Celery, signals

from config.celery import celery_config
from config.settings import AMQP_SCHEMES, ConfigError, get_settings
from offers_workers import logs, tracing
from offers_workers.domain.authority import HEADER
from offers_workers.saga.decisions import Dispatch
from tasks import authority, task_events
from tasks.redaction import event_reprs

TASK_MODULES = [
    "tasks.intake",
    "tasks.cancellation",
    "tasks.realtime",
    "tasks.validation",
    "tasks.payment",
    "tasks.risk",
    "tasks.auction",
    "tasks.audit",
    "tasks.events",
    "tasks.maintenance",
]
# tasks.bench (the bench's no-op chain) is not here: only the fleets `offers-workers bench` starts
# load it, with `--include tasks.bench`, so a production worker registers no bench task.


#: Tasks whose callers wait for an answer through the result backend.
ANSWERED_TASKS = frozenset({"offers.validate_draft"})


class OffersCelery(Celery):
    #: Every message is checked before its task runs (tasks/authority.py); every task's events and
    #: inspection answers show its ids, never the offer (tasks/redaction.py).
    task_cls = "tasks.authority:AuthenticatedTask"

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any):
        # What task-sent events and the message headers carry: ids only, whoever reads them.
        options["argsrepr"], options["kwargsrepr"] = event_reprs(args, kwargs)
        # Signed with this process's key (tasks/authority.py): the task id is chosen here to be covered.
        task_id = options["task_id"] = options.get("task_id") or str(uuid.uuid4())
        signature = authority.sign(name, task_id, args, kwargs)
        if signature is not None:
            options["headers"] = {**(options.get("headers") or {}), HEADER: signature}
        if (user := broker_user(self.conf.broker_url)) is not None:
            # RabbitMQ refuses a user_id that is not the connection's own: the sender is on record.
            options.setdefault("user_id", user)
        # Celery subscribes the sender to a result channel for every send_task unless told the
        # result is ignored: one extra Redis round trip per message, and a channel kept in the
        # subscriber's set until a result arrives, which for these tasks is never.
        options.setdefault("ignore_result", name not in ANSWERED_TASKS)
        if (events := task_events.buffered()) is not None:
            # In a worker, the task-sent event joins the others and goes out in the next batch. An
            # undocumented option of Celery's: fenced by tests/unit/test_celery_fences.py
            # (test_send_task_hands_its_task_sent_event_to_the_dispatcher_it_is_given).
            options.setdefault("event_dispatcher", events)
        countdown = options.get("countdown")
        if self.conf.broker_url.startswith(AMQP_SCHEMES) and isinstance(countdown, (int, float)) and 0 < countdown < 1:
            # RabbitMQ's native delayed delivery counts whole seconds (kombu refuses less than one).
            options["countdown"] = 1
        return super().send_task(name, args, kwargs, **options)

    def send_dispatch(self, dispatch: Dispatch) -> None:
        """Send a saga message; one sent from outside its offer's trace (the sweep, a replay) resumes it."""
        with tracing.resumed(
            dispatch.trace_parent, f"{dispatch.resent_by} {dispatch.task}", id=dispatch.kwargs.get("offer_id")
        ):
            self.send_task(dispatch.task, kwargs=dispatch.kwargs)


@functools.cache  # read on every send: parsed once per URL
def broker_user(url: str | None) -> str | None:
    """The user a RabbitMQ URL logs in as (the first of several), or None (Redis, or no user given)."""
    if not url or not url.startswith(AMQP_SCHEMES):
        return None
    user = urlsplit(url.split(";", 1)[0].strip()).username
    return unquote(user) if user else None


def create_app() -> Celery:
    try:
        config = celery_config(get_settings(), declare=authority.declares_queues())
        tracing.check()
    except ConfigError as exc:
        # One line naming the setting, then stop: a worker must not start half-configured.
        print(f"offers-workers: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    celery = OffersCelery("offers_workers", set_as_current=True)
    celery.config_from_object(config)
    celery.conf.include = TASK_MODULES
    return celery


@signals.setup_logging.connect
def _json_logs(**_: object) -> None:
    # Connecting here stops Celery from installing its own text handlers.
    logs.setup()


@signals.beat_init.connect
@signals.worker_init.connect
def _fleet_key_or_stop(**_: object) -> None:
    # A worker or beat without the fleet's key would send hand-ons every worker refuses: stop at start-up.
    try:
        authority.worker_key_or_exit()
    except ConfigError as exc:
        print(f"offers-workers: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@signals.worker_init.connect
def _warm_up(sender: Any = None, **_: object) -> None:
    # Before the pool starts: a thread pool's first tasks would otherwise import the partner SDKs
    # concurrently (seen: _DeadlockError on urllib3.fields after a restart, and the task
    # dead-lettered). No connection is opened, so prefork children inherit nothing shared.
    from offers_workers.runtime import get_runtime, pool_kind

    rt = get_runtime()
    # The pool size follows the pool (the Procfile's types set nothing): before any connection opens.
    kind = pool_kind(sender.pool_cls)
    rt.set_kind(kind)
    rt.warm_up()
    if kind == "threads":
        # Tasks run in this process; a prefork child sets up its own (its exporter thread is its own).
        tracing.setup("threads")
        task_events.start(app)


@signals.worker_process_init.connect
def _one_task_at_a_time(**_: object) -> None:
    # A prefork child (however its pool starts it, fork or spawn) or a solo worker runs one task at a time.
    from offers_workers.runtime import get_runtime

    get_runtime().set_kind("prefork")
    tracing.setup("prefork")
    task_events.start(app)


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _send_what_is_batched(**_: object) -> None:
    # Spans and funnel events waiting for their batch would go with the process: a stopping worker
    # (a prefork child its own, a thread-pool worker in worker_shutdown) sends them, a few seconds at most.
    tracing.flush()
    task_events.flush()
    from offers_workers.runtime import get_runtime

    try:
        funnel = get_runtime().funnel
        if funnel is not None:
            funnel.flush(timeout_s=5.0)  # what is left is counted unsent
    except Exception:
        # A worker on its way out must still exit: the funnel is never worth a hang or a crash here.
        logging.getLogger("offers_workers.funnel").warning("could not flush the funnel", exc_info=True)


@signals.worker_ready.connect
def _check_upstream_reach(sender: object = None, **_: object) -> None:
    # On RabbitMQ, say at start-up what would otherwise show as an upstream's PRECONDITION_FAILED.
    if not app.conf.broker_url.startswith(AMQP_SCHEMES):
        return
    from tasks.upstream_reach import plain_clients_refused

    try:
        refused = plain_clients_refused(app)
    except Exception:
        logging.getLogger("offers_workers.wire").warning(
            "could not check the virtual host's default queue type", exc_info=True
        )
        return
    if refused:
        logging.getLogger("offers_workers.wire").warning(
            "vhost default queue type is not quorum: upstream Celery clients that do not set"
            " task_create_missing_queue_type='quorum' will be refused (PRECONDITION_FAILED);"
            " see the operations guide, 'Redis or RabbitMQ as the broker'"
        )


# A process started as `celery -A tasks.app …` logs JSON from its first line: Celery warns (running
# as root, say) before its own logging set-up, and that line must not be the one plain-text line.
if not logging.getLogger().handlers:
    logs.setup()

app = create_app()
