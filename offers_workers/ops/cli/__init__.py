"""``offers-workers``: the operator CLI. Exit codes: 0 ok, 1 not found / check failed, 2 usage error."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import click
import kombu.exceptions
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout
from rich.console import Console
from rich.table import Table

from config.settings import ConfigError, Settings, get_settings
from offers_workers import store
from offers_workers.domain import states
from offers_workers.domain.payload import json_schema
from offers_workers.ops import reports
from offers_workers.runtime import Runtime
from offers_workers.saga import deadletter
from offers_workers.store import listings

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    # One line whatever the terminal width: operators grep these, scripts parse them.
    err_console.print(f"offers-workers: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except ConfigError as exc:
        fail(str(exc), 2)


#: Seconds a command waits for a Postgres connection before saying it cannot reach it (a worker
#: waits 10 and retries; an operator is better told at once).
DB_WAIT_S = 5


def runtime_or_exit() -> Runtime:
    settings = settings_or_exit()
    if not settings.database_url:
        fail("invalid configuration: OFFERS_DATABASE_URL is required for this command", 2)
    return Runtime(settings, db_wait_s=DB_WAIT_S)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()


def connection_lost(exc: psycopg.Error) -> bool:
    """No connection to be had, or the one in use gone: not a statement's own error (whose
    OperationalError subclasses, a lock timeout say, keep their traceback)."""
    return isinstance(exc, PoolTimeout) or type(exc) is psycopg.OperationalError


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
    # Host and port only: the URL may carry a password.
    parts = urlsplit(get_settings().broker_url or "")
    where = f"{parts.hostname or 'localhost'}" + (f":{parts.port}" if parts.port else "")
    return f"cannot reach the broker ({where}): {first_line(exc)}"


# Without a handler the pool's reconnect warnings reach stderr bare, ahead of the one line below;
# a command that sets up logging (metrics serve) still gets them through the root logger.
logging.getLogger("psycopg").addHandler(logging.NullHandler())


class OperatorCLI(click.Group):
    """The root group: Postgres or the broker out of reach ends any command with one line and exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except psycopg.OperationalError as exc:
            if not connection_lost(exc):
                raise
            fail(postgres_unreachable(exc), 1)
        except kombu.exceptions.OperationalError as exc:
            fail(broker_unreachable(exc), 1)


DURATION = re.compile(r"^(\d+)([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str) -> timedelta:
    match = DURATION.match(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 30m, 1h, 7d")
    return timedelta(**{UNITS[match[2]]: int(match[1])})


def parse_since(value: str | None) -> datetime | None:
    """``--since`` takes an ISO timestamp or a duration back from now (``1h``)."""
    if value is None:
        return None
    if DURATION.match(value.strip()):
        return datetime.now(UTC) - parse_duration(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither an ISO timestamp nor a duration like 1h") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


# --- listings: every row, or a page that says where it stopped -----------------------------------

#: Rows a table shows unless --limit says otherwise: it is read by a person; a script takes --json.
TABLE_ROWS = 100

LISTING_HELP = (
    "--json prints every matching row as one JSON array, streamed. --limit or --after asks for one page"
    ' instead: JSON {"items": [...], "truncated": true|false, "next_cursor": "..."|null}; give'
    " next_cursor to --after for the next page (--after alone: a page of 100 rows). A table shows 100 rows"
    " unless --limit says otherwise; when more match, its last line says how many and the cursor to"
    " continue from."
)


def listing_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--limit, --after and --json, the same for every listing."""
    command = click.option(
        "--json",
        "as_json",
        is_flag=True,
        help="Print JSON: an array of every matching row; with --limit or --after, one page object.",
    )(command)
    command = click.option(
        "--after",
        metavar="CURSOR",
        help="Continue after this cursor (next_cursor of the previous page); without --limit, 100 rows.",
    )(command)
    return click.option(
        "--limit",
        type=click.IntRange(1, 100_000),
        help="At most N rows; JSON then carries truncated and next_cursor.  [default: 100 in a table; every row with --json]",
    )(command)


def show_listing(
    rt: Runtime,
    source: listings.Listing,
    params: dict[str, Any],
    *,
    limit: int | None,
    after: str | None,
    as_json: bool,
    shape: Callable[[dict[str, Any]], dict[str, Any]],
    table: Callable[[list[dict[str, Any]]], Table],
) -> None:
    """Print a listing: every row as a streamed JSON array, or one page (JSON object or table)."""
    try:
        start = listings.decode_cursor(source, after) if after is not None else None
    except listings.BadCursor as exc:
        raise click.BadParameter(str(exc), param_hint="'--after'") from None
    if as_json and limit is None and start is None:
        write_json_array(map(shape, listings.stream(rt.db, source, params)))
        return
    with rt.db.transaction() as conn:
        page = listings.read_page(conn, source, params, limit=limit or TABLE_ROWS, after=start, count_more=not as_json)
    items = [shape(r) for r in page.rows]
    if as_json:
        print_json({"items": items, "truncated": page.next_cursor is not None, "next_cursor": page.next_cursor})
        return
    console.print(table(items))
    if page.next_cursor is not None:
        console.print(
            f"… {page.more:,} more; use --limit/--after {page.next_cursor}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def write_json_array(items: Iterable[Any]) -> None:
    """A JSON array written as the rows arrive, one item a line: memory stays flat however many."""
    written = 0
    try:
        for item in items:
            sys.stdout.write(("[\n" if written == 0 else ",\n") + json.dumps(item, default=str))
            written += 1
        sys.stdout.write("\n]\n" if written else "[]\n")
    except BrokenPipeError:
        # The reader stopped early (`| head`): end quietly, as other Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except psycopg.Error as exc:
        if written == 0 and connection_lost(exc):
            raise  # nothing printed yet: the one line for an unreachable Postgres says it
        # The array stays unclosed on purpose: a parser fails rather than take these rows for all of them.
        fail(f"listing stopped after {written:,} rows: {(str(exc).splitlines() or [type(exc).__name__])[0]}", 1)


@click.group(cls=OperatorCLI, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Operate the offer-submission worker fleet."""


# --- db, policy, schema ------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations (safe to run twice, and from two processes at once)."""
    from offers_workers.store.db import migrate

    settings = settings_or_exit()
    if not settings.database_url:
        fail("invalid configuration: OFFERS_DATABASE_URL is required", 2)
    applied = migrate(settings.database_url)
    if settings.db_app_role:
        from offers_workers.store.db import restrict_audit_trail

        restrict_audit_trail(settings.database_url, settings.db_app_role)
        click.echo(f"audit trail: {settings.db_app_role} may insert and read, never update, delete or truncate")
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("database is up to date")


@main.group()
def policy() -> None:
    """Maker policies and listings."""


@policy.command("load")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def policy_load(file: Path) -> None:
    """Load makers and listings from a YAML or JSON FILE; caches are invalidated at once."""
    from offers_workers.store.policy import PolicyFileError, read_policy_file

    try:
        policy_file = read_policy_file(file)
    except PolicyFileError as exc:
        fail(str(exc), 2)
    rt = runtime_or_exit()
    with rt.db.transaction() as conn:
        makers, listings = rt.policies.load(conn, policy_file)
        store.record_audit(
            conn, None, "policy_loaded", actor="cli", data={"file": file.name, "makers": makers, "listings": listings}
        )
    rt.policies.invalidate()
    click.echo(f"loaded {makers} makers and {listings} listings from {file.name}")


@main.command()
def schema() -> None:
    """Print the offer payload's JSON Schema (for upstream services in any language)."""
    print_json(json_schema())


# --- submit ------------------------------------------------------------------------------------


def read_messages(source: str) -> list[Any]:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    stripped = text.strip()
    if not stripped:
        raise click.UsageError(f"{source}: no offers in it")
    try:
        value = json.loads(stripped)
        return value if isinstance(value, list) else [value]
    except json.JSONDecodeError:
        pass
    messages = []
    for n, line in enumerate(stripped.splitlines(), 1):
        if line.strip():
            try:
                messages.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise click.UsageError(f"{source}: line {n} is not JSON ({exc.msg})") from None
    return messages


@main.command()
@click.argument("source", metavar="FILE|-")
def submit(source: str) -> None:
    """Send offers.submit for each offer in FILE (a JSON object, an array, or JSON lines)."""
    if source != "-" and not Path(source).is_file():
        fail(f"{source}: no such file", 2)
    messages = read_messages(source)
    settings_or_exit()
    from tasks.app import app

    for message in messages:
        app.send_task("offers.submit", kwargs={"offer": message})
    click.echo(f"sent {len(messages)} offer(s) to offers.intake")


@main.command()
@click.argument("offer_id")
@click.option("--reason", required=True, type=click.Choice(["buyer_withdrew", "maker_rejected", "ops"]), help="Why.")
@click.option(
    "--actor", default="ops", show_default=True, type=click.Choice(["buyer", "maker", "ops"]), help="Who asks."
)
def cancel(offer_id: str, reason: str, actor: str) -> None:
    """Send offers.cancel for OFFER_ID, as an upstream service would."""
    from offers_workers.saga.intake import OFFER_ID

    if not OFFER_ID.fullmatch(offer_id):
        fail(f"{offer_id!r} is not an offer id (1-64 letters, digits, '_' or '-')", 2)
    settings_or_exit()
    from tasks.app import app

    app.send_task("offers.cancel", kwargs={"offer_id": offer_id, "reason": reason, "actor": actor})
    click.echo(f"sent offers.cancel for {offer_id} ({reason}, by {actor}) to offers.intake")


# --- offers, intake ----------------------------------------------------------------------------


@main.group()
def offers() -> None:
    """Look at offers."""


@offers.command("show")
@click.argument("offer_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def offers_show(offer_id: str, as_json: bool) -> None:
    """One offer with its state history."""
    rt = runtime_or_exit()
    with rt.db.transaction() as conn:
        row = conn.execute("SELECT * FROM offers WHERE offer_id = %s", (offer_id,)).fetchone()
        if row is None:
            fail(f"no offer {offer_id!r}", 1)
        summary = store.offer_summary(row) | {"history": store.offer_history(conn, offer_id)}
    if as_json:
        print_json(summary)
        return
    table = Table(title=f"offer {offer_id}", show_header=False)
    for key, value in summary.items():
        if key != "history" and value is not None:
            table.add_row(key, str(value))
    console.print(table)
    history = Table(title="history")
    for col in ("state", "at", "reason", "by"):
        history.add_column(col)
    for step in summary["history"]:
        history.add_row(step["state"], step["at"], step["reason"] or "", step["by"])
    console.print(history)


OFFERS = listings.Listing(
    "offers",
    sql.SQL(
        "SELECT * FROM offers WHERE (%(state)s::text IS NULL OR state = %(state)s)"
        " AND (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)"
    ),
    key=(listings.Key("received_at", datetime), listings.Key("offer_id", str)),
    descending=True,
)


@offers.command("list", epilog=LISTING_HELP)
@click.option("--state", type=click.Choice(sorted(states.ALL_STATES)))
@click.option("--since", help="ISO time or a duration back from now (1h, 7d).")
@listing_options
def offers_list(state: str | None, since: str | None, limit: int | None, after: str | None, as_json: bool) -> None:
    """Offers, newest first (the objects of `offers show --json`, without history)."""
    moment = parse_since(since)
    rt = runtime_or_exit()
    show_listing(
        rt,
        OFFERS,
        {"state": state, "since": moment},
        limit=limit,
        after=after,
        as_json=as_json,
        shape=store.offer_summary,
        table=offers_table,
    )


def offers_table(summaries: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(summaries)} offer(s)")
    for col in ("offer_id", "state", "reason", "amount", "payment", "received"):
        table.add_column(col)
    for s in summaries:
        table.add_row(
            s["offer_id"],
            s["state"],
            s["reason"] or "",
            f"{s['amount_cents'] / 100:,.2f} {s['currency']}",
            s["payment_method"],
            s["received_at"][:19],
        )
    return table


@main.group()
def intake() -> None:
    """Messages that did not yield a usable offer."""


INTAKE_REJECTIONS = listings.Listing(
    "intake_rejections",
    sql.SQL(
        "SELECT id, received_at, task_id, offer_id, reason, errors, raw_size, raw_body FROM intake_rejections"
        " WHERE (%(since)s::timestamptz IS NULL OR received_at >= %(since)s)"
    ),
    key=(listings.Key("id", int),),
    descending=True,
)


@intake.command("rejections", epilog=LISTING_HELP)
@click.option("--since", help="ISO time or a duration back from now (1h, 7d).")
@listing_options
def intake_rejections(since: str | None, limit: int | None, after: str | None, as_json: bool) -> None:
    """Intake rejections, newest first, with their field-level errors."""
    moment = parse_since(since)
    rt = runtime_or_exit()
    show_listing(
        rt,
        INTAKE_REJECTIONS,
        {"since": moment},
        limit=limit,
        after=after,
        as_json=as_json,
        shape=lambda r: {**r, "received_at": r["received_at"].isoformat()},
        table=rejections_table,
    )


def rejections_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} intake rejection(s)")
    for col in ("id", "received", "offer_id", "reason", "errors", "bytes"):
        table.add_column(col)
    for r in rows:
        errors = "; ".join(f"{e['field'] or '(message)'}: {e['code']}" for e in r["errors"][:4])
        table.add_row(str(r["id"]), r["received_at"][:19], r["offer_id"] or "", r["reason"], errors, str(r["raw_size"]))
    return table


# --- dead letters, holds -----------------------------------------------------------------------

STAGE_NAMES = sorted(deadletter.STAGES)


@main.group()
def dlq() -> None:
    """Dead-letter queues, one per stage (the runbook's requeue_events)."""


@dlq.command("list", epilog=LISTING_HELP)
@click.option("--stage", type=click.Choice(STAGE_NAMES))
@click.option("--all", "include_resolved", is_flag=True, help="Include replayed and discarded entries.")
@listing_options
def dlq_list(stage: str | None, include_resolved: bool, limit: int | None, after: str | None, as_json: bool) -> None:
    """Dead-lettered stage runs, oldest first."""
    rt = runtime_or_exit()
    dead_letters = listings.Listing("dead_letters", deadletter.ENTRIES, key=(listings.Key("id", int),))
    show_listing(
        rt,
        dead_letters,
        {"stage": stage, "status": None if include_resolved else "pending"},
        limit=limit,
        after=after,
        as_json=as_json,
        shape=dict,
        table=dead_letters_table,
    )


def dead_letters_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} dead letter(s)")
    for col in ("id", "stage", "offer_id", "error", "attempts", "replays", "last failed", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["stage"],
            r["offer_id"] or "",
            f"{r['error_type']}: {r['error_message'][:60]}",
            str(r["attempts"]),
            str(r["replay_count"]),
            r["last_failed_at"].isoformat()[:19],
            r["status"],
        )
    return table


@dlq.command("show")
@click.argument("entry_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_show(entry_id: int, as_json: bool) -> None:
    """One entry with its kwargs and traceback."""
    rt = runtime_or_exit()
    with rt.db.transaction() as conn:
        row = deadletter.entry(conn, entry_id)
    if row is None:
        fail(f"no dead letter {entry_id}", 1)
    if as_json:
        print_json(row)
        return
    table = Table(title=f"dead letter {entry_id}", show_header=False)
    for key, value in row.items():
        if key != "traceback" and value is not None:
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    console.print(table)
    if row["traceback"]:
        console.print(row["traceback"], markup=False, highlight=False)


@dlq.command("replay")
@click.argument("entry_id", type=int, required=False)
@click.option("--all", "replay_all", is_flag=True, help="Every pending entry (of --stage).")
@click.option("--stage", type=click.Choice(STAGE_NAMES))
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
def dlq_replay(entry_id: int | None, replay_all: bool, stage: str | None, dry_run: bool) -> None:
    """Re-send dead-lettered stages with their original kwargs (same idempotency keys)."""
    from rich.progress import track

    if (entry_id is None) == (not replay_all):
        raise click.UsageError("give either an entry ID or --all")
    rt = runtime_or_exit()
    with rt.db.transaction() as conn:
        if replay_all:
            ids = [r["id"] for r in deadletter.entries(conn, stage=stage)]
        else:
            row = deadletter.entry(conn, entry_id)
            if row is None:
                fail(f"no dead letter {entry_id}", 1)
            ids = [entry_id] if row["status"] == "pending" else []
            if not ids:
                click.echo(f"dead letter {entry_id} is {row['status']}; nothing to replay")
                return
    if dry_run:
        click.echo(f"would replay {len(ids)} dead letter(s): {', '.join(map(str, ids[:50]))}")
        return
    from tasks.app import app

    # A broker that is down is found before any entry is claimed, not after the first claim.
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)

    replayed = 0
    for one in track(ids, description="replaying", console=err_console, disable=len(ids) < 2):
        dispatch = deadletter.claim_for_replay(rt, one)
        if dispatch is not None:
            app.send_task(dispatch.task, kwargs=dispatch.kwargs)
            replayed += 1
    click.echo(
        f"replayed {replayed} of {len(ids)} dead letter(s)"
        + ("" if replayed == len(ids) else "; the rest were replayed by someone else")
    )


@dlq.command("discard")
@click.argument("entry_id", type=int)
@click.option("--reason", required=True, help="Why it is not replayed (kept in the audit trail).")
def dlq_discard(entry_id: int, reason: str) -> None:
    """Close an entry without replaying it."""
    rt = runtime_or_exit()
    if not deadletter.discard(rt, entry_id, reason=reason):
        fail(f"no pending dead letter {entry_id}", 1)
    click.echo(f"discarded dead letter {entry_id}")


@main.group()
def holds() -> None:
    """Payment holds (the runbook's release_holds)."""


HOLDS = listings.Listing(
    "holds",
    sql.SQL(
        "SELECT offer_id, state, reason, payment_intent_id, amount_cents, currency, payment_held_at, updated_at"
        " FROM offers WHERE hold_status = 'held'"
        " AND (%(offer_id)s::text IS NULL OR offer_id = %(offer_id)s)"
        " AND (NOT %(dead_lettered)s OR state = 'dead_lettered')"
        " AND (%(older_than)s::timestamptz IS NULL OR payment_held_at < %(older_than)s)"
    ),
    # A hold placed while its offer was cancelled has no payment_held_at (its transition lost): it sorts last.
    key=(
        listings.Key("payment_held_at", datetime, null_as=sql.SQL("'infinity'::timestamptz")),
        listings.Key("offer_id", str),
    ),
)


def _hold_filters(
    offer_id: str | None = None, dead_lettered: bool = False, older_than: timedelta | None = None
) -> dict[str, Any]:
    cutoff = datetime.now(UTC) - older_than if older_than else None
    return {"offer_id": offer_id, "dead_lettered": dead_lettered, "older_than": cutoff}


def _holds(
    rt: Runtime, offer_id: str | None = None, dead_lettered: bool = False, older_than: timedelta | None = None
) -> list[dict[str, Any]]:
    return list(listings.stream(rt.db, HOLDS, _hold_filters(offer_id, dead_lettered, older_than)))


@holds.command("list", epilog=LISTING_HELP)
@listing_options
def holds_list(limit: int | None, after: str | None, as_json: bool) -> None:
    """Offers holding a card authorization, oldest first."""
    rt = runtime_or_exit()

    def with_release_due(r: dict[str, Any]) -> dict[str, Any]:
        # When the beat releases it at the latest (OFFERS_HOLD_RELEASE_AFTER), before Stripe lets it lapse.
        return r | {
            "release_due_at": r["payment_held_at"] + rt.settings.hold_release_after if r["payment_held_at"] else None
        }

    show_listing(
        rt, HOLDS, _hold_filters(), limit=limit, after=after, as_json=as_json, shape=with_release_due, table=holds_table
    )


def holds_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} active hold(s)")
    for col in ("offer_id", "state", "payment_intent_id", "amount", "held since", "released by"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["offer_id"],
            r["state"],
            r["payment_intent_id"],
            f"{r['amount_cents'] / 100:,.2f} {r['currency']}",
            r["payment_held_at"].isoformat()[:19] if r["payment_held_at"] else "",
            r["release_due_at"].isoformat()[:19] if r["release_due_at"] else "",
        )
    return table


@holds.command("release")
@click.option("--offer", "offer_id", help="Only this offer.")
@click.option("--dead-lettered", is_flag=True, help="Only offers waiting in a dead-letter queue.")
@click.option("--older-than", "older_than", help="Only holds older than this (24h, 6d).")
@click.option("--dry-run", is_flag=True, help="Say what would be released; change nothing.")
def holds_release(offer_id: str | None, dead_lettered: bool, older_than: str | None, dry_run: bool) -> None:
    """Cancel the PaymentIntents of the chosen holds, record why, and print what was done."""
    from rich.progress import track

    from offers_workers.saga import stages

    age = parse_duration(older_than) if older_than else None
    if not (offer_id or dead_lettered or age):
        raise click.UsageError("choose holds with --offer, --dead-lettered or --older-than")
    rt = runtime_or_exit()
    rows = _holds(rt, offer_id, dead_lettered, age)
    if offer_id and not rows:
        fail(f"offer {offer_id!r} has no active hold", 1)
    if dry_run:
        for r in rows:
            click.echo(f"would release {r['payment_intent_id']} of {r['offer_id']} ({r['state']})")
        click.echo(f"{len(rows)} hold(s) would be released")
        return
    released = 0
    for r in track(rows, description="releasing", console=err_console, disable=len(rows) < 2):
        status = stages.release_hold(rt, r["offer_id"], why="released by an operator", actor="cli")
        if status is not None:
            released += 1
            click.echo(f"released {r['payment_intent_id']} of {r['offer_id']} ({r['state']}): {status}")
    click.echo(f"{released} hold(s) released")


# --- flags -----------------------------------------------------------------------------------------


@main.group()
def flags() -> None:
    """The runbook's feature flags (seen by every worker within seconds)."""


@flags.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def flags_list(as_json: bool) -> None:
    """Every flag, its value and its last change."""
    from offers_workers.store.flags import FLAGS

    rt = runtime_or_exit()
    found = rt.flags.all()
    if as_json:
        print_json(
            [
                {"name": f.name, "enabled": f.enabled, "updated_at": f.updated_at, "updated_by": f.updated_by}
                for f in found
            ]
        )
        return
    table = Table(title="Feature flags")
    for col in ("flag", "value", "changed", "by", "effect"):
        table.add_column(col)
    for f in found:
        table.add_row(
            f.name,
            "[green]on[/green]" if f.enabled else "[red]off[/red]",
            f.updated_at.isoformat()[:19] if f.updated_at else "",
            f.updated_by,
            FLAGS[f.name],
        )
    console.print(table)


@flags.command("set")
@click.argument("name")
@click.argument("value", type=click.Choice(["on", "off"]))
def flags_set(name: str, value: str) -> None:
    """Turn NAME on or off; recorded in the audit trail."""
    from offers_workers.store.flags import FLAGS, set_flag

    if name not in FLAGS:
        fail(f"unknown flag {name!r}; flags are {', '.join(FLAGS)}", 2)
    rt = runtime_or_exit()
    actor = f"cli:{os.environ.get('USER') or 'operator'}"
    with rt.db.transaction() as conn:
        changed = set_flag(conn, name, value == "on", actor=actor)
    click.echo(
        f"{name} is {value}"
        + ("" if changed else " (unchanged)")
        + f"; every worker sees it within {rt.settings.flag_cache_seconds:g} s"
    )


# --- audit trail -----------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """The tamper-evident audit trail and its Glacier archive."""


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time (2026-11-28 or 2026-11-28T02:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@audit.command("verify-chain")
@click.option(
    "--since",
    help="Start at the first row at or after this time: ISO time or a duration back from now (1h, 7d); default: the whole trail.",
)
def audit_verify_chain(since: str | None) -> None:
    """Walk the hash chain; name the first broken link (exit 1)."""
    from offers_workers.saga import audit as audit_trail

    start = parse_since(since)
    rt = runtime_or_exit()
    with console.status("walking the audit chain"):
        check = audit_trail.verify_chain(rt, start)
    if not check.ok:
        fail(f"audit chain broken after {check.rows - 1:,} good rows: {check.first_break}", 1)
    click.echo(f"audit chain intact: {check.rows:,} rows" + (f" since {start.isoformat()}" if start else ""))


@audit.command("export")
@click.option("--until", help="Export rows before this time (ISO 8601); default: the start of today, UTC.")
def audit_export(until: str | None) -> None:
    """Export the rows not yet archived to S3 (the runbook's run_glacier_export)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from offers_workers.saga import audit as audit_trail

    cutoff = _parse_time(until) if until else None
    rt = runtime_or_exit()
    with Progress(TextColumn("[bold]exporting"), BarColumn(), MofNCompleteColumn(), console=err_console) as bar:
        task = bar.add_task("rows", total=None)
        try:
            job = audit_trail.run_export(
                rt, cutoff, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
        except audit_trail.ExportBusy as exc:
            fail(str(exc), 1)
        except audit_trail.ExportFailed as exc:
            fail(f"audit export {exc.job['id']} failed: {exc.job['error']}; the next run retries this window", 1)
    if job is None:
        click.echo("nothing to export: every row before the cut-off is archived")
        return
    click.echo(
        f"export {job['id']} {job['status']}: {job['row_count']:,} rows (ids {job['first_row_id']}–{job['last_row_id']})"
        f" to s3://{rt.settings.audit_bucket}/{job['object_key']} [{job['storage_class']}] sha256 {job['sha256']}"
    )


AUDIT_EXPORTS = listings.Listing(
    "audit_exports", sql.SQL("SELECT * FROM audit_exports"), key=(listings.Key("id", int),), descending=True
)


@audit.command("exports", epilog=LISTING_HELP)
@listing_options
def audit_exports(limit: int | None, after: str | None, as_json: bool) -> None:
    """Export jobs, newest first."""
    rt = runtime_or_exit()
    show_listing(
        rt, AUDIT_EXPORTS, {}, limit=limit, after=after, as_json=as_json, shape=dict, table=audit_exports_table
    )


def audit_exports_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(rows)} audit export(s)")
    for col in ("id", "status", "until", "rows", "ids", "attempts", "finished", "object / error"):
        table.add_column(col, justify="right" if col in ("id", "rows", "attempts") else "left")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["status"],
            r["until"].isoformat()[:19],
            f"{r['row_count'] or 0:,}",
            f"{r['first_row_id']}–{r['last_row_id']}",
            str(r["attempts"]),
            r["finished_at"].isoformat()[:19] if r["finished_at"] else "",
            r["error"] or r["object_key"],
        )
    return table


@audit.command("verify")
@click.argument("export_id", type=int)
def audit_verify(export_id: int) -> None:
    """Restore an export from Glacier and check it against its manifest and Postgres (exit 1 on a discrepancy)."""
    from offers_workers.partners.aws_archive import RestoreInProgress
    from offers_workers.saga import audit as audit_trail

    rt = runtime_or_exit()
    with console.status(f"restoring and checking export {export_id}"):
        try:
            problems = audit_trail.verify_export(rt, export_id)
        except RestoreInProgress as exc:
            # A Glacier Standard restore takes hours; the request stands, so a later run finds it done.
            fail(
                f"export {export_id}: {exc}; run `offers-workers audit verify {export_id}` again later (Glacier takes hours)",
                1,
            )
    if problems:
        fail(
            f"export {export_id}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""), 1
        )
    click.echo(f"export {export_id} verified: checksum, chain, manifest and Postgres agree")


# --- stats, health -------------------------------------------------------------------------------


@main.command()
@click.option("--window", default="1h", show_default=True, help="How far back to look (30m, 1h, 7d).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(window: str, as_json: bool) -> None:
    """Offers by state, success rate, latencies, dead letters, holds, cancellations and queues."""
    from offers_workers.ops.health import figures

    age = parse_duration(window)
    rt = runtime_or_exit()
    found = figures(rt, age)
    if as_json:
        print_json(found)
        return
    table = Table(title=f"Offers received in the last {window} (synthetic journeys left out)")
    for col in ("state", "reason", "offers"):
        table.add_column(col, justify="right" if col == "offers" else "left")
    for row in found["offers_by_state"]:
        table.add_row(row["state"], row["reason"] or "", f"{row['offers']:,}")
    console.print(table)

    slo = Table(title="Service levels")
    for col in ("figure", "count", "p50", "p95", "p99"):
        slo.add_column(col, justify="left" if col == "figure" else "right")
    rate = found["success_rate"]
    slo.add_row("submission success rate", "", "-" if rate is None else f"{rate:.1%}", "", "")
    for label, key in (("validation (ms)", "validation_ms"), ("intake → auction (ms)", "auction_lag_ms")):
        f = found[key]
        slo.add_row(
            label, f"{f['count']:,}", reports.ms_text(f["p50"]), reports.ms_text(f["p95"]), reports.ms_text(f["p99"])
        )
    console.print(slo)

    ops = Table(title="Now")
    ops.add_column("what")
    ops.add_column("value", justify="right")
    for stage, n in found["dead_letters"].items():
        ops.add_row(f"dead letters · {stage}", f"{n:,}")
    if not found["dead_letters"]:
        ops.add_row("dead letters", "0")
    holds = found["active_holds"]
    ops.add_row("active holds", f"{holds['holds']:,} ({holds['amount_cents'] / 100:,.2f})")
    ops.add_row("stuck offers", f"{found['stuck_offers']:,}")
    for queue, n in (found["queue_depths"] or {}).items():
        ops.add_row(f"queue · {queue}", f"{n:,}")
    console.print(ops)

    reasons = Table(title=f"Cancellations in the last {window}, by reason")
    for col in ("reason", "offers", "amount"):
        reasons.add_column(col, justify="left" if col == "reason" else "right")
    for row in found["cancellations"]["by_reason"]:
        reasons.add_row(row["reason"] or "", f"{row['offers']:,}", f"{(row['amount_cents'] or 0) / 100:,.2f}")
    console.print(reasons)
    bands = Table(title="… by value band (offer amount, major units)")
    bands.add_column("band")
    bands.add_column("offers", justify="right")
    for row in found["cancellations"]["by_value_band"]:
        bands.add_row(row["band"], f"{row['offers']:,}")
    console.print(bands)
    hv = found["high_value_cancellations"]
    console.print(
        f"high-value cancellations (≥ {hv['threshold_cents'] / 100:,.0f}): {hv['recent']} in the last"
        f" {rt.settings.cancel_spike_window_seconds / 3600:g} h vs {hv['trailing_rate']:.1f} per window trailing"
        + (" — [red]spike[/red]" if hv["spike"] else "")
    )


@main.command()
@click.option("--window", default="1h", show_default=True, help="The window the rates and latencies cover.")
def health(window: str) -> None:
    """Check the runbook's thresholds; exit 1 on a breach, naming the symptom and its first checks."""
    from offers_workers.ops.health import checks, figures

    age = parse_duration(window)
    rt = runtime_or_exit()
    results = checks(rt, figures(rt, age))
    table = Table(title=f"Health (last {window})")
    for col in ("check", "value", "threshold", "status"):
        table.add_column(col)
    for c in results:
        table.add_row(c.name, c.value, c.threshold, "[green]ok[/green]" if c.ok else "[red]BREACH[/red]")
    console.print(table)
    breaches = [c for c in results if not c.ok]
    for c in breaches:
        console.print(f"[bold red]Runbook symptom: {c.symptom}[/bold red] ({c.name}: {c.value})", soft_wrap=True)
        if c.detail:
            console.print("  " + ", ".join(c.detail), soft_wrap=True)
        for n, step in enumerate(c.first_checks, 1):
            console.print(f"  {n}. {step}", soft_wrap=True, markup=False)
    if breaches:
        sys.exit(1)
    console.print("[green]all runbook thresholds met[/green]")


# --- synthetic journey -----------------------------------------------------------------------------


@main.group()
def synthetic() -> None:
    """The synthetic journey (the runbook's nightly check)."""


@synthetic.command("run")
@click.option("--timeout", "timeout_s", default=60, show_default=True, help="Seconds each step may take.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def synthetic_run(timeout_s: float, as_json: bool) -> None:
    """Submit a synthetic offer (on the journey's own maker and listing, made if missing), wait for
    submitted, cancel it, check hold and events (exit 1 on failure)."""
    from offers_workers.ops import synthetic as journey_module

    rt = runtime_or_exit()
    from tasks.app import app

    with console.status("synthetic journey"):
        journey = journey_module.run(
            rt,
            lambda name, kwargs: app.send_task(name, kwargs=kwargs),
            timeout_s=timeout_s,
            # From outside the fleet: is any worker there to take the offer? (The beat's journey
            # runs inside a worker and needs no such check.)
            preflight=lambda: journey_module.missing_consumers(app),
        )
    if as_json:
        print_json(journey.as_dict())
    else:
        table = Table(title=f"Synthetic journey {journey.offer_id}")
        for col in ("step", "result", "ms", "detail"):
            table.add_column(col, justify="right" if col == "ms" else "left")
        for s in journey.steps:
            table.add_row(s.name, "[green]pass[/green]" if s.ok else "[red]FAIL[/red]", f"{s.ms:,.0f}", s.detail)
        console.print(table)
    if not journey.ok:
        sys.exit(1)


# --- metrics ---------------------------------------------------------------------------------------


@main.group()
def metrics() -> None:
    """Prometheus metrics."""


@metrics.command("serve")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", type=int, help="Default: OFFERS_METRICS_PORT (9464).")
def metrics_serve(host: str, port: int | None) -> None:
    """Serve /metrics until stopped (the Procfile's metrics: process)."""
    from offers_workers import logs
    from offers_workers.ops.metrics import serve

    logs.setup()
    rt = runtime_or_exit()
    try:
        serve(rt, host, port if port is not None else rt.settings.metrics_port)
    except OSError as exc:
        fail(f"cannot serve metrics on {host}:{port or rt.settings.metrics_port}: {exc.strerror}", 1)
    except KeyboardInterrupt:
        pass


# --- sandbox, dev, demo --------------------------------------------------------------------------


@main.group()
def sandbox() -> None:
    """Local partner sandbox (Stripe, Sift, Plaid, AWS via moto)."""


@sandbox.command("serve")
def sandbox_serve() -> None:
    """Serve every sandbox partner on its default port until Ctrl-C."""
    from offers_workers.local.sandbox import serve

    serve(settings_or_exit())


def _stop_on_sigterm() -> None:
    # Turn SIGTERM into KeyboardInterrupt so `finally` blocks stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


@sandbox.group("faults")
def sandbox_faults() -> None:
    """Partner outage drills: faults seen by every process using the sandbox."""


@sandbox_faults.command("set")
@click.argument("partner", type=click.Choice(["stripe", "sift", "plaid", "aws"]))
@click.option("--status", type=click.IntRange(400, 599), help="HTTP status to answer with.")
@click.option("--rate", default=1.0, show_default=True, type=click.FloatRange(0, 1), help="Share of requests hit.")
@click.option(
    "--latency-ms", default=0, show_default=True, type=click.IntRange(0, 120_000), help="Delay before answering."
)
def sandbox_faults_set(partner: str, status: int | None, rate: float, latency_ms: int) -> None:
    """Inject a fault into PARTNER's sandbox."""
    from offers_workers.local.sandbox import set_fault

    if status is None and latency_ms == 0:
        raise click.UsageError("give --status and/or --latency-ms")
    try:
        set_fault(settings_or_exit(), partner, status=status, rate=rate, latency_ms=latency_ms)
    except OSError as exc:
        fail(f"sandbox not reachable: {exc}", 1)
    click.echo(f"{partner}: status={status} rate={rate} latency_ms={latency_ms}")


@sandbox_faults.command("clear")
@click.argument("partner", required=False, type=click.Choice(["stripe", "sift", "plaid", "aws"]))
def sandbox_faults_clear(partner: str | None) -> None:
    """Clear PARTNER's fault, or every partner's."""
    from offers_workers.local.sandbox import clear_faults

    try:
        clear_faults(settings_or_exit(), partner)
    except OSError as exc:
        fail(f"sandbox not reachable: {exc}", 1)
    click.echo(f"cleared faults of {partner or 'every partner'}")


@main.command()
def dev() -> None:
    """Everything in the foreground: stores, sandbox, every Procfile process. Ctrl-C stops it all."""
    from offers_workers.local.stack import Stack

    _stop_on_sigterm()
    os.environ.setdefault("OFFERS_SANDBOX", "1")  # dev talks to the sandbox it starts
    stack = Stack(settings_or_exit())
    try:
        settings = stack.start()
        console.print(
            f"[green]fleet running[/green]: {', '.join(stack.fleet.processes)}; logs in {stack.fleet.log_dir}"
        )
        console.print(f"OFFERS_DATABASE_URL={settings.database_url}\nOFFERS_BROKER_URL={settings.broker_url}")
        while True:
            dead = stack.fleet.dead()
            if dead:
                fail(f"process {', '.join(dead)} exited; see {stack.fleet.log_dir}")
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        stack.stop()


@main.command()
@click.option("--offers", "count", default=200, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--timeout",
    default=300,
    show_default=True,
    type=click.IntRange(10, 3600),
    help="Seconds to wait for the offers to settle.",
)
def demo(count: int, timeout: int) -> None:
    """Start the fleet, push sample offers through every path, print a report, stop everything."""
    from offers_workers.local import demo as demo_run
    from offers_workers.local.stack import Stack

    _stop_on_sigterm()
    os.environ.setdefault("OFFERS_SANDBOX", "1")  # the demo talks to the sandbox it starts
    stack = Stack(settings_or_exit(), sandbox_ports={"stripe": 0, "sift": 0, "plaid": 0, "aws": 0})
    try:
        with console.status("starting stores, sandbox and workers…"):
            settings = stack.start()
            from tasks.app import app

            stack.wait_for_workers(app)
        rt = Runtime(settings)
        result = demo_run.run(
            rt, lambda m: app.send_task("offers.submit", kwargs={"offer": m}), count, console=console, timeout=timeout
        )
        demo_run.print_report(rt, result, console)
        rt.close()
    except KeyboardInterrupt:
        fail("interrupted", 1)
    except (RuntimeError, ConfigError) as exc:
        fail(str(exc), 1)
    finally:
        with console.status("stopping everything the demo started…"):
            stack.stop()
    sys.exit(0 if result.ok else 1)


@main.command()
@click.option(
    "--offers",
    default=5000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Offers in each saturation phase.",
)
@click.option("--chains", type=click.IntRange(1, 1_000_000), help="Bare chains in the baseline  [default: --offers]")
@click.option(
    "--steady-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Length of the steady-load phase (0: skip).",
)
@click.option(
    "--draft-rps",
    default=100.0,
    show_default=True,
    type=click.FloatRange(1, 10_000),
    help="validate_draft requests per second.",
)
@click.option(
    "--draft-seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Length of the validate_draft phase (0: skip).",
)
@click.option(
    "--memory-offers",
    default=20_000,
    show_default=True,
    type=click.IntRange(0),
    help="Offers in all before the last RSS reading.",
)
@click.option(
    "--timeout", default=900, show_default=True, type=click.IntRange(10), help="Seconds to wait for one phase to drain."
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout; the table and progress go to stderr."
)
def bench(
    offers: int,
    chains: int | None,
    steady_seconds: float,
    draft_rps: float,
    draft_seconds: float,
    memory_offers: int,
    timeout: int,
    as_json: bool,
) -> None:
    """Start the fleet and sandbox, measure the saga against a bare Celery chain, print one table."""
    from offers_workers.local import bench as bench_run
    from offers_workers.local.stack import Stack

    _stop_on_sigterm()
    os.environ.setdefault("OFFERS_SANDBOX", "1")  # the bench injects latency into the sandbox it starts
    options = bench_run.BenchOptions(
        offers=offers,
        chains=chains or offers,
        steady_seconds=steady_seconds,
        draft_rps=draft_rps,
        draft_seconds=draft_seconds,
        memory_offers=memory_offers,
        timeout=timeout,
    )
    # With --json, stdout carries the JSON alone: the table, progress and status go to stderr.
    human = err_console if as_json else console
    configured = settings_or_exit()
    cleanup = ExitStack()
    if configured.database_url:
        # A database of its own on the configured server: the run neither reads nor leaves rows there.
        try:
            os.environ["OFFERS_DATABASE_URL"] = cleanup.enter_context(
                bench_run.scratch_database(configured.database_url)
            )
        except psycopg.Error as exc:
            fail(f"cannot create the bench's database on the configured server: {exc}", 1)
        get_settings.cache_clear()
        configured = settings_or_exit()
    stack = Stack(configured, sandbox_ports={"stripe": 0, "sift": 0, "plaid": 0, "aws": 0})
    cleanup.callback(stack.stop)
    result = None
    try:
        with human.status("starting stores, sandbox and workers…"):
            settings = stack.start(worker_args=bench_run.WORKER_ARGS)
            from tasks.app import app

            stack.wait_for_workers(app)
        rt = Runtime(settings)
        runner = bench_run.Bench(app, rt, dict(stack.fleet.processes), human, options)
        result = runner.run()
        # Piped to a file or CI log, the table keeps one line per row instead of wrapping at 80.
        out = human if human.is_terminal else Console(width=170, stderr=as_json)
        bench_run.report(result, out, f"offers-workers bench {runner.run_id}")
        if as_json:
            print_json(result.as_dict())
        rt.close()
    except KeyboardInterrupt:
        fail("interrupted", 1)
    except (RuntimeError, ConfigError) as exc:
        fail(str(exc), 1)
    finally:
        with human.status("stopping everything the bench started…"):
            cleanup.close()
    # The figures are for people to read; a lost or failed offer is what makes the bench fail.
    sys.exit(0 if result is not None and not result.problems else 1)


