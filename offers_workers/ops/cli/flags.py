"""``flags``: the runbook's feature flags."""

from __future__ import annotations

import os

import click
from rich.table import Table

from offers_workers.ops.cli.common import console, fail, print_json, runtime_or_exit


@click.group()
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
