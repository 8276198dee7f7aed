"""``db``: the database schema."""

from __future__ import annotations

import click

from offers_workers.ops.cli.common import fail, settings_or_exit


@click.group()
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
