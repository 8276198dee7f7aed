"""JSON logs: one object a line, carrying the offer, stage, task and attempt where known."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from offers_workers import tracing

#: Fields the task glue binds for the duration of one task run.
task_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "task_context",
    default={},  # noqa: B039 - never mutated: the task glue sets a new dict per run
)

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(task_context.get())
        # Links the line to its span: the trace of the offer being worked on (when tracing is on).
        entry.update(tracing.log_fields())
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None})
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Request-by-request chatter of HTTP clients and the AWS sandbox is noise at INFO.
    # celery.app.trace logs every task's kwargs (buyer emails, IPs): our own lines carry the ids instead.
    # celery.worker.strategy logs every received task with its kwargs: a submit's buyer email and IP.
    for noisy in (
        "urllib3",
        "botocore",
        "boto3",
        "werkzeug",
        "stripe",
        "kombu",
        "amqp",
        "celery.app.trace",
        "celery.worker.strategy",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Python warnings (Celery's running-as-root one, deprecations) become JSON lines too.
    logging.captureWarnings(True)


def masked_url(url: str | None) -> str:
    """A store's URL as it may be shown: its password replaced by ``***`` (a URL's ``user:pass@``,
    or a libpq ``password=`` key)."""
    if not url:
        return ""
    if ";" in url and "://" in url.split(";", 1)[1]:
        # A failover list (amqp://a;amqp://b): urlsplit reads the first URL only.
        return ";".join(masked_url(part) for part in url.split(";"))
    parts = urlsplit(url)
    if parts.scheme and "@" in parts.netloc:
        credentials, _, host = parts.netloc.rpartition("@")
        user, has_password, _ = credentials.partition(":")
        if has_password:
            url = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    # libpq takes a password as a key too, in a conninfo string or a URL's query.
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", r"\1***", url)
