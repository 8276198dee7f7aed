"""``metrics``: the Prometheus endpoint."""

from __future__ import annotations

import click

from offers_workers.ops.cli.common import fail, runtime_or_exit, settings_or_exit


@click.group()
def metrics() -> None:
    """Prometheus metrics."""


@metrics.command("serve")
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; loopback unless a scraper on another host needs it (then this host's address,"
    " with OFFERS_METRICS_TLS_CERT_FILE/_KEY_FILE, or OFFERS_METRICS_ALLOW_PLAINTEXT=1).",
)
@click.option("--port", type=int, help="Default: OFFERS_METRICS_PORT (9464).")
def metrics_serve(host: str, port: int | None) -> None:
    """Serve /metrics until stopped (the Procfile's metrics: process)."""
    from offers_workers import logs
    from offers_workers.ops.metrics import serve
    from offers_workers.ops.metrics_guard import GuardError, guard

    logs.setup()
    # Refused before any connection to Postgres: what would leak is a configuration error (exit 2).
    try:
        guarded = guard(settings_or_exit(), host)
    except GuardError as exc:
        fail(str(exc), 2)
    rt = runtime_or_exit(kind="metrics")
    try:
        serve(rt, host, port if port is not None else rt.settings.metrics_port, guarded)
    except OSError as exc:
        fail(f"cannot serve metrics on {host}:{port or rt.settings.metrics_port}: {exc.strerror}", 1)
    except KeyboardInterrupt:
        pass
