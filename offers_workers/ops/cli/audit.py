"""``audit``: the tamper-evident audit trail and its Glacier archive."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import Any

import click
from rich.table import Table

from offers_workers.ops.cli.common import (
    LISTING_HELP,
    ListingTable,
    console,
    err_console,
    fail,
    listing_options,
    moment_text,
    parse_moment,
    runtime_or_exit,
    show_listing,
)
from offers_workers.store import listings


@click.group()
def audit() -> None:
    """The tamper-evident audit trail and its Glacier archive."""


@audit.command("verify-chain")
@click.option(
    "--since",
    help="Start at the first row at or after this time: ISO time or a duration back from now (1h, 7d); default: the whole trail.",
)
def audit_verify_chain(since: str | None) -> None:
    """Walk the hash chain; name the first broken link (exit 1)."""
    from offers_workers.saga import trail

    start = parse_moment(since, option="--since") if since is not None else None
    rt = runtime_or_exit()
    with console.status("walking the audit chain"):
        check = trail.verify_chain(rt, start)
    if not check.ok:
        fail(f"audit chain broken after {check.rows - 1:,} good rows: {check.first_break}", 1)
    click.echo(f"audit chain intact: {check.rows:,} rows" + (f" since {start.isoformat()}" if start else ""))
    if check.unsealed:
        err_console.print(f"{check.unsealed:,} rows written since are not sealed into the chain yet (not walked)")


@audit.command("seal")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=30,
    show_default=True,
    help="Seconds to wait for the writers of rows written before now to commit.",
)
def audit_seal(timeout: float) -> None:
    """Link every row written so far into the hash chain (the beat does this every second); exit 1
    if some are still unsealed after --timeout."""
    from offers_workers.saga import trail

    rt = runtime_or_exit()
    with console.status("sealing the audit trail"):
        sealed = trail.seal(rt, timeout_s=timeout)
    lag = sealed.lag
    if not sealed.caught_up:
        oldest = f", the oldest written {moment_text(lag.oldest_unsealed_at)}" if lag.oldest_unsealed_at else ""
        fail(
            f"{sealed.linked:,} rows sealed; rows written before now are still unsealed after {timeout:g} s"
            f" ({lag.unsealed_rows:,} unsealed{oldest}): a transaction is still open",
            1,
        )
    click.echo(f"{sealed.linked:,} rows sealed; the chain is sealed through row {lag.sealed_through:,}")


@audit.command("export")
@click.option(
    "--until",
    help="Export rows before this time: ISO time or a duration back from now (1h, 7d); default: the start of today, UTC.",
)
def audit_export(until: str | None) -> None:
    """Export the rows not yet archived to S3 (the runbook's run_glacier_export)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from offers_workers import logs
    from offers_workers.ops import export_summary
    from offers_workers.saga import trail

    cutoff = parse_moment(until, option="--until") if until else None
    rt = runtime_or_exit()
    # The export and its summary log JSON lines on stderr, as the nightly run does in a worker.
    logs.setup()
    failed: trail.ExportFailed | None = None
    with Progress(TextColumn("[bold]exporting"), BarColumn(), MofNCompleteColumn(), console=err_console) as bar:
        task = bar.add_task("rows", total=None)
        try:
            summary = trail.run_export(
                rt, cutoff, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
        except trail.ExportBusy as exc:
            fail(str(exc), 1)
        except trail.ExportFailed as exc:
            failed, summary = exc, exc.summary
    if summary is None:
        click.echo("nothing to export: every row before the cut-off is archived")
        return
    unsent = export_summary.report(summary, rt.settings)
    # Notes on stderr, like the progress: stdout keeps the one result line scripts read. An unsent
    # summary changes neither the export's row nor the exit code.
    if unsent:
        click.echo(f"offers-workers: could not send the export summary: {unsent}", err=True)
    elif rt.settings.smtp_host:
        click.echo(f"summary emailed to {', '.join(rt.settings.smtp_recipients)}", err=True)
    if failed is not None:
        fail(f"{failed}; the next run retries this window", 1)
    click.echo(
        f"export {summary.export_id} {summary.status}: {summary.rows:,} rows (ids {summary.first_row_id}–{summary.last_row_id})"
        f" to s3://{rt.settings.audit_bucket}/{summary.object_key} [{summary.storage_class}] sha256 {summary.sha256}"
    )


@audit.command("exports", epilog=LISTING_HELP)
@listing_options
def audit_exports(limit: int | None, after: str | None, as_json: bool) -> None:
    """Export jobs, newest first."""
    rt = runtime_or_exit()
    show_listing(
        rt,
        listings.AUDIT_EXPORTS,
        {},
        limit=limit,
        after=after,
        as_json=as_json,
        shape=asdict,
        table=audit_exports_table,
    )


def audit_export_cells(r: dict[str, Any]) -> tuple[str, ...]:
    """One export job's line in `audit exports`: the audit rows it holds, and its object or its error."""
    rows, ids = f"{r['row_count'] or 0:,}", f"{r['first_row_id']}–{r['last_row_id']}"
    until, finished = moment_text(r["until"]), moment_text(r["finished_at"])
    return (str(r["id"]), r["status"], until, rows, ids, str(r["attempts"]), finished, r["error"] or r["object_key"])


audit_exports_table = ListingTable(
    "audit export(s)",
    ("id", "status", "until", "rows", "ids", "attempts", "finished", "object / error"),
    audit_export_cells,
    right=frozenset({"id", "rows", "attempts"}),
)


@audit.command("verify")
@click.argument("export_id", type=int, required=False)
@click.option("--full", is_flag=True, help="Read every anchor, not only those after the last export.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def audit_verify(export_id: int | None, full: bool, as_json: bool) -> None:
    """Check the audit trail in Postgres against its anchors in S3 (exit 1 on a finding).

    Without EXPORT_ID: the chain, every export's manifest and object, and the anchors (the chain's
    sealed heads, written once a minute under Object Lock); each finding names the row, export or
    anchor and what differs. With EXPORT_ID: restore that export from Glacier and check it against
    its manifest and Postgres (the runbook's quarterly restore check).
    """
    if export_id is not None:
        _verify_one_export(export_id)
        return
    from offers_workers.saga import trail

    rt = runtime_or_exit()
    with console.status("checking the audit trail against its anchors in S3"):
        found = trail.verify(rt, full=full)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": found.ok,
                    "findings": found.findings,
                    "rows": found.rows_checked,
                    "anchors": found.anchors,
                    "exports": found.exports,
                    "unanchored_rows": found.unanchored,
                }
            )
        )
        if not found.ok:
            sys.exit(1)
        return
    summary = f"{found.rows_checked:,} rows, {found.exports:,} exports, {found.anchors:,} anchors checked" + (
        f"; {found.unanchored:,} rows sealed since the last anchor" if found.unanchored else ""
    )
    if found.ok:
        click.echo(f"audit trail verified against its anchors: {summary}")
        return
    table = Table(title=f"{len(found.findings):,} finding(s): {summary}")
    table.add_column("finding", overflow="fold")  # a finding names a key: never cut short
    for finding in found.findings:
        table.add_row(finding)
    err_console.print(table)
    fail(f"audit trail differs from its anchors: {found.findings[0]}", 1)


def _verify_one_export(export_id: int) -> None:
    from offers_workers.partners.aws_archive import RestoreInProgress
    from offers_workers.saga import trail

    rt = runtime_or_exit()
    with console.status(f"restoring and checking export {export_id}"):
        try:
            problems = trail.verify_export(rt, export_id)
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


@audit.command("anchor")
def audit_anchor() -> None:
    """Write the chain's sealed head to S3 now (the beat does it every OFFERS_AUDIT_ANCHOR_INTERVAL_SECONDS)."""
    from offers_workers.saga import trail

    rt = runtime_or_exit()
    with console.status("sealing and anchoring the audit trail"):
        trail.seal(rt)
        rows = trail.anchor(rt)
    click.echo(f"{rows:,} rows anchored" if rows else "nothing sealed since the last anchor")


@audit.group("legal-hold")
def legal_hold() -> None:
    """A legal hold on an export: its object and manifest cannot be deleted, whatever their retention, until it is lifted."""


@legal_hold.command("set")
@click.argument("export_id", type=int)
def legal_hold_set(export_id: int) -> None:
    """Put a legal hold on export EXPORT_ID."""
    _legal_hold(export_id, on=True)


@legal_hold.command("lift")
@click.argument("export_id", type=int)
def legal_hold_lift(export_id: int) -> None:
    """Lift the legal hold on export EXPORT_ID (its Object Lock retention still holds)."""
    _legal_hold(export_id, on=False)


def _legal_hold(export_id: int, *, on: bool) -> None:
    from offers_workers.saga import trail

    rt = runtime_or_exit()
    try:
        keys = trail.legal_hold(rt, export_id, on)
    except LookupError as exc:
        fail(str(exc), 1)
    for key in keys:
        click.echo(f"legal hold {'on' if on else 'lifted'}: {key}")
