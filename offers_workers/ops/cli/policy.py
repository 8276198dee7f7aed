"""``policy``: maker policies and listings loaded from a file."""

from __future__ import annotations

from pathlib import Path

import click

from offers_workers.ops.cli.common import fail, runtime_or_exit
from offers_workers.store import audit_trail


@click.group()
def policy() -> None:
    """Maker policies and listings."""


@policy.command("load")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
def policy_load(file: Path) -> None:
    """Load makers and listings from a YAML or JSON FILE; caches are invalidated at once."""
    from offers_workers.domain.policy import PolicyFileError
    from offers_workers.store.policy import read_policy_file

    try:
        policy_file = read_policy_file(file)
    except PolicyFileError as exc:
        fail(str(exc), 2)
    rt = runtime_or_exit()
    with rt.db.transaction() as conn:
        makers, listings = rt.policies.load(conn, policy_file)
        audit_trail.record_audit(
            conn, None, "policy_loaded", actor="cli", data={"file": file.name, "makers": makers, "listings": listings}
        )
    rt.policies.invalidate()
    click.echo(f"loaded {makers} makers and {listings} listings from {file.name}")
