"""What every command shares: one-line failures, settings and runtime, JSON output, listings, time options."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import click
import psycopg
from psycopg_pool import PoolTimeout
from rich.console import Console
from rich.table import Table

from config.settings import ConfigError, Settings, get_settings
from offers_workers.domain import secrets
from offers_workers.runtime import ProcessKind, Runtime
from offers_workers.store import listings
from offers_workers.store.db import Row

console = Console()
err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with one line on stderr and exit ``code`` (1 not found / failed, 2 usage)."""
    # One line whatever the terminal width: operators grep these, scripts parse them.
    err_console.print(f"offers-workers: {message}", markup=False, highlight=False, soft_wrap=True)
    sys.exit(code)


def settings_or_exit() -> Settings:
    """The settings, or exit 2 naming what is wrong with them."""
    try:
        return get_settings()
    except ConfigError as exc:
        fail(str(exc), 2)


#: Seconds a command waits for a Postgres connection before saying it cannot reach it (a worker
#: waits 10 and retries; an operator is better told at once).
DB_WAIT_S = 5


def runtime_or_exit(kind: ProcessKind = "cli") -> Runtime:
    """A runtime on the configured Postgres (exit 2 if none is configured); ``kind`` sizes its pool."""
    settings = settings_or_exit()
    if not settings.database_url:
        fail("invalid configuration: OFFERS_DATABASE_URL is required for this command", 2)
    return Runtime(settings, db_wait_s=DB_WAIT_S, kind=kind)


def first_line(exc: BaseException) -> str:
    """An exception's first line of text, or its type's name."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].strip()


def connection_lost(exc: psycopg.Error) -> bool:
    """No connection to be had, or the one in use gone: not a statement's own error (whose
    OperationalError subclasses, a lock timeout say, keep their traceback)."""
    return isinstance(exc, PoolTimeout) or type(exc) is psycopg.OperationalError


#: A duration back from now: 30s, 30m, 1h, 7d, 2w.
DURATION = re.compile(r"^(\d+)([smhdw])$")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(value: str, *, option: str | None = None) -> timedelta:
    """A duration like 30m, 1h, 7d (``--window``, ``--older-than``); a usage error (exit 2) otherwise."""
    match = DURATION.match(value.strip())
    if not match:
        raise click.BadParameter(f"{value!r} is not a duration like 30m, 1h, 7d", param_hint=option)
    return timedelta(**{UNITS[match[2]]: int(match[1])})


def parse_moment(value: str, *, option: str) -> datetime:
    """A moment given as an ISO time (a zone-less one is UTC) or as a duration back from now (``1h``), for
    ``--since`` and ``--until``; a usage error (exit 2) naming ``option`` otherwise."""
    if DURATION.match(value.strip()):
        return datetime.now(UTC) - parse_duration(value, option=option)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither an ISO timestamp nor a duration like 1h", param_hint=option
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def print_json(value: Any) -> None:
    """Print ``value`` as indented JSON (times and decimals as strings), payment secrets removed."""
    click.echo(json.dumps(secrets.redact(value), indent=2, default=str))


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
    source: listings.Listing[Row],
    params: dict[str, Any],
    *,
    limit: int | None,
    after: str | None,
    as_json: bool,
    shape: Callable[[Row], dict[str, Any]],
    table: Callable[[list[dict[str, Any]]], Table],
) -> None:
    """Print a listing: every row as a streamed JSON array, or one page (JSON object or table).
    ``shape`` makes a row the JSON object printed for it; ``table`` lays out a page of those."""
    try:
        start = listings.decode_cursor(source, after) if after is not None else None
    except listings.BadCursor as exc:
        raise click.BadParameter(str(exc), param_hint="'--after'") from None
    if as_json and limit is None and start is None:
        write_json_array(map(shape, listings.stream(rt.db, source, params)))
        return
    with rt.db.transaction() as conn:
        page = listings.read_page(conn, source, params, limit=limit or TABLE_ROWS, after=start, count_more=not as_json)
    # Payment secrets out of every row, whatever its record kept: the second net after intake's.
    items = [secrets.redact(shape(r)) for r in page.rows]
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


# --- tables: a listing's page, one record ----------------------------------------------------------


@dataclass(frozen=True)
class ListingTable:
    """How a page of a listing reads as a table (``show_listing``'s ``table``): a title that counts the
    rows ("3 offer(s)"), one heading per column, and ``cells``, one row's cells in the headings' order."""

    what: str  #: what one row is, with its plural in brackets: "offer(s)"
    columns: tuple[str, ...]
    cells: Callable[[dict[str, Any]], tuple[str, ...]]
    right: frozenset[str] = frozenset()  #: columns of figures, aligned right

    def __call__(self, rows: list[dict[str, Any]]) -> Table:
        table = Table(title=f"{len(rows)} {self.what}")
        for col in self.columns:
            table.add_column(col, justify="right" if col in self.right else "left")
        for row in rows:
            table.add_row(*self.cells(row))
        return table


def record_table(title: str, record: dict[str, Any], *, apart: str | tuple[str, ...]) -> Table:
    """One record (``offers show``, ``dlq show``) as a table of field and value: fields without a value
    are left out, and so is ``apart``, which the command prints after it (a history, a traceback)."""
    apart = (apart,) if isinstance(apart, str) else apart
    table = Table(title=title, show_header=False)
    for key, value in secrets.redact(record).items():
        if key not in apart and value is not None:
            table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    return table


def moment_text(value: datetime | str | None) -> str:
    """A moment in a table cell, to the second ("2026-01-31T09:30:00"); blank when there is none."""
    if value is None:
        return ""
    return (value.isoformat() if isinstance(value, datetime) else value)[:19]


def amount_text(row: dict[str, Any]) -> str:
    """A row's amount in major units with its currency, as tables show it ("1,234.50 USD")."""
    return f"{row['amount_cents'] / 100:,.2f} {row['currency']}"


def write_json_array(items: Iterable[Any]) -> None:
    """A JSON array written as the rows arrive, one item a line: memory stays flat however many."""
    written = 0
    try:
        for item in items:
            sys.stdout.write(("[\n" if written == 0 else ",\n") + json.dumps(secrets.redact(item), default=str))
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
