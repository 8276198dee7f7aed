"""``dlq``: the dead-letter queues, one per stage (list, show, replay, discard)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import click

from offers_workers.domain import secrets
from offers_workers.ops.cli.common import (
    LISTING_HELP,
    ListingTable,
    console,
    err_console,
    fail,
    listing_options,
    moment_text,
    print_json,
    record_table,
    runtime_or_exit,
    show_listing,
)
from offers_workers.saga import deadletter
from offers_workers.store import dead_letters, listings

STAGE_NAMES = sorted(deadletter.STAGES)


@click.group()
def dlq() -> None:
    """Dead-letter queues, one per stage (the runbook's requeue_events)."""


@dlq.command("list", epilog=LISTING_HELP)
@click.option("--stage", type=click.Choice(STAGE_NAMES))
@click.option("--all", "include_resolved", is_flag=True, help="Include replayed and discarded entries.")
@listing_options
def dlq_list(stage: str | None, include_resolved: bool, limit: int | None, after: str | None, as_json: bool) -> None:
    """Dead-lettered stage runs, oldest first."""
    rt = runtime_or_exit()
    show_listing(
        rt,
        listings.DEAD_LETTERS,
        {"stage": stage, "status": None if include_resolved else "pending"},
        limit=limit,
        after=after,
        as_json=as_json,
        shape=dead_letters.Entry.listed,
        table=dead_letters_table,
    )


def dead_letter_cells(r: dict[str, Any]) -> tuple[str, ...]:
    """One dead letter's line in `dlq list`: its error cut to 60 characters."""
    error = f"{r['error_type']}: {r['error_message'][:60]}"
    tries = (str(r["attempts"]), str(r["replay_count"]))
    return (str(r["id"]), r["stage"], r["offer_id"] or "", error, *tries, moment_text(r["last_failed_at"]), r["status"])


dead_letters_table = ListingTable(
    "dead letter(s)",
    ("id", "stage", "offer_id", "error", "attempts", "replays", "last failed", "status"),
    dead_letter_cells,
)


@dlq.command("show")
@click.argument("entry_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def dlq_show(entry_id: int, as_json: bool) -> None:
    """One entry with its kwargs and traceback."""
    rt = runtime_or_exit()
    with rt.db.transaction() as conn:
        entry = dead_letters.entry(conn, entry_id)
    if entry is None:
        fail(f"no dead letter {entry_id}", 1)
    if as_json:
        print_json(asdict(entry))
        return
    console.print(record_table(f"dead letter {entry_id}", asdict(entry), apart="traceback"))
    if entry.traceback:
        console.print(secrets.redact_text(entry.traceback), markup=False, highlight=False)


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
            ids = [e.id for e in dead_letters.entries(conn, stage=stage)]
        else:
            assert entry_id is not None  # checked with --all above
            entry = dead_letters.entry(conn, entry_id)
            if entry is None:
                fail(f"no dead letter {entry_id}", 1)
            ids = [entry_id] if entry.status == "pending" else []
            if not ids:
                click.echo(f"dead letter {entry_id} is {entry.status}; nothing to replay")
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
            app.send_dispatch(dispatch)
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
