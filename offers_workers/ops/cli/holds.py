"""``holds``: payment holds (list, release)."""

from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from offers_workers.ops.cli.common import (
    LISTING_HELP,
    ListingTable,
    amount_text,
    err_console,
    fail,
    listing_options,
    moment_text,
    parse_duration,
    runtime_or_exit,
    show_listing,
)
from offers_workers.runtime import Runtime
from offers_workers.store import listings
from offers_workers.store.offers import Holding


@click.group()
def holds() -> None:
    """Payment holds (the runbook's release_holds)."""


def _hold_filters(
    offer_id: str | None = None, dead_lettered: bool = False, older_than: timedelta | None = None
) -> dict[str, Any]:
    cutoff = datetime.now(UTC) - older_than if older_than else None
    return {"offer_id": offer_id, "dead_lettered": dead_lettered, "older_than": cutoff}


def _holds(
    rt: Runtime, offer_id: str | None = None, dead_lettered: bool = False, older_than: timedelta | None = None
) -> list[Holding]:
    return list(listings.stream(rt.db, listings.HOLDS, _hold_filters(offer_id, dead_lettered, older_than)))


@holds.command("list", epilog=LISTING_HELP)
@listing_options
def holds_list(limit: int | None, after: str | None, as_json: bool) -> None:
    """Offers holding a card authorization, oldest first."""
    rt = runtime_or_exit()

    def with_release_due(h: Holding) -> dict[str, Any]:
        # When the beat releases it at the latest (OFFERS_HOLD_RELEASE_AFTER), before Stripe lets it lapse.
        due = h.payment_held_at + rt.settings.hold_release_after if h.payment_held_at else None
        return asdict(h) | {"release_due_at": due}

    show_listing(
        rt,
        listings.HOLDS,
        _hold_filters(),
        limit=limit,
        after=after,
        as_json=as_json,
        shape=with_release_due,
        table=holds_table,
    )


def hold_cells(r: dict[str, Any]) -> tuple[str, ...]:
    """One hold's line in `holds list`: since when, and when the beat releases it at the latest."""
    held, due = moment_text(r["payment_held_at"]), moment_text(r["release_due_at"])
    return (r["offer_id"], r["state"], r["payment_intent_id"], amount_text(r), held, due)


holds_table = ListingTable(
    "active hold(s)", ("offer_id", "state", "payment_intent_id", "amount", "held since", "released by"), hold_cells
)


@holds.command("release")
@click.option("--offer", "offer_id", help="Only this offer.")
@click.option("--dead-lettered", is_flag=True, help="Only offers waiting in a dead-letter queue.")
@click.option("--older-than", "older_than", help="Only holds older than this (24h, 6d).")
@click.option("--dry-run", is_flag=True, help="Say what would be released; change nothing.")
def holds_release(offer_id: str | None, dead_lettered: bool, older_than: str | None, dry_run: bool) -> None:
    """Cancel the PaymentIntents of the chosen holds, record why, and print what was done."""
    from rich.progress import track

    from offers_workers.saga import stages

    age = parse_duration(older_than, option="--older-than") if older_than else None
    if not (offer_id or dead_lettered or age):
        raise click.UsageError("choose holds with --offer, --dead-lettered or --older-than")
    rt = runtime_or_exit()
    held = _holds(rt, offer_id, dead_lettered, age)
    if offer_id and not held:
        fail(f"offer {offer_id!r} has no active hold", 1)
    if dry_run:
        for h in held:
            click.echo(f"would release {h.payment_intent_id} of {h.offer_id} ({h.state})")
        click.echo(f"{len(held)} hold(s) would be released")
        return
    released = 0
    for h in track(held, description="releasing", console=err_console, disable=len(held) < 2):
        status = stages.release_hold(rt, h.offer_id, why="released by an operator", actor="cli")
        if status is not None:
            released += 1
            click.echo(f"released {h.payment_intent_id} of {h.offer_id} ({h.state}): {status}")
    click.echo(f"{released} hold(s) released")


@holds.command("reconcile")
@click.option("--since", help="Only intents Stripe created in this last stretch (8d); default: every one.")
@click.option("--after", help="Resume after this PaymentIntent (what an interrupted run printed).")
@click.option("--dry-run", is_flag=True, help="Say what would be released and flagged; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def holds_reconcile(since: str | None, after: str | None, dry_run: bool, as_json: bool) -> None:
    """Match Stripe's uncaptured holds with the offers: release orphans, flag mismatches (exit 1 if any)."""
    from dataclasses import asdict

    from rich.progress import Progress, SpinnerColumn, TextColumn

    from offers_workers.domain.errors import PartnerError
    from offers_workers.ops.cli.common import print_json
    from offers_workers.saga import reconciliation

    window = parse_duration(since, option="--since") if since else None
    rt = runtime_or_exit()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err_console, transient=True) as bar:
        paging = bar.add_task("reading Stripe's holds", total=None)
        try:
            done = reconciliation.reconcile(
                rt,
                since=window,
                after=after,
                dry_run=dry_run,
                progress=lambda n: bar.update(paging, description=f"reading Stripe's holds: {n:,} of ours"),
            )
        except reconciliation.Interrupted as stopped:
            resume = f"; resume with --after {stopped.cursor}" if stopped.cursor else ""
            fail(f"Stripe did not answer, nothing more was changed: {stopped}{resume}", 1)
        except PartnerError as exc:
            fail(f"Stripe refused the reconciliation, nothing more was changed: {exc}", 1)
    if as_json:
        print_json(asdict(done) | {"counts": done.counts()})
    else:
        # One line per hold, as `holds release` prints them: ids an operator copies whole.
        verb = "would release" if dry_run else "released"
        for f in done.released:
            click.echo(f"{verb} {f.payment_intent_id} of {f.offer_id}: {f.why}")
        for f in done.flagged:
            click.echo(f"flagged {f.kind}: {f.payment_intent_id} of {f.offer_id}: {f.why}")
        click.echo(
            f"{done.holds_checked:,} Stripe holds and {done.offers_checked:,} held offers checked"
            f" ({done.too_young:,} too young to judge): {len(done.released):,} {verb}, {len(done.flagged):,} flagged"
        )
    if done.flagged:
        sys.exit(1)
