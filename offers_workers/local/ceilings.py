"""Ceilings for the scale model (docs/operations.md, section 8), measured on this machine.

Run with ``python -m offers_workers.local.ceilings`` (``make bench-ceilings``); each part alone with
``--part``:

- **fleet**: one ``offers-workers bench`` run (saga and saga-with-latency phases only) on a private
  Postgres cluster and a private Redis, both started here, so their counters see the fleet alone:
  CPU ms per offer of each process type (the bench's own table), and per offer the Postgres
  transactions and CPU, the Redis commands (by command) and CPU.
- **redis**: ``redis-benchmark`` against a private redis-server, 50 clients, no pipelining (each of
  the fleet's commands is a round trip): requests/s of the commands an offer mostly costs.
- **rabbitmq**: persistent messages through a quorum queue with publisher confirms and manual acks
  (kombu, as the fleet's RabbitMQ configuration does), publishers and consumers in processes of
  their own, on a private virtual host made with ``rabbitmqctl`` and deleted after.

Figures are printed, not asserted. Ceilings per offer divide these by the fleet's per-offer counts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import psutil
import redis
from rich.console import Console
from rich.table import Table

#: The commands redis-benchmark measures: the fleet's most frequent ones (see the fleet part's mix).
REDIS_TESTS = "set,get,incr,lpush,rpop,hset,sadd"
REDIS_CLIENTS = 50
#: A Celery task message of the saga is about this large (headers and an offer's kwargs).
MESSAGE_BYTES = 1500
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/"


class CeilingError(RuntimeError):
    """A part could not run here; one line says why."""


def load() -> float:
    return round(os.getloadavg()[0], 2)


# -- fleet: one bench run on stores of its own ---------------------------------------------------------


def _process_tree_cpu(pid: int) -> float:
    """CPU seconds of a process, its exited children (reaped into it) and its live children."""
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:
            continue
        total += c.user + c.system
    return total


def _postmaster_pid(url: str) -> int:
    from offers_workers.store.benchmarks import server_setting

    data_dir = server_setting(url, "data_directory")
    return int((Path(data_dir) / "postmaster.pid").read_text().split()[0])


class TransactionSampler:
    """Transactions ended on a server while a run goes on, summed over its databases, sampled every
    half second: the run's database is dropped at its end, and its statistics with it."""

    def __init__(self, url: str) -> None:
        self.url = url
        #: Counts of the databases there before the run; one created later started from zero.
        self.initial: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="xact-sampler", daemon=True)

    def _run(self) -> None:
        from offers_workers.store.benchmarks import transactions_by_database
        from offers_workers.store.db import connect

        with connect(self.url, autocommit=True) as conn:
            self.initial = transactions_by_database(conn)
            while not self._stop.wait(0.5):
                self.last.update(transactions_by_database(conn))
            self.last.update(transactions_by_database(conn))

    def __enter__(self) -> TransactionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    @property
    def total(self) -> int:
        return sum(n - self.initial.get(datid, 0) for datid, n in self.last.items())


def _redis_counters(client: redis.Redis) -> tuple[dict[str, int], float]:
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    cpu = client.info("cpu")
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def fleet_part(offers: int, console: Console, timeout: float) -> dict[str, Any]:
    from offers_workers.local.embedded import EmbeddedRedis, scratch_cluster
    from offers_workers.store.benchmarks import next_xid

    with tempfile.TemporaryDirectory(prefix="offers-ceilings-") as tmp, scratch_cluster() as pg:
        rd = EmbeddedRedis(Path(tmp))
        redis_url = rd.start()
        try:
            client = redis.Redis.from_url(redis_url)
            pg_pid = _postmaster_pid(pg)
            xid0, pg_cpu0 = next_xid(pg), _process_tree_cpu(pg_pid)
            calls0, redis_cpu0 = _redis_counters(client)
            load0 = load()
            env = {
                **os.environ,
                "OFFERS_DATABASE_URL": pg,
                "OFFERS_BROKER_URL": redis_url,
                "OFFERS_STATE_DIR": str(Path(tmp) / "state"),
            }
            env.pop("OFFERS_REDIS_URL", None)
            command = [
                *("offers-workers", "bench", "--offers", str(offers), "--chains", "1"),
                *("--steady-seconds", "0", "--draft-seconds", "0", "--memory-offers", "0"),
                *("--warmup-offers", "100", "--json"),
            ]
            console.print(f"fleet: {' '.join(command)} (private Postgres and Redis; load {load0})")
            started = time.monotonic()
            with TransactionSampler(pg) as transactions:
                done = subprocess.run(
                    [sys.executable, "-m", "offers_workers.ops.cli", *command[1:]],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=timeout,
                )
            seconds = time.monotonic() - started
            if done.returncode != 0 or not done.stdout.strip().startswith("{"):
                raise CeilingError(f"offers-workers bench exited {done.returncode}: {done.stderr.strip()[-400:]}")
            bench = json.loads(done.stdout)
            xid1, pg_cpu1 = next_xid(pg), _process_tree_cpu(pg_pid)
            calls1, redis_cpu1 = _redis_counters(client)
        finally:
            rd.stop()
    sent = max(1, int(bench["offers_sent"]))
    per_command = {
        name: round((calls1.get(name, 0) - calls0.get(name, 0)) / sent, 2)
        for name in sorted(calls1, key=lambda n: calls0.get(n, 0) - calls1[n])
        if calls1.get(name, 0) - calls0.get(name, 0) > 0
    }
    # The offers-workers bench process's own reads (INFO here) are a handful against thousands of offers.
    return {
        "offers_sent": sent,
        "seconds": round(seconds, 1),
        "load_start": load0,
        "load_end": load(),
        "saga_offers_per_s": bench["saga"]["per_s"],
        "realistic_offers_per_s": bench["realistic"]["per_s"],
        "cpu_ms_per_offer": bench["cpu_ms_per_offer"],
        "postgres_transactions_per_offer": round(transactions.total / sent, 2),
        "postgres_write_transactions_per_offer": round((xid1 - xid0) / sent, 2),
        "postgres_cpu_ms_per_offer": round((pg_cpu1 - pg_cpu0) * 1000 / sent, 2),
        "redis_commands_per_offer": round(sum(per_command.values()), 1),
        "redis_commands_by_name": per_command,
        "redis_cpu_ms_per_offer": round((redis_cpu1 - redis_cpu0) * 1000 / sent, 3),
        "problems": bench["problems"],
    }


# -- redis: redis-benchmark against a private server ---------------------------------------------------

_CSV_ROW = re.compile(r'^"([^"]+)","([\d.]+)"', re.M)


def redis_part(console: Console, requests: int) -> dict[str, Any]:
    from offers_workers.local.embedded import EmbeddedRedis

    tool = shutil.which("redis-benchmark")
    if tool is None:
        raise CeilingError("redis-benchmark not found on PATH: install the Debian package redis-tools")
    with tempfile.TemporaryDirectory(prefix="offers-ceilings-") as tmp:
        rd = EmbeddedRedis(Path(tmp))
        rd.start()
        try:
            load0 = load()
            console.print(f"redis: redis-benchmark -c {REDIS_CLIENTS} -n {requests} -t {REDIS_TESTS} (load {load0})")
            done = subprocess.run(
                [tool, "-p", str(rd.port), "-c", str(REDIS_CLIENTS), "-n", str(requests), "-t", REDIS_TESTS, "--csv"],
                capture_output=True,
                text=True,
                timeout=600,
            )
        finally:
            rd.stop()
    rates = {name: float(rps) for name, rps in _CSV_ROW.findall(done.stdout)}
    if not rates:
        raise CeilingError(f"redis-benchmark printed no figures: {(done.stderr or done.stdout).strip()[-300:]}")
    return {
        "clients": REDIS_CLIENTS,
        "requests": requests,
        "requests_per_s": rates,
        "median_requests_per_s": round(statistics.median(rates.values())),
        "load_start": load0,
        "load_end": load(),
    }


# -- rabbitmq: kombu through a quorum queue ---------------------------------------------------------


def _rabbitmqctl(*args: str) -> None:
    done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise CeilingError(f"rabbitmqctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-300:]}")


@contextmanager
def private_vhost(base_url: str) -> Iterator[str]:
    """A virtual host of its own on the broker of ``base_url``; yields its URL, deleted afterwards."""
    from kombu.utils.url import url_to_parts

    if shutil.which("rabbitmqctl") is None:
        raise CeilingError("rabbitmqctl not on PATH (the Debian package rabbitmq-server): no private vhost")
    parts = url_to_parts(base_url)
    name = f"offers-ceilings-{secrets.token_hex(3)}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, parts.username or "guest", ".*", ".*", ".*")
        yield f"amqp://{parts.username or 'guest'}:{parts.password or 'guest'}@{parts.hostname or '127.0.0.1'}:{parts.port or 5672}/{quote(name, safe='')}"
    finally:
        _rabbitmqctl("delete_vhost", name)


def _queue(name: str) -> Any:
    from kombu import Exchange, Queue

    return Queue(name, Exchange(""), routing_key=name, durable=True, queue_arguments={"x-queue-type": "quorum"})


def _wait_for_window(ready: Any, go: Any, window: Any) -> tuple[float, float]:
    """Say this process is connected, wait until every one is, and return the measured window."""
    ready.release()
    go.wait()
    return window[0], window[1]


def _publisher(url: str, queue: str, ready: Any, go: Any, window: Any, out: Any) -> None:
    from kombu import Connection

    body = {"kwargs": {"offer": "x" * MESSAGE_BYTES}}
    sent = 0
    # Publisher confirms, as the fleet's RabbitMQ configuration sets them: each publish waits for the broker.
    with Connection(url, transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer(serializer="json")
        producer.publish(body, routing_key=queue, delivery_mode=2)  # connected and confirmed once before the clock
        start_at, stop_at = _wait_for_window(ready, go, window)
        while time.time() < stop_at:
            producer.publish(body, routing_key=queue, delivery_mode=2)
            if time.time() >= start_at:
                sent += 1
    out.put(("sent", sent))


def _consumer(url: str, queue: str, prefetch: int, ready: Any, go: Any, window: Any, out: Any) -> None:
    from kombu import Connection

    acked = 0
    start_at = stop_at = float("inf")

    def on_message(body: Any, message: Any) -> None:
        nonlocal acked
        message.ack()
        if start_at <= time.time() < stop_at:
            acked += 1

    with Connection(url) as conn, conn.Consumer(_queue(queue), callbacks=[on_message], prefetch_count=prefetch):
        start_at, stop_at = _wait_for_window(ready, go, window)
        while time.time() < stop_at:
            try:
                conn.drain_events(timeout=0.5)
            except TimeoutError:
                continue
    out.put(("acked", acked))


def _beam_cpu() -> float | None:
    """CPU seconds of the local RabbitMQ node (beam.smp), if it runs on this machine."""
    total = None
    for proc in psutil.process_iter(["name"]):
        if (proc.info["name"] or "").startswith("beam"):
            try:
                t = proc.cpu_times()
            except psutil.Error:
                continue
            total = (total or 0.0) + t.user + t.system
    return total


def rabbitmq_part(
    console: Console, url: str, seconds: float, publishers: int, consumers: int, prefetch: int
) -> dict[str, Any]:
    from kombu import Connection

    with private_vhost(url) as vhost_url:
        queue = "offers.ceilings"
        with Connection(vhost_url) as conn:
            _queue(queue)(conn.default_channel).declare()
        ctx = multiprocessing.get_context("spawn")
        out, ready, go = ctx.Queue(), ctx.Semaphore(0), ctx.Event()
        window = ctx.Array("d", [0.0, 0.0])
        procs = [
            ctx.Process(target=_consumer, args=(vhost_url, queue, prefetch, ready, go, window, out))
            for _ in range(consumers)
        ]
        procs += [
            ctx.Process(target=_publisher, args=(vhost_url, queue, ready, go, window, out)) for _ in range(publishers)
        ]
        load0 = load()
        console.print(
            f"rabbitmq: {publishers} publishers, {consumers} consumers (prefetch {prefetch}), {seconds:g} s, "
            f"persistent {MESSAGE_BYTES}-byte messages, quorum queue, confirms (load {load0})"
        )
        for p in procs:
            p.start()
        try:
            # The clock starts once every process has connected, and a second later (a warm queue).
            for _ in procs:
                if not ready.acquire(timeout=120):
                    raise CeilingError("rabbitmq: a publisher or consumer did not connect within 120 s")
            window[0] = time.time() + 1
            window[1] = window[0] + seconds
            go.set()
            time.sleep(max(0.0, window[0] - time.time()))
            beam0 = _beam_cpu()
            time.sleep(max(0.0, window[1] - time.time()))
            beam1 = _beam_cpu()
            figures: dict[str, int] = {"sent": 0, "acked": 0}
            for _ in procs:
                kind, n = out.get(timeout=60)
                figures[kind] += n
        finally:
            for p in procs:
                p.join(10)
                if p.is_alive():
                    p.terminate()
    acked_per_s = figures["acked"] / seconds
    beam_ms = None
    if beam0 is not None and beam1 is not None and figures["acked"]:
        beam_ms = round((beam1 - beam0) * 1000 / figures["acked"], 3)
    return {
        "publishers": publishers,
        "consumers": consumers,
        "prefetch": prefetch,
        "seconds": seconds,
        "message_bytes": MESSAGE_BYTES,
        "published_per_s": round(figures["sent"] / seconds),
        "consumed_per_s": round(acked_per_s),
        "broker_cpu_ms_per_message": beam_ms,
        "load_start": load0,
        "load_end": load(),
    }


# -- the report ----------------------------------------------------------------------------------------


def report(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Ceilings on this machine ({os.cpu_count()} CPUs)")
    for col in ("what", "measured", "load 1 min"):
        table.add_column(col, justify="left" if col == "what" else "right")
    fleet = result.get("fleet")
    if fleet:
        loads = f"{fleet['load_start']}–{fleet['load_end']}"
        table.add_row("fleet: offers sent (warm-up, saga, with latency)", f"{fleet['offers_sent']:,}", loads)
        table.add_row(
            "  saga / with partner latency, offers/s",
            f"{fleet['saga_offers_per_s']} / {fleet['realistic_offers_per_s']}",
            "",
        )
        for label, ms in fleet["cpu_ms_per_offer"].items():
            table.add_row(f"  CPU ms per offer (saga phase): {label}", f"{ms:.1f}", "")
        table.add_row(
            "  Postgres transactions per offer (of which writes)",
            f"{fleet['postgres_transactions_per_offer']:.1f} ({fleet['postgres_write_transactions_per_offer']:.1f})",
            "",
        )
        table.add_row("  Postgres CPU ms per offer (private cluster)", f"{fleet['postgres_cpu_ms_per_offer']:.1f}", "")
        top = ", ".join(f"{k} {v:g}" for k, v in list(fleet["redis_commands_by_name"].items())[:8])
        table.add_row("  Redis commands per offer", f"{fleet['redis_commands_per_offer']:.1f} ({top})", "")
        table.add_row("  Redis CPU ms per offer", f"{fleet['redis_cpu_ms_per_offer']:.3f}", "")
    rd = result.get("redis")
    if rd:
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in rd["requests_per_s"].items())
        table.add_row(
            f"redis-benchmark, {rd['clients']} clients, requests/s",
            f"median {rd['median_requests_per_s']:,} ({rates})",
            f"{rd['load_start']}–{rd['load_end']}",
        )
    rb = result.get("rabbitmq")
    if rb:
        table.add_row(
            f"RabbitMQ quorum queue, confirms, {rb['publishers']}+{rb['consumers']} processes, messages/s",
            f"published {rb['published_per_s']:,}, consumed {rb['consumed_per_s']:,}; broker CPU "
            f"{rb['broker_cpu_ms_per_message']} ms/message",
            f"{rb['load_start']}–{rb['load_end']}",
        )
    console.print(table)
    for part, why in result.get("skipped", {}).items():
        console.print(f"[yellow]- {part}: {why}[/yellow]")


PARTS = ("fleet", "redis", "rabbitmq")


@click.command()
@click.option("--part", "parts", type=click.Choice(PARTS), multiple=True, help="Run only these parts (default: all).")
@click.option(
    "--offers", default=1000, show_default=True, type=click.IntRange(10), help="fleet: offers per bench phase."
)
@click.option("--redis-requests", default=200_000, show_default=True, type=click.IntRange(1000))
@click.option("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL, show_default=True, help="A broker rabbitmqctl manages.")
@click.option("--rabbitmq-seconds", default=15.0, show_default=True, type=click.FloatRange(1))
@click.option("--publishers", default=4, show_default=True, type=click.IntRange(1))
@click.option("--consumers", default=4, show_default=True, type=click.IntRange(1))
@click.option("--prefetch", default=10, show_default=True, type=click.IntRange(1))
@click.option("--quick", is_flag=True, help="A smoke run: 50 offers, 20,000 Redis requests, 3 s of RabbitMQ.")
@click.option("--json", "as_json", is_flag=True, help="JSON alone on stdout; the table goes to stderr.")
def main(
    parts: tuple[str, ...],
    offers: int,
    redis_requests: int,
    rabbitmq_url: str,
    rabbitmq_seconds: float,
    publishers: int,
    consumers: int,
    prefetch: int,
    quick: bool,
    as_json: bool,
) -> None:
    """Measure the fleet's per-offer costs and the Redis and RabbitMQ ceilings on this machine."""
    # SIGTERM unwinds like Ctrl-C, so private servers and the vhost are removed.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    if quick:
        offers, redis_requests, rabbitmq_seconds = 50, 20_000, 3.0
    human = Console(stderr=True) if as_json else Console()
    result: dict[str, Any] = {"cpus": os.cpu_count(), "skipped": {}}
    runs = {
        "fleet": lambda: fleet_part(offers, human, timeout=3600),
        "redis": lambda: redis_part(human, redis_requests),
        "rabbitmq": lambda: rabbitmq_part(human, rabbitmq_url, rabbitmq_seconds, publishers, consumers, prefetch),
    }
    try:
        for part in parts or PARTS:
            try:
                result[part] = runs[part]()
            except CeilingError as exc:
                result["skipped"][part] = str(exc)
    except KeyboardInterrupt:
        click.echo("ceilings: interrupted", err=True)
        sys.exit(1)
    out = human if human.is_terminal else Console(width=200, stderr=as_json)
    report(result, out)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    sys.exit(1 if result["skipped"] else 0)


if __name__ == "__main__":
    main()
