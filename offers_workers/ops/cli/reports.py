"""``stats`` and ``health``: the fleet's figures, and the runbook's thresholds checked against them."""

from __future__ import annotations

import sys
from typing import Any

import click
from rich.table import Table

from offers_workers.ops import reports
from offers_workers.ops.cli.common import console, parse_duration, print_json, runtime_or_exit
from offers_workers.store.reports import Funnel


@click.command()
@click.option("--window", default="1h", show_default=True, help="How far back to look (30m, 1h, 7d).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def stats(window: str, as_json: bool) -> None:
    """Offers by state, success rate, latencies, dead letters, holds, the product funnel, cancellations and queues."""
    from offers_workers.ops.figures import figures

    age = parse_duration(window, option="--window")
    rt = runtime_or_exit()
    found = figures(rt, age)
    if as_json:
        print_json(found.to_json())
        return
    table = Table(title=f"Offers received in the last {window} (synthetic journeys left out)")
    for col in ("state", "reason", "offers"):
        table.add_column(col, justify="right" if col == "offers" else "left")
    for row in found.offers_by_state:
        table.add_row(row.state, row.reason or "", f"{row.offers:,}")
    console.print(table)

    slo = Table(title="Service levels")
    for col in ("figure", "count", "p50", "p95", "p99"):
        slo.add_column(col, justify="left" if col == "figure" else "right")
    rate = found.success_rate
    slo.add_row("submission success rate", "", "-" if rate is None else f"{rate:.1%}", "", "")
    for label, f in (("validation (ms)", found.validation_ms), ("intake → auction (ms)", found.auction_lag_ms)):
        slo.add_row(label, f"{f.count:,}", reports.ms_text(f.p50), reports.ms_text(f.p95), reports.ms_text(f.p99))
    console.print(slo)

    ops = Table(title="Now")
    ops.add_column("what")
    ops.add_column("value", justify="right")
    for stage, n in found.dead_letters.items():
        ops.add_row(f"dead letters · {stage}", f"{n:,}")
    if not found.dead_letters:
        ops.add_row("dead letters", "0")
    holds = found.active_holds
    ops.add_row("active holds", f"{holds.holds:,} ({holds.amount_cents / 100:,.2f})")
    ops.add_row("stuck offers", f"{found.stuck_offers:,}")
    for kind, n in found.hold_findings.items():
        ops.add_row(f"holds flagged · {kind}", f"{n:,}")
    for queue, n in (found.queue_depths or {}).items():
        ops.add_row(f"queue · {queue}", f"{n:,}")
    if found.db_connections is not None:
        used = found.db_connections
        ops.add_row("postgres connections", f"{used.in_use:,} of {used.available:,}")
    console.print(ops)

    if found.funnel is not None:
        console.print(_funnel_table(found.funnel, window))

    reasons = Table(title=f"Cancellations in the last {window}, by reason")
    for col in ("reason", "offers", "amount"):
        reasons.add_column(col, justify="left" if col == "reason" else "right")
    for cancelled in found.cancellations.by_reason:
        reasons.add_row(cancelled.reason or "", f"{cancelled.offers:,}", f"{(cancelled.amount_cents or 0) / 100:,.2f}")
    console.print(reasons)
    bands = Table(title="… by value band (offer amount, major units)")
    bands.add_column("band")
    bands.add_column("offers", justify="right")
    for band in found.cancellations.by_value_band:
        bands.add_row(band.band, f"{band.offers:,}")
    console.print(bands)
    hv = found.high_value_cancellations
    console.print(
        f"high-value cancellations (≥ {hv.threshold_cents / 100:,.0f}): {hv.recent} in the last"
        f" {rt.settings.cancel_spike_window_seconds / 3600:g} h vs {hv.trailing_rate:.1f} per window trailing"
        + (" — [red]spike[/red]" if hv.spike else "")
    )


def _funnel_table(funnel: Funnel, window: str) -> Table:
    """The product funnel's steps, each with its conversion from the step before (as Segment gets them)."""
    table = Table(title=f"Product funnel, the last {window} (each step counted when it happened)")
    for col in ("step", "count", "conversion"):
        table.add_column(col, justify="left" if col == "step" else "right")

    def pct(share: float | None) -> str:
        return "-" if share is None else f"{share:.1%}"

    table.add_row("drafts validated", f"{funnel.drafts_validated:,} ({funnel.drafts_valid:,} valid)", "")
    table.add_row("submitted", f"{funnel.submitted:,}", pct(funnel.conversion["draft_to_submitted"]))
    table.add_row("auction triggered", f"{funnel.auction_triggered:,}", pct(funnel.conversion["submitted_to_auction"]))
    table.add_row("rejected", f"{funnel.rejected:,}", "")
    for reason, n in funnel.rejected_by_reason.items():
        table.add_row(f"  rejected · {reason}", f"{n:,}", "")
    table.add_row("cancelled", f"{funnel.cancelled:,}", "")
    return table


@click.command()
@click.option("--window", default="1h", show_default=True, help="The window the rates and latencies cover.")
def health(window: str) -> None:
    """Check the runbook's thresholds; exit 1 on a breach, naming the symptom and its first checks."""
    from offers_workers.ops.figures import figures
    from offers_workers.ops.health import checks

    age = parse_duration(window, option="--window")
    rt = runtime_or_exit()
    results = checks(rt, figures(rt, age))
    table = Table(title=f"Health (last {window})")
    for col in ("check", "value", "threshold", "status"):
        table.add_column(col)
    for c in results:
        status = "[red]BREACH[/red]" if not c.ok else "[yellow]warn[/yellow]" if c.warning else "[green]ok[/green]"
        table.add_row(c.name, c.value, c.threshold, status)
    console.print(table)
    console.print(links_table(rt.settings))
    breaches = [c for c in results if not c.ok]
    # A warning names its symptom and first checks too, but only a breach fails the command.
    for c in [*breaches, *(c for c in results if c.ok and c.warning)]:
        heading = "Runbook symptom" if not c.ok else "Warning"
        style = "bold red" if not c.ok else "bold yellow"
        console.print(f"[{style}]{heading}: {c.symptom}[/{style}] ({c.name}: {c.value})", soft_wrap=True)
        if c.detail:
            console.print("  " + ", ".join(c.detail), soft_wrap=True)
        for n, step in enumerate(c.first_checks, 1):
            console.print(f"  {n}. {step}", soft_wrap=True, markup=False)
    if breaches:
        sys.exit(1)
    console.print("[green]all runbook thresholds met[/green]")


def links_table(settings: Any) -> Table:
    """Each link to another server and how it is secured (docs/production.md, "Links and TLS")."""
    from config import links

    table = Table(title="Links")
    for col in ("link", "setting", "to", "security", "on"):
        table.add_column(col)
    for link in links.links(settings):
        if link.security == "none":
            continue
        security = link.security + (", this host only" if link.local and not link.verified else "")
        colour = "green" if link.verified else "yellow" if link.local else "red"
        table.add_row(link.name, link.setting, link.target, f"[{colour}]{security}[/{colour}]", link.detail)
    return table
