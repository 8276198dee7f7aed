"""``synthetic``: the synthetic journey (the runbook's nightly check)."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from offers_workers.ops.cli.common import console, print_json, runtime_or_exit


@click.group()
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
