"""The stores of a fleet of its own: the broker (the run's Redis, or RabbitMQ where one is
reachable), a database and a sandbox.

Each RabbitMQ fleet gets a virtual host of its own (made with ``rabbitmqctl``, deleted after), as
each Redis fleet gets a key prefix of its own: queue names are the contract and cannot vary.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

#: Where the tests look for RabbitMQ (the CI machine has one here).
RABBITMQ_URL = os.environ.get("OFFERS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
BROKERS = ("redis", "rabbitmq")


def rabbitmq_unavailable() -> str | None:
    """Why the RabbitMQ runs cannot happen here, or None."""
    parts = urlsplit(RABBITMQ_URL)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), timeout=2).close()
    except OSError as exc:
        return f"no RabbitMQ reachable at {parts.hostname}:{parts.port or 5672} ({exc.strerror or exc}); set OFFERS_TEST_RABBITMQ_URL"
    if shutil.which("rabbitmqctl") is None:
        return "RabbitMQ is reachable but rabbitmqctl is not on PATH, so no private virtual host can be made"
    return None


def _rabbitmqctl(*args: str) -> None:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {(result.stderr or result.stdout).strip()[-300:]}")


def delivery_limit_policy(vhost: str) -> tuple[str, ...]:
    """The operations guide's ``rabbitmqctl set_policy`` line, with the code's limit."""
    from config.celery import BROKER_DELIVERY_LIMIT

    definition = json.dumps({"delivery-limit": BROKER_DELIVERY_LIMIT})
    return ("set_policy", "-p", vhost, "offers-delivery-limit", r"^offers\.", definition, "--apply-to", "queues")


@contextmanager
def rabbitmq_vhost(name: str) -> Iterator[str]:
    """A fresh virtual host for one fleet; yields its broker URL. Deleted, with its queues, after."""
    parts = urlsplit(RABBITMQ_URL)
    # The operations guide's set-up: quorum as the default queue type, so plain clients are accepted,
    # and RabbitMQ's delivery limit by policy, far above the workers' own.
    _rabbitmqctl("add_vhost", name, "--default-queue-type", "quorum")
    try:
        _rabbitmqctl("set_permissions", "-p", name, parts.username or "guest", ".*", ".*", ".*")
        _rabbitmqctl(*delivery_limit_policy(name))
        yield urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    finally:
        _rabbitmqctl("delete_vhost", name)


def queue_policies(broker_url: str) -> dict[str, str]:
    """The policy RabbitMQ applies to each queue of the virtual host of ``broker_url``."""
    vhost = unquote(urlsplit(broker_url).path.lstrip("/"))
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "-p", vhost, "name", "policy", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(line.split("\t", 1) for line in listed.stdout.splitlines() if "\t" in line)


@contextmanager
def own_sandbox(env: dict[str, str], log_dir: Path) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """A sandbox of the fleet's own, in a process of its own (moto keeps its state in module
    globals, so only a process isolates it), with ``env`` pointed at it. Yields its URLs by
    partner (what ``set_fault`` takes) and that environment."""
    from offers_workers.local.embedded import free_port
    from offers_workers.local.fleet import PROJECT_ROOT, process_env

    urls = {partner: f"http://127.0.0.1:{free_port()}" for partner in ("stripe", "sift", "plaid", "aws", "segment")}
    own_env = {
        **env,
        "OFFERS_STRIPE_API_BASE": urls["stripe"],
        "OFFERS_SIFT_API_URL": urls["sift"],
        "OFFERS_PLAID_HOST": urls["plaid"],
        "OFFERS_AWS_ENDPOINT_URL": urls["aws"],
        "OFFERS_SEGMENT_HOST": urls["segment"],
    }
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "sandbox.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "offers_workers.ops.cli", "sandbox", "serve"],
            env=process_env(own_env),
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        # `sandbox serve` prints each partner's URL once its AWS resources exist.
        while "aws " not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox did not start: {log_path.read_text(errors='replace')[-500:]}")
            time.sleep(0.1)
        yield urls, own_env
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def fleet_stores(
    offers_env: dict[str, str],
    broker: str,
    name: str,
    log_dir: Path,
    database_via: Callable[[str], str] | None = None,
    **overrides: str,
) -> Iterator[tuple[dict[str, str], dict[str, str]]]:
    """A database, a sandbox and (on RabbitMQ) a virtual host of the fleet's own, all removed
    after. Yields the sandbox's URLs by partner and the fleet's environment (``overrides`` on top).
    ``database_via`` maps the new database's URL to the one the fleet uses, migrations included
    (a pooler's: ``PgBouncer.url_for``); it is made and dropped on the server itself."""
    from offers_workers.local.stack import load_sample_policy
    from offers_workers.store import db
    from tests.conftest import RUN_ID, SERVER, _create_database, _drop_database
    from tests.drillkit import settings_for

    created_url, db_name = _create_database(SERVER["url"], suffix=name)
    db_url = database_via(created_url) if database_via else created_url
    try:
        db.migrate(db_url)
        with own_sandbox({**offers_env, "OFFERS_DATABASE_URL": db_url, **overrides}, log_dir) as (box, env):
            load_sample_policy(settings_for(env))
            if broker == "redis":
                yield box, env
            else:
                with rabbitmq_vhost(f"offers-test-{RUN_ID}-{name}") as url:
                    # Results, caches and the beat's lock stay in the run's Redis.
                    yield box, {**env, "OFFERS_BROKER_URL": url, "OFFERS_REDIS_URL": offers_env["OFFERS_BROKER_URL"]}
    finally:
        _drop_database(SERVER["url"], db_name)
