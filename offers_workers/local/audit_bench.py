"""The audit path's throughput: transitions per second as connections grow, with a network round trip
between the audit insert and its COMMIT, on the locked chain trigger (``before``: migrations through
0009) and on the schema as it is now (``after``: every migration).

Run with ``python -m offers_workers.local.audit_bench`` (``make bench-audit``). It is not an
``offers-workers`` command: it needs pgbench and pgserver, which a production host has neither of, and
it starts no fleet. pgbench runs a script of ``store/pgbench/`` for a fixed time per cell against a
private Postgres cluster the bench starts (the shared server's ``max_connections`` is too small for
128 clients), in two databases of its own. After the ``after`` cells the chain is sealed (``audit
seal``, when the CLI has it) and verified (``audit verify-chain``), both as an operator runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from typing import Any

import click
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

#: The last migration whose chain trigger takes the fleet-wide advisory lock (issue 19).
LOCKED_THROUGH = 9
#: Offers the transition variant moves (random picks rarely collide, as distinct offers in a fleet).
SEED_OFFERS = 10_000
#: Connections the bench's cluster allows beyond its largest cell (pgbench, migrations, the CLI).
SPARE_CONNECTIONS = 40
PGBENCH_MISSING = (
    "pgbench not found on PATH or in `pg_config --bindir`: install the Debian package postgresql-client "
    "(or postgresql-contrib)"
)


class BenchError(RuntimeError):
    """A step of the bench failed; its message is one line for the operator."""


def find_pgbench() -> str:
    """pgbench on PATH, else beside the server binaries ``pg_config`` names."""
    found = shutil.which("pgbench")
    if found:
        return found
    pg_config = shutil.which("pg_config")
    if pg_config:
        bindir = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()
        candidate = os.path.join(bindir, "pgbench")
        if bindir and os.access(candidate, os.X_OK):
            return candidate
    raise BenchError(PGBENCH_MISSING)


def pgbench_missing() -> str | None:
    """Why the bench cannot run here, or None (for tests to skip with)."""
    try:
        find_pgbench()
    except BenchError as exc:
        return str(exc)
    return None


@dataclass
class Cell:
    variant: str
    schema: str  # "before" or "after"
    clients: int
    rtt_ms: float
    tps: float
    transactions: int
    failed: int
    latency_ms: float | None
    #: 1-minute load average as the cell started (the machine may be shared).
    load1: float
    #: ``after`` with the sealer running: rows it linked during the cell, and rows unsealed at its end.
    sealed_rows: int | None = None
    sealer_busy_s: float | None = None
    unsealed_at_end: int | None = None


@dataclass
class Options:
    clients: tuple[int, ...] = (8, 32, 128)
    rtt_ms: tuple[float, ...] = (0.0, 0.5, 2.0)
    seconds: float = 10.0
    variants: tuple[str, ...] = ("insert", "transition")
    #: Seconds between the sealer's steps during ``after`` cells, as the beat's ``offers.seal_audit``
    #: runs (OFFERS_AUDIT_SEAL_INTERVAL_SECONDS); None: no sealer while measuring.
    seal_interval: float | None = 1.0


@dataclass
class Result:
    options: Options
    cells: list[Cell] = field(default_factory=list)
    #: The schema the ``after`` cells ran on: the newest migration, or None when it is still 0009.
    after_schema: str | None = None
    server: dict[str, Any] = field(default_factory=dict)
    pgbench: str = ""
    seal: dict[str, Any] | None = None
    #: audit_events on disk with its indexes, per row, after the run (sealed rows: their dead versions too).
    audit_bytes_per_row: float | None = None
    verify_chain: dict[str, Any] | None = None
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    cpus: int = 0
    problems: list[str] = field(default_factory=list)

    def sealer_summary(self) -> dict[str, Any] | None:
        """What the sealer linked while the ``after`` cells ran, and how fast it links when it works."""
        cells = [c for c in self.cells if c.sealed_rows is not None]
        if not cells:
            return None
        rows, busy = sum(c.sealed_rows or 0 for c in cells), sum(c.sealer_busy_s or 0 for c in cells)
        return {"rows": rows, "busy_s": round(busy, 2), "rows_per_busy_s": round(rows / busy) if busy else None}

    def as_dict(self) -> dict[str, Any]:
        return {
            "options": asdict(self.options),
            "machine": {"cpus": self.cpus, "load_start": self.load_start, "load_end": self.load_end},
            "server": self.server,
            "pgbench": self.pgbench,
            "before_schema": f"migrations through {LOCKED_THROUGH:04d}",
            "after_schema": self.after_schema,
            "cells": [asdict(c) for c in self.cells],
            "sealer_during_cells": self.sealer_summary(),
            "seal": self.seal,
            "audit_bytes_per_row": self.audit_bytes_per_row,
            "verify_chain": self.verify_chain,
            "problems": self.problems,
        }


_PGBENCH_FIGURES = {
    "tps": re.compile(r"^tps = ([\d.]+)", re.M),
    "transactions": re.compile(r"^number of transactions actually processed: (\d+)", re.M),
    "failed": re.compile(r"^number of failed transactions: (\d+)", re.M),
    "latency_ms": re.compile(r"^latency average = ([\d.]+) ms", re.M),
}


def parse_pgbench(output: str) -> dict[str, float | None]:
    """pgbench's summary figures (``failed`` appears from pgbench 15 on)."""
    found: dict[str, float | None] = {}
    for name, pattern in _PGBENCH_FIGURES.items():
        match = pattern.search(output)
        found[name] = float(match[1]) if match else None
    if found["tps"] is None:
        raise BenchError(f"pgbench printed no tps: {output.strip()[-300:]}")
    return found


def run_pgbench(pgbench: str, url: str, variant: str, schema: str, clients: int, rtt_ms: float, seconds: float) -> Cell:
    from offers_workers.store.benchmarks import script_path

    load1 = os.getloadavg()[0]
    command = [
        pgbench,
        "--no-vacuum",  # no pgbench_* tables: the script is ours
        "--protocol=extended",  # as psycopg speaks without server-side prepared statements (store.db.connect)
        f"--client={clients}",
        f"--jobs={min(clients, os.cpu_count() or 1)}",
        f"--time={max(1, round(seconds))}",
        f"--define=rtt_us={round(rtt_ms * 1000)}",
        f"--define=offers={SEED_OFFERS}",
        f"--file={script_path(variant)}",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise BenchError(f"pgbench ({variant}, {schema}, {clients} clients) failed: {done.stderr.strip()[-300:]}")
    figures = parse_pgbench(done.stdout)
    return Cell(
        variant=variant,
        schema=schema,
        clients=clients,
        rtt_ms=rtt_ms,
        tps=round(figures["tps"] or 0.0, 1),
        transactions=int(figures["transactions"] or 0),
        failed=int(figures["failed"] or 0),
        latency_ms=figures["latency_ms"],
        load1=round(load1, 2),
    )


class Sealer:
    """The beat's sealing job in a thread (``store.audit_trail.seal_step`` every ``interval``), so
    the ``after`` cells pay for linking the chain while they write, as a fleet does."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.linked = 0
        #: Seconds spent in steps that linked rows: linked / busy_s is what one sealer can link per second.
        self.busy_s = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-sealer", daemon=True)

    def _run(self) -> None:
        from psycopg.rows import dict_row

        from offers_workers.store import audit_trail
        from offers_workers.store.db import connect

        try:
            with connect(self.url, row_factory=dict_row) as conn:
                while not self._stop.wait(self.interval):
                    started = time.perf_counter()
                    step = audit_trail.seal_step(conn)
                    conn.commit()
                    if step is not None and step.linked:
                        self.linked += step.linked
                        self.busy_s += time.perf_counter() - started
        except BaseException as exc:  # reported by stop(): a thread's exception is otherwise lost
            self.error = exc

    def __enter__(self) -> Sealer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def unsealed_rows(url: str) -> int:
    from psycopg.rows import dict_row

    from offers_workers.store import audit_trail
    from offers_workers.store.db import connect

    with connect(url, row_factory=dict_row) as conn:
        return audit_trail.seal_lag(conn).unsealed_rows


def cli_command(*args: str, url: str, timeout: float = 1800) -> tuple[int, str, float]:
    """An ``offers-workers`` command against ``url``, as an operator runs it: exit code, output, seconds."""
    # The sandbox's partner settings: these commands call no partner, but the settings require some.
    env = {"OFFERS_SANDBOX": "1", **os.environ, "OFFERS_DATABASE_URL": url}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "offers_workers.ops.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    return done.returncode, (done.stdout + done.stderr).strip(), time.monotonic() - started


def cli_has(group: str, command: str) -> bool:
    from offers_workers.ops.cli import main

    found = main.commands.get(group)
    return isinstance(found, click.Group) and command in found.commands


def seal_and_verify(url: str, result: Result) -> None:
    """Seal the ``after`` trail until caught up (when the CLI can), then verify the whole chain."""
    from offers_workers.store.benchmarks import audit_row_count

    rows = audit_row_count(url)
    if cli_has("audit", "seal"):
        # Everything written so far, however long linking it takes.
        code, output, seconds = cli_command("audit", "seal", "--timeout", "1800", url=url)
        result.seal = {"exit_code": code, "rows": rows, "seconds": round(seconds, 2), "output": output[-500:]}
        if code != 0:
            result.problems.append(f"audit seal exited {code}: {output[-200:]}")
    else:
        result.seal = {"exit_code": None, "rows": rows, "output": "offers-workers has no `audit seal` yet: not run"}
    code, output, seconds = cli_command("audit", "verify-chain", url=url)
    result.verify_chain = {"exit_code": code, "ok": code == 0, "seconds": round(seconds, 2), "output": output[-500:]}
    if code != 0:
        result.problems.append(f"audit verify-chain exited {code}: {output[-200:]}")


def _loads() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def newest_migration() -> tuple[int, str]:
    from offers_workers.store.db import migrations

    last = migrations()[-1]
    return last.version, f"{last.version:04d}_{last.name}"


def run(options: Options, console: Console) -> Result:
    from offers_workers.local.embedded import scratch_cluster
    from offers_workers.store import benchmarks
    from offers_workers.store.db import migrate, scratch_database

    pgbench = find_pgbench()
    result = Result(options, cpus=os.cpu_count() or 0, load_start=_loads())
    result.pgbench = subprocess.run([pgbench, "--version"], capture_output=True, text=True).stdout.strip()
    version, name = newest_migration()
    schemas = ["before"]
    if version > LOCKED_THROUGH:
        schemas.append("after")
        result.after_schema = f"migrations through {name}"
    else:
        result.problems.append(f"no migration after {LOCKED_THROUGH:04d} yet: only `before` measured")
    max_connections = max(200, max(options.clients) + SPARE_CONNECTIONS)
    with ExitStack() as stack:
        console.print(f"starting a private Postgres cluster (max_connections {max_connections})")
        server = stack.enter_context(scratch_cluster({"max_connections": str(max_connections)}))
        result.server = benchmarks.server_facts(server)
        urls: dict[str, str] = {}
        for schema in schemas:
            urls[schema] = stack.enter_context(scratch_database(server))
            migrate(urls[schema], through=LOCKED_THROUGH if schema == "before" else None)
            if "transition" in options.variants:
                benchmarks.seed_offers(urls[schema], SEED_OFFERS)
        # Before and after side by side for each cell, so drifting load on the machine hits both alike.
        plan = [
            (variant, clients, rtt, schema)
            for variant in options.variants
            for clients in options.clients
            for rtt in options.rtt_ms
            for schema in schemas
        ]
        progress = Progress(
            TextColumn("[bold]{task.description:<40}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        with progress:
            bar = progress.add_task("cells", total=len(plan))
            for variant, clients, rtt, schema in plan:
                progress.update(bar, description=f"{variant}, {clients} clients, {rtt:g} ms, {schema}")
                benchmarks.checkpoint(urls[schema])
                if schema == "after" and options.seal_interval:
                    with Sealer(urls[schema], options.seal_interval) as sealer:
                        cell = run_pgbench(pgbench, urls[schema], variant, schema, clients, rtt, options.seconds)
                    if sealer.error is not None:
                        raise BenchError(f"the sealer failed: {sealer.error}")
                    cell.sealed_rows, cell.sealer_busy_s = sealer.linked, round(sealer.busy_s, 3)
                    cell.unsealed_at_end = unsealed_rows(urls[schema])
                else:
                    cell = run_pgbench(pgbench, urls[schema], variant, schema, clients, rtt, options.seconds)
                result.cells.append(cell)
                progress.advance(bar)
        # The chain must hold after the run: the locked trigger's by construction, the sealer's once sealed.
        with console.status("sealing and verifying the audit chain"):
            seal_and_verify(urls[schemas[-1]], result)
            result.audit_bytes_per_row = benchmarks.audit_bytes_per_row(urls[schemas[-1]])
    result.load_end = _loads()
    return result


# -- the report --------------------------------------------------------------------------------------


def report(result: Result, console: Console) -> None:
    o = result.options
    schemas = ["before", "after"] if result.after_schema else ["before"]
    by_key = {(c.variant, c.schema, c.clients, c.rtt_ms): c for c in result.cells}
    titles = {
        "insert": "one audit insert per transaction",
        "transition": "a transition: the offer's UPDATE and its audit insert, one statement",
    }
    for variant in o.variants:
        table = Table(title=f"Audit path, {titles[variant]}: transactions/s (pgbench tps, {o.seconds:g} s per cell)")
        table.add_column("clients", justify="right")
        for rtt in o.rtt_ms:
            for schema in schemas:
                table.add_column(f"{rtt:g} ms {schema}", justify="right")
        table.add_column("load 1 min", justify="right")
        for clients in o.clients:
            row = [str(clients)]
            loads = []
            for rtt in o.rtt_ms:
                before = by_key.get((variant, "before", clients, rtt))
                for schema in schemas:
                    cell = by_key.get((variant, schema, clients, rtt))
                    if cell is None:
                        row.append("-")
                        continue
                    loads.append(cell.load1)
                    text = f"{cell.tps:,.0f}"
                    notes = []
                    if schema == "after" and before and before.tps:
                        notes.append(f"×{cell.tps / before.tps:.1f}")
                    if cell.unsealed_at_end is not None and cell.tps:
                        # Rows left unsealed, in seconds of writing: about two sealer intervals is keeping up.
                        notes.append(f"unsealed {cell.unsealed_at_end / cell.tps:.1f} s")
                    if notes:
                        text += f" ({', '.join(notes)})"
                    if cell.failed:
                        text += f" [red]{cell.failed} failed[/red]"
                    row.append(text)
            row.append(f"{min(loads):.1f}–{max(loads):.1f}" if loads else "-")
            table.add_row(*row)
        console.print(table)
    console.print(
        f"before = locked chain trigger (migrations through {LOCKED_THROUGH:04d}); "
        f"after = {result.after_schema or 'not measured'}"
        + (
            f", the beat's sealer running every {o.seal_interval:g} s (unsealed: rows left at the cell's end, "
            "in seconds of its writes)"
            if o.seal_interval and result.after_schema
            else ""
        )
        + "; the round trip is slept between the insert and COMMIT"
    )
    server = result.server
    console.print(
        f"Postgres {server.get('version', '?')} (private cluster: max_connections {server.get('max_connections')}, "
        f"shared_buffers {server.get('shared_buffers')}, fsync {server.get('fsync')}, "
        f"synchronous_commit {server.get('synchronous_commit')}); {result.pgbench}; {result.cpus} CPUs; "
        f"load {result.load_start[0]:.2f} at start, {result.load_end[0]:.2f} at the end"
    )
    sealer = result.sealer_summary()
    if sealer:
        console.print(
            f"sealer during the after cells: {sealer['rows']:,} rows linked in {sealer['busy_s']:.1f} s of its steps "
            f"({sealer['rows_per_busy_s'] or 0:,} rows/s while linking, under the cells' load)"
        )
    if result.seal is not None:
        seal = result.seal
        if seal.get("exit_code") is None:
            console.print(f"seal: {seal['output']} ({seal['rows']:,} rows)")
        else:
            console.print(f"audit seal (the rest, process start included, {seal['seconds']:.1f} s): {seal['output']}")
    if result.audit_bytes_per_row:
        console.print(f"audit_events on disk: {result.audit_bytes_per_row:,.0f} bytes per row with its indexes")
    if result.verify_chain is not None:
        check = result.verify_chain
        colour = "green" if check["ok"] else "red"
        said = "; ".join(check["output"].splitlines())
        console.print(f"verify-chain: [{colour}]{said}[/{colour}]", highlight=False)
    for problem in result.problems:
        console.print(f"[yellow]- {problem}[/yellow]")


def _numbers(kind: type, text: str) -> tuple[Any, ...]:
    try:
        values = tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(f"a comma-separated list of numbers, not {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise click.BadParameter(f"a comma-separated list of numbers ≥ 0, not {text!r}")
    return values


@click.command()
@click.option("--clients", default="8,32,128", show_default=True, help="Connections per cell, comma-separated.")
@click.option("--rtt-ms", default="0,0.5,2", show_default=True, help="Round trip before COMMIT (ms), comma-separated.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(1), help="Length of each cell.")
@click.option(
    "--variant",
    "variants",
    type=click.Choice(["insert", "transition"]),
    multiple=True,
    help="insert: the audit row alone; transition: the offer's UPDATE with it. Default: both.",
)
@click.option(
    "--seal-interval",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds between sealer steps during the after cells, as the beat's (0: no sealer while measuring).",
)
@click.option("--quick", is_flag=True, help="A smoke run: 8 clients, 0 ms, the insert variant, 2 s per cell.")
@click.option("--json", "as_json", is_flag=True, help="JSON alone on stdout; the table and progress go to stderr.")
def main(
    clients: str,
    rtt_ms: str,
    seconds: float,
    variants: tuple[str, ...],
    seal_interval: float,
    quick: bool,
    as_json: bool,
) -> None:
    """Transactions per second through the audit path: locked chain trigger (before) against now (after)."""
    # SIGTERM unwinds like Ctrl-C, so the cluster is stopped and its directory removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    options = Options(
        clients=_numbers(int, clients),
        rtt_ms=_numbers(float, rtt_ms),
        seconds=seconds,
        variants=variants or (),
        seal_interval=seal_interval or None,
    )
    if not options.variants:
        options.variants = ("insert", "transition")
    if quick:
        options = Options(
            clients=(8,), rtt_ms=(0.0,), seconds=2.0, variants=("insert",), seal_interval=seal_interval or None
        )
    human = Console(stderr=True) if as_json else Console()
    try:
        result = run(options, human)
    except (BenchError, RuntimeError, psycopg.Error) as exc:
        click.echo(f"audit bench: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("audit bench: interrupted", err=True)
        sys.exit(1)
    # Piped to a file, the table keeps one line per row instead of wrapping at 80 columns.
    out = human if human.is_terminal else Console(width=200, stderr=as_json)
    report(result, out)
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    chain_ok = result.verify_chain is not None and result.verify_chain["ok"]
    seal_ok = result.seal is None or result.seal.get("exit_code") in (None, 0)
    sys.exit(0 if chain_ok and seal_ok else 1)


if __name__ == "__main__":
    main()
