"""Local tooling: the partner sandbox (``sandbox serve``, ``sandbox faults``), ``dev``, ``demo`` and ``bench``."""

from __future__ import annotations

import os
import signal
import sys
import time
from contextlib import ExitStack

import click
import psycopg
from rich.console import Console

from config.settings import ConfigError, get_settings
from offers_workers.ops.cli.common import console, err_console, fail, print_json, settings_or_exit
from offers_workers.partners.table import PARTNER_NAMES


@click.group()
def sandbox() -> None:
    """Local partner sandbox (Stripe, Sift, Plaid, AWS via moto)."""


@sandbox.command("serve")
def sandbox_serve() -> None:
    """Serve every sandbox partner on its default port until Ctrl-C."""
    from offers_workers.local.sandbox import serve

    serve(settings_or_exit())


def _stop_on_sigterm() -> None:
    # Turn SIGTERM into KeyboardInterrupt so `finally` blocks stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))


@sandbox.group("faults")
def sandbox_faults() -> None:
    """Partner outage drills: faults seen by every process using the sandbox."""


@sandbox_faults.command("set")
@click.argument("partner", type=click.Choice(PARTNER_NAMES))
@click.option("--status", type=click.IntRange(400, 599), help="HTTP status to answer with.")
@click.option("--rate", default=1.0, show_default=True, type=click.FloatRange(0, 1), help="Share of requests hit.")
@click.option(
    "--latency-ms", default=0, show_default=True, type=click.IntRange(0, 120_000), help="Delay before answering."
)
def sandbox_faults_set(partner: str, status: int | None, rate: float, latency_ms: int) -> None:
    """Inject a fault into PARTNER's sandbox."""
    from offers_workers.local.sandbox import set_fault

    if status is None and latency_ms == 0:
        raise click.UsageError("give --status and/or --latency-ms")
    try:
        set_fault(settings_or_exit(), partner, status=status, rate=rate, latency_ms=latency_ms)
    except OSError as exc:
        fail(f"sandbox not reachable: {exc}", 1)
    click.echo(f"{partner}: status={status} rate={rate} latency_ms={latency_ms}")


@sandbox_faults.command("clear")
@click.argument("partner", required=False, type=click.Choice(PARTNER_NAMES))
def sandbox_faults_clear(partner: str | None) -> None:
    """Clear PARTNER's fault, or every partner's."""
    from offers_workers.local.sandbox import clear_faults

    try:
        clear_faults(settings_or_exit(), partner)
    except OSError as exc:
        fail(f"sandbox not reachable: {exc}", 1)
    click.echo(f"cleared faults of {partner or 'every partner'}")


@click.command()
def dev() -> None:
    """Everything in the foreground: stores, sandbox, every Procfile process. Ctrl-C stops it all."""
    from offers_workers.local.stack import Stack
    from offers_workers.logs import masked_url

    _stop_on_sigterm()
    os.environ.setdefault("OFFERS_SANDBOX", "1")  # dev talks to the sandbox it starts
    stack = Stack(settings_or_exit())
    try:
        settings = stack.start()
        console.print(
            f"[green]fleet running[/green]: {', '.join(stack.running.processes)}; logs in {stack.running.log_dir}"
        )
        # Shown for a person to copy into another shell: never with its password.
        console.print(
            f"OFFERS_DATABASE_URL={masked_url(settings.database_url)}\nOFFERS_BROKER_URL={masked_url(settings.broker_url)}"
        )
        while True:
            dead = stack.running.dead()
            if dead:
                fail(f"process {', '.join(dead)} exited; see {stack.running.log_dir}")
            time.sleep(1)
    except KeyboardInterrupt:
        console.print("stopping…")
    finally:
        stack.stop()


@click.command()
@click.option("--offers", "count", default=200, show_default=True, type=click.IntRange(1, 100_000))
@click.option(
    "--timeout",
    default=300,
    show_default=True,
    type=click.IntRange(10, 3600),
    help="Seconds to wait for the offers to settle.",
)
def demo(count: int, timeout: int) -> None:
    """Start the fleet, push sample offers through every path, print a report, stop everything."""
    from offers_workers.local import demo as demo_run
    from offers_workers.local.stack import started_stack

    _stop_on_sigterm()
    os.environ.setdefault("OFFERS_SANDBOX", "1")  # the demo talks to the sandbox it starts
    try:
        with started_stack(settings_or_exit(), console, what="demo") as running:
            result = demo_run.run(
                running.rt,
                lambda m: running.app.send_task("offers.submit", kwargs={"offer": m}),
                count,
                console=console,
                timeout=timeout,
            )
            demo_run.print_report(running.rt, result, console)
    except KeyboardInterrupt:
        fail("interrupted", 1)
    except (RuntimeError, ConfigError) as exc:
        fail(str(exc), 1)
    sys.exit(0 if result.ok else 1)


@click.command()
@click.option(
    "--offers",
    default=5000,
    show_default=True,
    type=click.IntRange(1, 1_000_000),
    help="Offers in each saturation phase.",
)
@click.option("--chains", type=click.IntRange(1, 1_000_000), help="Bare chains in the baseline  [default: --offers]")
@click.option(
    "--steady-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Length of the steady-load phase (0: skip).",
)
@click.option(
    "--steady-rate",
    type=click.FloatRange(0, min_open=True),
    help="Offers per second in the steady phase (default: half of the rate with partner latency).",
)
@click.option(
    "--draft-rps",
    default=100.0,
    show_default=True,
    type=click.FloatRange(1, 10_000),
    help="validate_draft requests per second.",
)
@click.option(
    "--draft-seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Length of the validate_draft phase (0: skip).",
)
@click.option(
    "--memory-offers",
    default=20_000,
    show_default=True,
    type=click.IntRange(0),
    help="Offers in all before the last RSS reading.",
)
@click.option(
    "--warmup-offers",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Offers sent before anything is measured (RSS is compared with the reading after them).",
)
@click.option(
    "--timeout", default=900, show_default=True, type=click.IntRange(10), help="Seconds to wait for one phase to drain."
)
@click.option(
    "--message-auth/--no-message-auth",
    default=True,
    show_default=True,
    help="Sign and check messages (docs/production.md, Trust boundary); off measures what that costs.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the figures as JSON on stdout; the table and progress go to stderr."
)
def bench(
    offers: int,
    chains: int | None,
    steady_seconds: float,
    steady_rate: float | None,
    draft_rps: float,
    draft_seconds: float,
    memory_offers: int,
    warmup_offers: int,
    timeout: int,
    message_auth: bool,
    as_json: bool,
) -> None:
    """Start the fleet and sandbox, measure the saga against a bare Celery chain, print one table."""
    from offers_workers.local import bench as bench_run
    from offers_workers.local.stack import started_stack
    from offers_workers.store.db import scratch_database

    _stop_on_sigterm()
    os.environ.setdefault("OFFERS_SANDBOX", "1")  # the bench injects latency into the sandbox it starts
    if not message_auth:
        os.environ["OFFERS_MESSAGE_AUTH"] = "0"  # the fleet it starts inherits it (refused outside the sandbox)
    options = bench_run.BenchOptions(
        offers=offers,
        chains=chains or offers,
        steady_seconds=steady_seconds,
        steady_rate=steady_rate,
        draft_rps=draft_rps,
        draft_seconds=draft_seconds,
        memory_offers=memory_offers,
        warmup_offers=warmup_offers,
        timeout=timeout,
    )
    # With --json, stdout carries the JSON alone: the table, progress and status go to stderr.
    human = err_console if as_json else console
    configured = settings_or_exit()
    cleanup = ExitStack()
    if configured.database_url:
        # A database of its own on the configured server: the run neither reads nor leaves rows there.
        try:
            os.environ["OFFERS_DATABASE_URL"] = cleanup.enter_context(scratch_database(configured.database_url))
        except psycopg.Error as exc:
            fail(f"cannot create the bench's database on the configured server: {exc}", 1)
        get_settings.cache_clear()
        configured = settings_or_exit()
    result = None
    try:
        with cleanup, started_stack(configured, human, what="bench", worker_args=bench_run.WORKER_ARGS) as running:
            runner = bench_run.Bench(running.app, running.rt, dict(running.fleet.processes), human, options)
            result = runner.run()
            # Piped to a file or CI log, the table keeps one line per row instead of wrapping at 80.
            out = human if human.is_terminal else Console(width=170, stderr=as_json)
            title = f"offers-workers bench {runner.run_id}" + ("" if message_auth else ", message authentication off")
            bench_run.report(result, out, title)
            if as_json:
                print_json(result.as_dict())
    except KeyboardInterrupt:
        fail("interrupted", 1)
    except (RuntimeError, ConfigError) as exc:
        fail(str(exc), 1)
    # The figures are for people to read; a lost or failed offer is what makes the bench fail.
    sys.exit(0 if result is not None and not result.problems else 1)
