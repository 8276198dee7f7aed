"""What a task's events and worker inspection show of it: the offer or event id, never the payload.

Celery copies a repr of every task's arguments into the message headers at send time (``argsrepr``,
``kwargsrepr``), and from there into the ``task-sent`` and ``task-received`` events and the
workers' answers to ``inspect active/reserved/scheduled``; ``task-succeeded`` carries a repr of the
result. Flower shows all of them. A submit's arguments are the whole offer, the buyer's email and IP
included, so the fleet replaces those reprs: on its own sends (``OffersCelery.send_task``) and on
every message a worker receives, an upstream's included (``RedactedRequest``). Flower also shows
each worker's configuration (``inspect conf``), here with no URL's password in it.
"""

from __future__ import annotations

from typing import Any

from celery import Task
from celery.utils.serialization import jsonify, strtobool
from celery.worker.control import inspect_command
from celery.worker.request import Request
from kombu.utils.encoding import safe_repr
from kombu.utils.url import maybe_sanitize_url

from offers_workers.domain.payload import OFFER_ID

#: Arguments shown as they are, when they look like an id: they name an offer or an event, no buyer.
SHOWN = ("offer_id", "event_id")
#: Arguments that carry a whole offer, shown by the offer id inside.
PAYLOADS = ("offer", "draft")
#: What a task-succeeded event says of a result other than None.
WITHHELD = "<withheld>"


def shown_kwargs(kwargs: object) -> dict[str, str]:
    """The ids among a task's keyword arguments; everything else is left out."""
    if not isinstance(kwargs, dict):
        return {}
    candidates = [(key, kwargs.get(key)) for key in SHOWN]
    candidates += [("offer_id", p.get("offer_id")) for p in (kwargs.get(k) for k in PAYLOADS) if isinstance(p, dict)]
    shown: dict[str, str] = {}
    for key, value in candidates:
        # An "id" an upstream filled with an email is not an id: it is left out too.
        if isinstance(value, str) and OFFER_ID.fullmatch(value):
            shown.setdefault(key, value)
    return shown


def event_reprs(args: object, kwargs: object) -> tuple[str, str]:
    """``argsrepr`` and ``kwargsrepr`` for a task's headers and events: ids only."""
    count = len(args) if isinstance(args, (list, tuple)) else 0
    # The contract sends keyword arguments only; positional ones are counted, never shown.
    argsrepr = f"(<{count} withheld>)" if count else "()"
    return argsrepr, repr(shown_kwargs(kwargs))


class RedactedRequest(Request):
    """A worker's request whose events and inspection answers show the ids only."""

    # Celery's private request attributes, read and written, and its info and send_event: fenced by
    # tests/unit/test_celery_fences.py (test_the_request_attributes_redaction_writes_are_the_ones_celery_reads,
    # test_the_request_methods_redaction_overrides_keep_their_signatures).
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # An upstream client's headers carry the full repr; Celery's failure log lines read them too.
        self._argsrepr, self._kwargsrepr = event_reprs(self._args, self._kwargs)
        self._request_dict["argsrepr"], self._request_dict["kwargsrepr"] = self._argsrepr, self._kwargsrepr

    def info(self, safe: bool = False) -> dict[str, Any]:
        # Flower asks for active, reserved and scheduled tasks without safe=True: the arguments themselves.
        return super().info(safe=True)

    def send_event(self, type: str, **fields: Any) -> None:
        if type == "task-succeeded" and fields.get("result") != "None":
            # validate_draft's answer can quote what the caller sent (a malformed IP, say).
            fields["result"] = WITHHELD
        super().send_event(type, **fields)


class RedactedTask(Task):
    """The base of every task of the app (``OffersCelery.task_cls``): its requests are redacted."""

    Request = RedactedRequest


def _redacted(value: Any) -> Any:
    """A setting with no password in it: each URL of a ``;`` list (Sentinel, failover) sanitised,
    and every option named like a password (RedBeat's and the sentinels' options) masked."""
    if isinstance(value, str) and "://" in value:
        return ";".join(maybe_sanitize_url(part) for part in value.split(";"))
    if isinstance(value, dict):
        return {k: "**" if isinstance(k, str) and "password" in k.lower() else _redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(v) for v in value]
    return value


# Takes the place of Celery's own command of that name: fenced by
# tests/unit/test_celery_fences.py::test_the_conf_command_redaction_replaces_is_celerys_under_both_names.
@inspect_command(alias="dump_conf", signature="[include_defaults=False]", args=[("with_defaults", strtobool)])
def conf(state: Any, with_defaults: bool = False, **kwargs: Any) -> Any:
    """List configuration."""
    # Replaces Celery's own, which masks the password of broker_url and *backend* settings only:
    # redbeat_redis_url showed the Redis password on Flower's worker page.
    table = state.app.conf.table(with_defaults=with_defaults)
    table = {key: _redacted(v) for key, v in table.items()}
    return jsonify(
        table, keyfilter=lambda key: isinstance(key, str) and not key.startswith("__"), unknown_type_filter=safe_repr
    )
