"""What upstream services do, from the command line (``submit``, ``cancel``, ``schema``), and a look at
what came of it (``offers``, ``intake rejections``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from offers_workers.domain import states
from offers_workers.domain.payload import json_schema
from offers_workers.ops.cli.common import (
    LISTING_HELP,
    ListingTable,
    amount_text,
    console,
    fail,
    listing_options,
    moment_text,
    parse_moment,
    print_json,
    record_table,
    runtime_or_exit,
    settings_or_exit,
    show_listing,
)
from offers_workers.store import audit_trail, listings, outbox
from offers_workers.store import offers as offer_rows
from offers_workers.store.cancel_requests import Request
from offers_workers.store.intake_rejections import RejectionRecord


@click.command()
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


@click.command()
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


@click.command()
@click.argument("offer_id")
@click.option("--reason", required=True, type=click.Choice(states.CANCEL_REASONS), help="Why.")
@click.option("--actor", default="ops", show_default=True, type=click.Choice(states.CANCEL_ACTORS), help="Who asks.")
def cancel(offer_id: str, reason: str, actor: str) -> None:
    """Send offers.cancel for OFFER_ID, as an upstream service would."""
    from offers_workers.saga.intake import OFFER_ID

    if not OFFER_ID.fullmatch(offer_id):
        fail(f"{offer_id!r} is not an offer id (1-64 letters, digits, '_' or '-')", 2)
    settings = settings_or_exit()
    from tasks import authority
    from tasks.app import app

    if actor == "ops" and settings.message_auth and authority.signing_key("ops") is None:
        fail(
            "a cancel as ops is signed with the ops key: set OFFERS_OPS_MESSAGE_KEYS (or OFFERS_OPS_MESSAGE_KEYS_FILE)",
            2,
        )
    app.send_task("offers.cancel", kwargs={"offer_id": offer_id, "reason": reason, "actor": actor})
    click.echo(f"sent offers.cancel for {offer_id} ({reason}, by {actor}) to offers.intake")


# --- offers, intake ----------------------------------------------------------------------------


@click.group()
def offers() -> None:
    """Look at offers."""


@offers.command("show")
@click.argument("offer_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def offers_show(offer_id: str, as_json: bool) -> None:
    """One offer with its state history and its events (with what EventBridge and SNS answered)."""
    rt = runtime_or_exit()
    with rt.db.transaction() as conn:
        record = offer_rows.offer_record(conn, offer_id)
        if record is None:
            fail(f"no offer {offer_id!r}", 1)
        history = audit_trail.offer_history(conn, offer_id)
        deliveries = outbox.offer_events(conn, offer_id)
    summary = offer_rows.offer_summary(record) | {
        "history": [step.as_json() for step in history],
        "events": [delivery.as_json() for delivery in deliveries],
    }
    if as_json:
        print_json(summary)
        return
    console.print(record_table(f"offer {offer_id}", summary, apart=("history", "events")))
    steps = Table(title="history")
    for col in ("state", "at", "reason", "by"):
        steps.add_column(col)
    for step in history:
        steps.add_row(step.state, step.at.isoformat(), step.reason or "", step.by)
    console.print(steps)
    events = Table(title="events")
    for col in ("event", "published", "EventBridge id", "SNS MessageId"):
        events.add_column(col)
    for delivery in deliveries:
        events.add_row(
            delivery.detail_type,
            moment_text(delivery.published_at) or "not yet",
            delivery.bus_event_id or "",
            delivery.sns_message_id or "",
        )
    console.print(events)


@offers.command("list", epilog=LISTING_HELP)
@click.option("--state", type=click.Choice(sorted(states.ALL_STATES)))
@click.option("--since", help="ISO time or a duration back from now (1h, 7d).")
@listing_options
def offers_list(state: str | None, since: str | None, limit: int | None, after: str | None, as_json: bool) -> None:
    """Offers, newest first (the objects of `offers show --json`, without history)."""
    moment = parse_moment(since, option="--since") if since is not None else None
    rt = runtime_or_exit()
    show_listing(
        rt,
        listings.OFFERS,
        {"state": state, "since": moment},
        limit=limit,
        after=after,
        as_json=as_json,
        shape=offer_rows.offer_summary,
        table=offers_table,
    )


def offer_cells(s: dict[str, Any]) -> tuple[str, ...]:
    """One offer summary's line in `offers list`."""
    return (
        s["offer_id"],
        s["state"],
        s["reason"] or "",
        amount_text(s),
        s["payment_method"],
        moment_text(s["received_at"]),
    )


offers_table = ListingTable("offer(s)", ("offer_id", "state", "reason", "amount", "payment", "received"), offer_cells)


@click.group()
def intake() -> None:
    """Messages that did not yield a usable offer."""


@intake.command("rejections", epilog=LISTING_HELP)
@click.option("--since", help="ISO time or a duration back from now (1h, 7d).")
@click.option(
    "--reason",
    type=click.Choice(states.INTAKE_REJECTION_REASONS),
    help="Only this reason (unauthenticated: messages refused for want of a valid MAC).",
)
@listing_options
def intake_rejections(
    since: str | None, reason: str | None, limit: int | None, after: str | None, as_json: bool
) -> None:
    """Intake rejections, newest first, with their field-level errors."""
    moment = parse_moment(since, option="--since") if since is not None else None
    rt = runtime_or_exit()
    show_listing(
        rt,
        listings.INTAKE_REJECTIONS,
        {"since": moment, "reason": reason},
        limit=limit,
        after=after,
        as_json=as_json,
        shape=RejectionRecord.as_json,
        table=rejections_table,
    )


def rejection_cells(r: dict[str, Any]) -> tuple[str, ...]:
    """One intake rejection's line in `intake rejections`: its first four field errors."""
    errors = "; ".join(f"{e['field'] or '(message)'}: {e['code']}" for e in r["errors"][:4])
    return (str(r["id"]), moment_text(r["received_at"]), r["offer_id"] or "", r["reason"], errors, str(r["raw_size"]))


rejections_table = ListingTable(
    "intake rejection(s)", ("id", "received", "offer_id", "reason", "errors", "bytes"), rejection_cells
)


@click.group("cancel-requests")
def cancel_requests() -> None:
    """Every cancel asked for, and what it did."""


@cancel_requests.command("list", epilog=LISTING_HELP)
@click.option("--offer", "offer_id", help="Only this offer's requests.")
@click.option("--outcome", type=click.Choice(states.CANCEL_OUTCOMES))
@click.option("--since", help="ISO time or a duration back from now (1h, 7d).")
@listing_options
def cancel_requests_list(
    offer_id: str | None, outcome: str | None, since: str | None, limit: int | None, after: str | None, as_json: bool
) -> None:
    """Cancel requests, newest first: who asked, why, and what the cancel did."""
    moment = parse_moment(since, option="--since") if since is not None else None
    show_listing(
        runtime_or_exit(),
        listings.CANCEL_REQUESTS,
        {"offer_id": offer_id, "outcome": outcome, "since": moment},
        limit=limit,
        after=after,
        as_json=as_json,
        shape=Request.as_json,
        table=cancel_requests_table,
    )


def cancel_request_cells(r: dict[str, Any]) -> tuple[str, ...]:
    """One cancel request's line in `cancel-requests list`."""
    received = moment_text(r["received_at"])
    return (str(r["id"]), received, r["offer_id"] or "", r["reason"] or "", r["actor"] or "", r["outcome"])


cancel_requests_table = ListingTable(
    "cancel request(s)", ("id", "received", "offer_id", "reason", "actor", "outcome"), cancel_request_cells
)
