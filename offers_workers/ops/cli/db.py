"""``db``: the database schema."""

from __future__ import annotations

import click

from offers_workers.ops.cli.common import fail, settings_or_exit


@click.group()
def db() -> None:
    """Database schema."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply pending migrations as the schema's owner, then grant the fleet's role what it needs
    (safe to run twice, and from two processes at once)."""
    from offers_workers.store.db import migrate
    from offers_workers.store.roles import RoleError, grant_runtime_role, login_role, same_database

    settings = settings_or_exit()
    if not settings.database_url:
        fail("invalid configuration: OFFERS_DATABASE_URL is required", 2)
    owner_url = settings.database_owner_url
    if not owner_url:
        if not settings.sandbox:
            fail(
                "invalid configuration: OFFERS_DATABASE_OWNER_URL is required: db migrate runs as the schema's owner,"
                " the fleet as OFFERS_DATABASE_URL's role (or set OFFERS_SANDBOX=1)",
                2,
            )
        owner_url = settings.database_url  # the sandbox's one-role set-up, unless it made two
    if not same_database(owner_url, settings.database_url):
        fail(
            "invalid configuration: OFFERS_DATABASE_OWNER_URL and OFFERS_DATABASE_URL name different databases"
            " (host, port or database name): db migrate would migrate one and grant on it what the fleet uses in the other",
            2,
        )
    runtime_role = settings.db_app_role or login_role(settings.database_url)
    owner_role = login_role(owner_url)
    if runtime_role == owner_role and not settings.sandbox:
        fail(
            f"invalid configuration: OFFERS_DATABASE_URL and OFFERS_DATABASE_OWNER_URL both log in as {owner_role}:"
            " the fleet must not hold the owner's login",
            2,
        )
    applied = migrate(owner_url)
    if runtime_role != owner_role:
        try:
            grant_runtime_role(owner_url, runtime_role)
        except RoleError as exc:
            fail(f"db migrate: {exc}", 2)
        click.echo(f"{runtime_role} may run the fleet; the audit trail it may append to and read, nothing more")
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("database is up to date")
