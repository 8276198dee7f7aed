"""The brokers the core scenarios run on: the run's Redis, and RabbitMQ where one is reachable.

Each RabbitMQ fleet gets a virtual host of its own (made with ``rabbitmqctl``, deleted after), as
each Redis fleet gets a key prefix of its own: queue names are the contract and cannot vary.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

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


@contextmanager
def rabbitmq_vhost(name: str) -> Iterator[str]:
    """A fresh virtual host for one fleet; yields its broker URL. Deleted, with its queues, after."""
    parts = urlsplit(RABBITMQ_URL)
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, parts.username or "guest", ".*", ".*", ".*")
        yield urlunsplit(parts._replace(path="/" + quote(name, safe="")))
    finally:
        _rabbitmqctl("delete_vhost", name)


@contextmanager
def own_sandbox(env: dict[str, str]) -> Iterator[tuple[Any, dict[str, str]]]:
    """A sandbox of the fleet's own (its AWS resources made), and ``env`` pointed at it: what one
    fleet's traffic and faults leave behind (moto's queues and rules) stays out of the others'."""
    from offers_workers.sandbox import Sandbox
    from tests.drillkit import settings_for

    box = Sandbox(ports=0)
    box.start(settings_for(env))
    try:
        yield box, {**env, **box.settings_env()}
    finally:
        box.stop()
