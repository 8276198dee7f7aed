"""``offers-workers``: the operator CLI. Exit codes: 0 ok, 1 not found / check failed, 2 usage error.

This module holds the root group, its handling of unreachable stores, and the list of command groups;
each group lives in a module of its own (``dlq.py`` for ``dlq``, ``local.py`` for sandbox/dev/demo/bench),
and what they share in ``common.py``.
"""

from __future__ import annotations

import logging
from typing import Any, cast
from urllib.parse import urlsplit

import amqp.exceptions
import click
import kombu.exceptions
import psycopg
import redis
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from config import links
from config.settings import ConfigError, get_settings
from offers_workers import tracing
from offers_workers.ops.cli import (
    audit,
    db,
    dlq,
    flags,
    holds,
    local,
    metrics,
    offers,
    policy,
    reports,
    secrets,
    synthetic,
)
from offers_workers.ops.cli.common import DB_WAIT_S, connection_lost, fail, first_line


def postgres_unreachable(exc: psycopg.Error) -> str:
    url = get_settings().database_url or ""
    try:
        info = conninfo_to_dict(url)
        where = f"{info.get('host') or 'local socket'}:{info.get('port') or 5432}"
    except psycopg.Error:
        where = "OFFERS_DATABASE_URL"
    if isinstance(exc, PoolTimeout):
        # The pool says only that it waited: one direct attempt says why.
        try:
            psycopg.connect(url, connect_timeout=DB_WAIT_S).close()
        except psycopg.Error as probe:
            exc = probe
        else:
            return f"cannot reach PostgreSQL ({where}): no connection within {DB_WAIT_S} s"
    return f"cannot reach PostgreSQL ({where}): {first_line(exc).removeprefix('connection failed: ')}"


def broker_unreachable(exc: BaseException) -> str:
    # Host and port only: the URL may carry a password. A cluster's list names every node tried.
    where = ", ".join(
        f"{parts.hostname or 'localhost'}" + (f":{parts.port}" if parts.port else "")
        for parts in map(urlsplit, links.broker_urls(get_settings().broker_url or "") or [""])
    )
    return f"cannot reach the broker ({where}): {first_line(exc)}"


# Without a handler the pool's reconnect warnings reach stderr bare, ahead of the one line below;
# a command that sets up logging (metrics serve) still gets them through the root logger.
logging.getLogger("psycopg").addHandler(logging.NullHandler())


class OperatorCLI(click.Group):
    """The root group: Postgres or the broker out of reach ends any command with one line and exit 1."""

    def command_path(self, ctx: click.Context) -> str:
        """The names of the command run (``offers-workers dlq replay``), never its arguments."""
        names, group = ["offers-workers"], cast(click.Command, self)
        for word in [*ctx._protected_args, *ctx.args]:
            command = group.commands.get(word) if isinstance(group, click.Group) else None
            if command is None:
                break
            names.append(word)
            group = command
        return " ".join(names)

    def invoke(self, ctx: click.Context) -> Any:
        path = self.command_path(ctx)
        try:
            # With an OTLP endpoint set, what the CLI sends (a replay, a submit) joins the offer's trace;
            # the fleets `dev`, `demo` and `bench` start trace themselves, one trace per offer.
            if path.split()[1:2] not in (["dev"], ["demo"], ["bench"], ["sandbox"], ["metrics"]):
                tracing.setup("cli")
        except ConfigError as exc:
            fail(str(exc), 2)
        try:
            with tracing.operation(path):
                return super().invoke(ctx)
        except psycopg.OperationalError as exc:
            if not connection_lost(exc):
                raise
            fail(postgres_unreachable(exc), 1)
        except kombu.exceptions.OperationalError as exc:
            fail(broker_unreachable(exc), 1)
        except amqp.exceptions.AMQPError as exc:
            fail(broker_refused(exc), 1)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            fail(redis_unreachable(exc), 1)


def redis_unreachable(exc: Exception) -> str:
    # Host and port only: the URL may carry a password.
    parts = urlsplit(get_settings().effective_redis_url or "")
    where = f"{parts.hostname or 'localhost'}" + (f":{parts.port}" if parts.port else "")
    return f"cannot reach Redis ({where}): {first_line(exc)}"


def broker_refused(exc: amqp.exceptions.AMQPError) -> str:
    """One line for what RabbitMQ refused a command: its own words, and what to do about the usual two."""
    said = getattr(exc, "reply_text", "") or str(exc)
    if isinstance(exc, amqp.exceptions.NotFound) and "exchange" in said:
        # The CLI declares nothing (ops' broker user may not): the workers declare on start-up.
        return f"RabbitMQ refused the send: {said}; start the workers once on this virtual host, then send again"
    if isinstance(exc, amqp.exceptions.AccessRefused):
        return f"RabbitMQ refused this broker user: {said} (operations guide, least privilege)"
    return f"RabbitMQ refused the command: {said}"


@click.group(cls=OperatorCLI, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Operate the offer-submission worker fleet."""
    from tasks import authority

    # What an operator sends (a cancel as ops, a replay) is signed with the ops key (docs/production.md, "Trust boundary").
    authority.sign_as("ops")


for _command in (
    db.db,
    policy.policy,
    offers.schema,
    offers.submit,
    offers.cancel,
    offers.offers,
    offers.intake,
    offers.cancel_requests,
    dlq.dlq,
    holds.holds,
    flags.flags,
    audit.audit,
    reports.stats,
    reports.health,
    synthetic.synthetic,
    metrics.metrics,
    secrets.secrets_group,
    local.sandbox,
    local.dev,
    local.demo,
    local.bench,
):
    main.add_command(_command)
