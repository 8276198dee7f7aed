"""Broker users per role, made by the operations guide's own recipe lines ("Least privilege: one
credential per role"): on a RabbitMQ virtual host of the test's own, or on a Redis server the test
starts. Everything made here is removed after, also when a test fails.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from tests.brokers import RABBITMQ_URL
from tests.contract.markdown import read_blocks

BLOCKS = read_blocks()
ROLES = ("upstream", "fleet", "ops")
#: The Redis recipe's user names, as written (the test's server is its own: no run id needed).
REDIS_USERS = {"upstream": "offers-upstream", "fleet": "offers-fleet", "ops": "offers-ops", "admin": "offers-admin"}
#: The database the Redis recipe is run for (not 0: the channels carry the number, and SELECT is needed).
REDIS_DB = 3


def recipe(name: str) -> str:
    assert name in BLOCKS.snippets, f"docs/operations.md lost its '{name}' snippet"
    return BLOCKS.snippets[name].text


def password() -> str:
    """A random password that begins with '-', as token_urlsafe's may: the recipes must take it."""
    return "-" + secrets.token_urlsafe(24)


def run_recipe(text: str, env: dict[str, str]) -> None:
    """The recipe's lines in a shell, as an operator pastes them (stops at the first failing line)."""
    from tests.contract.test_readme import stranger_env

    result = subprocess.run(["bash", "-ec", text], capture_output=True, text=True, env=stranger_env(env), timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"the recipe failed ({result.returncode}): {result.stderr[-1500:]}{result.stdout[-500:]}")


# --- RabbitMQ ----------------------------------------------------------------------------------------


def _rabbitmqctl_quietly(*args: str) -> None:
    # Clean-up: a user or virtual host the failed set-up never made is not an error.
    subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=60)


@dataclass(frozen=True)
class RabbitRoles:
    vhost: str
    users: dict[str, str]  # role -> user name
    passwords: dict[str, str]  # role -> password

    def url(self, role: str) -> str:
        parts = urlsplit(RABBITMQ_URL)
        netloc = f"{quote(self.users[role], safe='')}:{quote(self.passwords[role], safe='')}@{parts.hostname}:{parts.port or 5672}"
        return urlunsplit(parts._replace(netloc=netloc, path="/" + quote(self.vhost, safe="")))


@contextmanager
def rabbitmq_roles(run_id: str) -> Iterator[RabbitRoles]:
    """A virtual host and the three users, from the guide's recipes: the users, the virtual host (the
    fleet's user in RABBITMQ_USER), then the upstream's and ops' permissions."""
    roles = RabbitRoles(
        vhost=f"offers-roles-{run_id}",
        users={role: f"offers-{role}-{run_id}" for role in ROLES},
        passwords={role: password() for role in ROLES},
    )
    env = {f"{role.upper()}_PASSWORD": roles.passwords[role] for role in ROLES}
    names = {f"{role.upper()}_USER=offers-{role}": f"{role.upper()}_USER={roles.users[role]}" for role in ROLES}
    vhost = {"VHOST=offers": f"VHOST={roles.vhost}"}
    with ExitStack() as stack:
        for user in roles.users.values():
            stack.callback(_rabbitmqctl_quietly, "delete_user", user)
        stack.callback(_rabbitmqctl_quietly, "delete_vhost", roles.vhost)
        run_recipe(_replaced(recipe("rabbitmq-users"), names), env)
        run_recipe(
            _replaced(
                recipe("rabbitmq-vhost"), {**vhost, "RABBITMQ_USER=fleet": f"RABBITMQ_USER={roles.users['fleet']}"}
            ),
            env,
        )
        roles_names = {k: v for k, v in names.items() if not k.startswith("FLEET_")}
        run_recipe(_replaced(recipe("rabbitmq-roles"), {**vhost, **roles_names}), env)
        yield roles


def _replaced(text: str, placeholders: dict[str, str]) -> str:
    """The reader's edit: each placeholder, which the recipe must still have, replaced."""
    for old, new in placeholders.items():
        assert text.count(old) == 1, f"the recipe no longer has exactly one {old!r}: {text}"
        text = text.replace(old, new)
    return text


def amqp_refusal(url: str, action: Callable[[Any], object]) -> str | None:
    """Run ``action(channel)`` on a fresh channel with publisher confirms, as the given user; the
    broker's refusal ("403 ACCESS_REFUSED - …"), or None if the broker let it through."""
    import pika
    from pika.exceptions import ChannelClosedByBroker

    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        try:
            action(channel)
        except ChannelClosedByBroker as exc:
            return f"{exc.reply_code} {exc.reply_text}"
        return None
    finally:
        if connection.is_open:
            connection.close()


def celery_message(task: str, kwargs: dict[str, Any] | None = None, task_id: str | None = None) -> tuple[str, Any]:
    """A protocol-2 message as the README describes it: its body and its AMQP properties."""
    import json
    import uuid

    import pika

    task_id = task_id or str(uuid.uuid4())
    properties = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=2,
        headers={"task": task, "id": task_id},
    )
    return json.dumps([[], kwargs or {}, {}]), properties


# --- Redis -------------------------------------------------------------------------------------------


def redis_server_unavailable() -> str | None:
    """Why no Redis server of the test's own can be started here, or None."""
    if shutil.which("redis-server") is None:
        return "redis-server is not on PATH, so no Redis with ACL users of the test's own can be started"
    version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=30).stdout
    found = re.search(r"v=(\d+)\.", version)
    if not found or int(found[1]) < 7:
        return f"the ACL recipe needs Redis 7 (key permissions %R~/%W~ and selectors); redis-server says {version.strip()!r}"
    return None


@dataclass(frozen=True)
class AclRedis:
    port: int
    passwords: dict[str, str]  # upstream, fleet, ops, admin
    workdir: Path

    def url(self, role: str, db: int = REDIS_DB) -> str:
        user = quote(REDIS_USERS[role], safe="")
        return f"redis://{user}:{quote(self.passwords[role], safe='')}@127.0.0.1:{self.port}/{db}"

    def client(self, role: str, db: int = REDIS_DB) -> redis.Redis:
        return redis.Redis.from_url(self.url(role, db), socket_timeout=10)

    def refusals(self, username: str) -> list[dict[str, Any]]:
        """What the server refused ``username`` since start-up (its ACL LOG)."""
        admin = self.client("admin")
        try:
            return [entry for entry in admin.acl_log(count=1000) if entry.get("username") == username]
        finally:
            admin.close()


@contextmanager
def acl_redis(workdir: Path) -> Iterator[AclRedis]:
    """A redis-server on a free loopback port (no persistence, an ACL file of its own) with the
    users of the guide's recipe, run as written against it; stopped after."""
    from offers_workers.local.embedded import free_port

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "users.acl").write_text("")
    port = free_port()
    log = (workdir / "redis.log").open("wb")
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--aclfile",
            str(workdir / "users.acl"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        probe = redis.Redis(port=port, socket_timeout=2)
        deadline = time.monotonic() + 30
        while True:
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start: {(workdir / 'redis.log').read_text()[-500:]}"
                    ) from None
                time.sleep(0.05)
        probe.close()
        passwords = {role: password() for role in REDIS_USERS}
        text = _replaced(
            recipe("redis-acl"),
            {
                "REDIS_URL=redis://localhost:6379": f"REDIS_URL=redis://127.0.0.1:{port}",
                "REDIS_DB=0": f"REDIS_DB={REDIS_DB}",
            },
        )
        run_recipe(text, {f"{role.upper()}_PASSWORD": value for role, value in passwords.items()})
        yield AclRedis(port, passwords, workdir)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def redis_refusal(action: Callable[[], object]) -> str | None:
    """The server's refusal of ``action`` ("NOPERM …"), or None if it was allowed."""
    try:
        action()
    except redis.exceptions.NoPermissionError as exc:
        return f"NOPERM {exc}"
    except redis.exceptions.ResponseError as exc:
        # A script's command refused inside the script comes back as a plain error
        if "can't access" in str(exc) or "no permissions" in str(exc):
            return f"NOPERM {exc}"
        raise
    return None
