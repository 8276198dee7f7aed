"""Least privilege on the broker (docs/operations.md, "Least privilege: one credential per role"),
on real servers: the guide's recipe lines make one user per role, the Procfile's processes run with
the fleet's, the README's clients with the upstream's, the operator CLI with ops'.

What each credential may do ends in Postgres as designed (submitted, cancelled, answered, replayed);
what it may not do is refused by the broker itself (ACCESS_REFUSED, PRECONDITION_FAILED, NOPERM),
not merely by the workers.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from offers_workers.local.embedded import free_port
from offers_workers.local.fleet import Fleet, ProcessType, read_procfile
from tests.broker_roles import (
    REDIS_DB,
    REDIS_USERS,
    AclRedis,
    RabbitRoles,
    acl_redis,
    amqp_refusal,
    celery_message,
    rabbitmq_roles,
    recipe,
    redis_refusal,
    redis_server_unavailable,
)
from tests.brokers import own_sandbox, rabbitmq_unavailable
from tests.conftest import RUN_ID, SERVER, _create_database, _drop_database, wait_until
from tests.contract.markdown import ROOT
from tests.contract.test_readme import (
    ContractFleet,
    after_app_created,
    run_python,
    snippet,
    stranger_env,
    wait_for_workers,
    with_urls,
)

#: The fleet's queues, as `stats` reports them.
QUEUES = {
    "offers.intake",
    "offers.realtime",
    "offers.validation",
    "offers.payment",
    "offers.risk",
    "offers.auction",
    "offers.audit",
    "offers.events",
    "offers.maintenance",
}


@pytest.fixture(scope="module")
def acl_server(stores: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    """A Redis of the test's own with the guide's ACL users: the Redis fleet's broker, and the
    RabbitMQ fleet's OFFERS_REDIS_URL (results, the fleet's keys, the beat)."""
    if reason := redis_server_unavailable():
        pytest.skip(reason)
    with acl_redis(tmp_path_factory.mktemp("acl-redis")) as server:
        yield server


@dataclass
class RolesFleet:
    """The Procfile's processes on the fleet's credential; ``ops`` is the operator's environment."""

    fleet: ContractFleet  # its settings are the fleet's (the fleet's user in every URL)
    ops: ContractFleet  # the same fleet seen with the ops user's URLs (cli_session runs as ops)
    upstream_broker: str
    upstream_backend: str
    metrics_port: int

    @property
    def workdir(self) -> Path:
        return self.fleet.workdir

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """`offers-workers ARGS` as an operator runs it: with the ops user's URLs."""
        return subprocess.run(
            ["offers-workers", *args],
            capture_output=True,
            text=True,
            cwd=self.workdir,
            env=stranger_env(self.ops.settings),
            timeout=timeout,
        )

    def rejection(self, task_id: str) -> dict[str, object] | None:
        with psycopg.connect(self.fleet.settings["OFFERS_DATABASE_URL"], row_factory=psycopg.rows.dict_row) as conn:
            return conn.execute(
                "SELECT reason, errors FROM intake_rejections WHERE task_id = %s", (task_id,)
            ).fetchone()


@contextmanager
def roles_fleet(
    name: str, log_dir: Path, *, fleet_urls: dict[str, str], ops_urls: dict[str, str], upstream: tuple[str, str]
) -> Iterator[RolesFleet]:
    """The Procfile's release, workers, beat and metrics on a database and sandbox of their own, with
    the given broker (and Redis) URLs of the fleet's user; the sample policy loaded by ops."""
    workdir = log_dir / "work"
    workdir.mkdir(parents=True)
    (workdir / "config").symlink_to(ROOT / "config")
    with ExitStack() as stack:
        db_url, db_name = _create_database(SERVER["url"], suffix=f"roles_{name}")
        stack.callback(_drop_database, SERVER["url"], db_name)
        base = {
            "OFFERS_SANDBOX": "1",
            "OFFERS_DATABASE_URL": db_url,
            "OFFERS_STATE_DIR": str(log_dir / "state"),
            # Retries run out in seconds: the dead-letter rehearsal replays within the test's time.
            "OFFERS_RETRY_DELAY_SCALE": "0.02",
            **fleet_urls,
        }
        _, sandbox_env = stack.enter_context(own_sandbox(base, log_dir / "sandbox"))
        settings = {**base, **sandbox_env, **fleet_urls}
        fleet = stack.enter_context(Fleet(settings, log_dir, inherit_settings=False))
        types = {t.name: t for t in read_procfile()}
        fleet.run_once(types["release"])
        running = RolesFleet(
            fleet=ContractFleet(name, settings, fleet, workdir),
            ops=ContractFleet(name, {**settings, **ops_urls}, fleet, workdir),
            upstream_broker=upstream[0],
            upstream_backend=upstream[1],
            metrics_port=free_port(),
        )
        loaded = running.cli("policy", "load", "config/policy/sample.yaml")
        assert loaded.returncode == 0, loaded.stderr
        workers = [t for t in types.values() if t.is_worker]
        for ptype in [*workers, types["beat"]]:
            fleet.start(ptype)
        fleet.start(types["metrics"], env={"OFFERS_METRICS_PORT": str(running.metrics_port)})
        wait_for_workers(settings["OFFERS_BROKER_URL"], len(workers), fleet)
        yield running


# --- what the upstream's client is, under least privilege -------------------------------------------


def least_privilege(code: str, fragment: str, app: str = "upstream") -> str:
    """A README client with the guide's settings right after its app is created (the README's
    validate-draft calls its app ``client``: the settings go on that app)."""
    return after_app_created(code, fragment.replace("upstream.conf", f"{app}.conf"))


def upstream_sends_submit_cancel_and_validate(f: RolesFleet, fragment: str) -> None:
    # The README's client with the guide's settings submits…
    client = least_privilege(with_urls(snippet("upstream-client").text, broker=f.upstream_broker), fragment)
    sent = run_python(client, f.workdir)
    assert sent.returncode == 0, sent.stderr
    f.fleet.wait_for("off_1001", "submitted")
    # …cancels as the buyer…
    cancel = least_privilege(with_urls(snippet("upstream-cancel").text, broker=f.upstream_broker), fragment)
    cancelled = run_python(cancel, f.workdir)
    assert cancelled.returncode == 0, cancelled.stderr
    f.fleet.wait_for("off_1001", "cancelled")
    # …and reads a draft's answer through the result backend, as the upstream user there too
    validate = with_urls(snippet("validate-draft").text, broker=f.upstream_broker, backend=f.upstream_backend)
    answered = run_python(least_privilege(validate, fragment, app="client"), f.workdir)
    assert answered.returncode == 0, answered.stderr
    assert "'valid': False" in answered.stdout and "'code': 'below_minimum'" in answered.stdout, answered.stdout


def ops_runs_the_cli(f: RolesFleet) -> None:
    # The README's dead-letter rehearsal, typed by an operator with the ops user's URLs: a stage
    # dead-lettered by a partner's outage, then replayed onto its queue once the partner is back
    (f.workdir / "offers.json").write_text(snippet("payload").text)
    outputs = dict(zip(snippet("dlq-rehearsal").lines(), f.ops.cli_session(snippet("dlq-rehearsal")), strict=False))
    assert "replayed 1 of 1" in next(
        r.stdout for line, r in outputs.items() if "replay" in line and "--dry-run" not in line
    )
    assert f.fleet.offer("off_123")["state"] == "submitted"
    # A cancel as ops, signed with the ops key and sent on the ops credential
    cancelled = f.cli("cancel", "off_123", "--reason", "ops")
    assert cancelled.returncode == 0, cancelled.stderr
    f.fleet.wait_for("off_123", "cancelled")
    # Queue depths, read on the broker
    stats = f.cli("stats", "--json")
    assert stats.returncode == 0, stats.stderr
    assert set(json.loads(stats.stdout)["queue_depths"]) == QUEUES, stats.stdout
    health = f.cli("health")
    assert health.returncode in (0, 1) and "check" in health.stdout, health.stderr + health.stdout
    assert "Traceback" not in health.stderr, health.stderr
    # The workers answer the CLI over the broker, and the synthetic journey goes through
    journey = f.cli("synthetic", "run")
    assert journey.returncode == 0 and "FAIL" not in journey.stdout, journey.stderr + journey.stdout


def metrics_read_the_broker(f: RolesFleet) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{f.metrics_port}/metrics", timeout=30) as response:
        text = response.read().decode()
    for queue in QUEUES:
        assert f'offers_queue_depth{{queue="{queue}"}}' in text, text[-2000:]
        assert f'offers_queue_consumers{{queue="{queue}"}}' in text, text[-2000:]


# --- RabbitMQ ---------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def rabbit(acl_server: AclRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RolesFleet, RabbitRoles]]:
    if reason := rabbitmq_unavailable():
        pytest.skip(reason)
    db = 5  # the RabbitMQ fleet's OFFERS_REDIS_URL: another database of the ACL'd Redis
    with (
        rabbitmq_roles(RUN_ID) as roles,
        roles_fleet(
            "rabbitmq",
            tmp_path_factory.mktemp("roles-rabbitmq"),
            fleet_urls={"OFFERS_BROKER_URL": roles.url("fleet"), "OFFERS_REDIS_URL": acl_server.url("fleet", db)},
            ops_urls={"OFFERS_BROKER_URL": roles.url("ops"), "OFFERS_REDIS_URL": acl_server.url("ops", db)},
            upstream=(roles.url("upstream"), acl_server.url("upstream", db)),
        ) as running,
    ):
        yield running, roles


class TestRabbitMQ:
    def test_the_upstream_user_submits_cancels_and_validates_with_the_guides_settings(
        self, rabbit: tuple[RolesFleet, RabbitRoles]
    ) -> None:
        f, _ = rabbit
        # A stock client declares the queue it sends to: the upstream user may not
        stock = run_python(with_urls(snippet("upstream-client").text, broker=f.upstream_broker), f.workdir)
        assert stock.returncode != 0 and "ACCESS_REFUSED" in stock.stderr, stock.stderr
        upstream_sends_submit_cancel_and_validate(f, recipe("least-privilege-client-rabbitmq"))

    def test_a_producer_of_another_language_publishes_to_the_exchange_offers(
        self, rabbit: tuple[RolesFleet, RabbitRoles]
    ) -> None:
        f, _ = rabbit
        producer = with_urls(snippet("raw-amqp").text, broker=f.upstream_broker)
        # As the README has it, on the default exchange: refused
        stock = run_python(producer, f.workdir)
        assert stock.returncode != 0 and "ACCESS_REFUSED" in stock.stderr and "amq.default" in stock.stderr, (
            stock.stderr
        )
        # With the guide's one change
        assert producer.count('exchange=""') == 1
        sent = run_python(producer.replace('exchange=""', 'exchange="offers"'), f.workdir)
        assert sent.returncode == 0, sent.stderr
        f.fleet.wait_for("off_1003", "submitted")

    def test_the_broker_refuses_the_upstream_user_everything_else(self, rabbit: tuple[RolesFleet, RabbitRoles]) -> None:
        f, roles = rabbit
        url = f.upstream_broker
        holds = celery_message("offers.release_expiring_holds")
        auction = celery_message("offers.stage.trigger_auction", {"offer_id": "off_1001"})
        attempts = {
            # a fleet-only task onto its queue, by the default exchange…
            "default exchange to offers.maintenance": lambda ch: ch.basic_publish("", "offers.maintenance", *holds),
            "default exchange to offers.payment": lambda ch: ch.basic_publish("", "offers.payment", *auction),
            # …by the exchange offers, with the queue's name or a delayed-delivery style key
            "offers to offers.maintenance": lambda ch: ch.basic_publish("offers", "offers.maintenance", *holds),
            "offers to offers.payment": lambda ch: ch.basic_publish("offers", "offers.payment", *auction),
            "offers to offers.auction": lambda ch: ch.basic_publish("offers", "offers.auction", *auction),
            "offers to 1.0.offers.auction": lambda ch: ch.basic_publish("offers", "1.0.offers.auction", *auction),
            "offers to offers.intake.offers.payment": lambda ch: ch.basic_publish(
                "offers", "offers.intake.offers.payment", *auction
            ),
            "amq.topic to offers.payment": lambda ch: ch.basic_publish("amq.topic", "offers.payment", *auction),
            # …or to the workers' remote control, which no MAC covers
            "celery.pidbox": lambda ch: ch.basic_publish("celery.pidbox", "", *holds),
            # …or by a queue or exchange of its own, bound where the fleet's messages go
            "declare a queue of its own": lambda ch: ch.queue_declare("offers.mine"),
            "bind offers.payment to offers by offers.intake": lambda ch: ch.queue_bind(
                "offers.payment", "offers", "offers.intake"
            ),
            "declare an exchange of its own": lambda ch: ch.exchange_declare("offers.mine", "topic"),
            "bind offers to amq.topic": lambda ch: ch.exchange_bind("offers", "amq.topic", "#"),
            # nor may it read, take, empty or remove a queue, or the exchange
            "consume offers.intake": lambda ch: ch.basic_consume("offers.intake", lambda *_: None),
            "get from offers.intake": lambda ch: ch.basic_get("offers.intake"),
            "purge offers.intake": lambda ch: ch.queue_purge("offers.intake"),
            "delete offers.intake": lambda ch: ch.queue_delete("offers.intake"),
            "redeclare offers.intake": lambda ch: ch.queue_declare(
                "offers.intake", durable=True, arguments={"x-queue-type": "quorum"}
            ),
            "delete the exchange offers": lambda ch: ch.exchange_delete("offers"),
        }
        refused = {what: amqp_refusal(url, attempt) for what, attempt in attempts.items()}
        assert all(r and r.startswith("403 ACCESS_REFUSED") for r in refused.values()), refused
        # Nor may it send in the fleet's name: RabbitMQ checks user_id against the connection's user
        submit = celery_message("offers.submit", {"offer": {"offer_id": "off_spoof"}})
        submit[1].user_id = roles.users["fleet"]
        spoofed = amqp_refusal(url, lambda ch: ch.basic_publish("offers", "offers.intake", *submit))
        assert spoofed and spoofed.startswith("406 PRECONDITION_FAILED - user_id property set to"), spoofed
        # The queue is still there
        assert amqp_refusal(roles.url("fleet"), lambda ch: ch.queue_declare("offers.intake", passive=True)) is None

    def test_a_fleet_only_task_the_upstream_puts_on_intake_is_refused_by_the_workers(
        self, rabbit: tuple[RolesFleet, RabbitRoles]
    ) -> None:
        f, _ = rabbit
        task_id = str(uuid.uuid4())
        holds = celery_message("offers.release_expiring_holds", task_id=task_id)
        # The broker lets the upstream publish to offers.intake, whatever the task…
        assert amqp_refusal(f.upstream_broker, lambda ch: ch.basic_publish("offers", "offers.intake", *holds)) is None
        # …and the workers refuse and record what it has no MAC for
        found = wait_until(lambda: f.rejection(task_id), timeout=60, message="the refused message's record")
        assert found["reason"] == "unauthenticated", found
        assert "offers.release_expiring_holds on offers.intake" in json.dumps(found["errors"]), found

    def test_the_ops_user_runs_the_cli(self, rabbit: tuple[RolesFleet, RabbitRoles]) -> None:
        f, roles = rabbit
        ops_runs_the_cli(f)
        url = roles.url("ops")
        attempts = {
            "consume offers.payment": lambda ch: ch.basic_consume("offers.payment", lambda *_: None),
            "get from offers.intake": lambda ch: ch.basic_get("offers.intake"),
            "purge offers.validation": lambda ch: ch.queue_purge("offers.validation"),
            "default exchange to offers.payment": lambda ch: ch.basic_publish(
                "", "offers.payment", *celery_message("offers.release_hold", {"offer_id": "off_123"})
            ),
            "offers to 1.0.offers.payment": lambda ch: ch.basic_publish(
                "offers", "1.0.offers.payment", *celery_message("offers.release_hold", {"offer_id": "off_123"})
            ),
            # the CLI declares nothing, so ops may not delete, redeclare or rebind what the workers declared
            "delete offers.intake": lambda ch: ch.queue_delete("offers.intake"),
            "delete the exchange offers": lambda ch: ch.exchange_delete("offers"),
            "redeclare offers.payment": lambda ch: ch.queue_declare(
                "offers.payment", durable=True, arguments={"x-queue-type": "quorum"}
            ),
            "bind offers.intake by offers.payment": lambda ch: ch.queue_bind(
                "offers.intake", "offers", routing_key="offers.payment"
            ),
        }
        refused = {what: amqp_refusal(url, attempt) for what, attempt in attempts.items()}
        assert all(r and r.startswith("403 ACCESS_REFUSED") for r in refused.values()), refused
        cancel = celery_message("offers.cancel", {"offer_id": "off_123", "reason": "ops", "actor": "ops"})
        cancel[1].user_id = roles.users["fleet"]
        spoofed = amqp_refusal(url, lambda ch: ch.basic_publish("offers", "offers.intake", *cancel))
        assert spoofed and spoofed.startswith("406 PRECONDITION_FAILED"), spoofed

    def test_metrics_and_the_fleets_redis_user_suffice(
        self, rabbit: tuple[RolesFleet, RabbitRoles], acl_server: AclRedis
    ) -> None:
        f, _ = rabbit
        metrics_read_the_broker(f)
        # Results, caches, the beat's lock and schedule: nothing the fleet did in Redis was refused
        assert acl_server.refusals(REDIS_USERS["fleet"]) == []


# --- Redis ------------------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def red(acl_server: AclRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RolesFleet]:
    with roles_fleet(
        "redis",
        tmp_path_factory.mktemp("roles-redis"),
        fleet_urls={"OFFERS_BROKER_URL": acl_server.url("fleet")},
        ops_urls={"OFFERS_BROKER_URL": acl_server.url("ops")},
        upstream=(acl_server.url("upstream"), acl_server.url("upstream")),
    ) as running:
        yield running


class TestRedis:
    def test_the_upstream_user_submits_cancels_and_validates_with_the_guides_settings(self, red: RolesFleet) -> None:
        f = red
        # A stock client declares the queue before its first send: refused
        stock = run_python(with_urls(snippet("upstream-client").text, broker=f.upstream_broker), f.workdir)
        assert stock.returncode != 0 and "no permissions" in stock.stderr, stock.stderr
        # The RabbitMQ settings on Redis would drop the message: here they are refused instead
        wrong = least_privilege(
            with_urls(snippet("upstream-client").text, broker=f.upstream_broker),
            recipe("least-privilege-client-rabbitmq"),
        )
        refused = run_python(wrong, f.workdir)
        assert refused.returncode != 0 and "'smembers'" in refused.stderr, refused.stderr
        upstream_sends_submit_cancel_and_validate(f, recipe("least-privilege-client-redis"))

    def test_redis_cli_pushes_the_readmes_envelope(self, red: RolesFleet) -> None:
        f = red
        (f.workdir / "envelope.json").write_text(snippet("raw-redis-envelope").text)
        pushed = subprocess.run(
            ["bash", "-c", with_urls(snippet("raw-redis-cli").text, broker=f.upstream_broker)],
            capture_output=True,
            text=True,
            cwd=f.workdir,
            env=stranger_env(),
            timeout=60,
        )
        assert pushed.returncode == 0 and "NOPERM" not in pushed.stdout, pushed.stderr + pushed.stdout
        f.fleet.wait_for("off_1004", "submitted")

    def test_redis_refuses_the_upstream_user_everything_else(self, red: RolesFleet, acl_server: AclRedis) -> None:
        up = acl_server.client("upstream")
        envelope = json.dumps({"body": "[[], {}, {}]", "headers": {"task": "offers.release_expiring_holds"}})
        attempts = {
            "LPUSH offers.maintenance": lambda: up.lpush("offers.maintenance", envelope),
            "LPUSH offers.payment": lambda: up.lpush("offers.payment", envelope),
            "RPUSH offers.intake": lambda: up.rpush("offers.intake", envelope),
            "DEL offers.intake": lambda: up.delete("offers.intake"),
            "LPOP offers.intake": lambda: up.lpop("offers.intake"),
            "BRPOP offers.intake": lambda: up.brpop(["offers.intake"], timeout=1),
            "LRANGE offers.intake": lambda: up.lrange("offers.intake", 0, -1),
            "LMOVE offers.intake": lambda: up.lmove("offers.intake", "offers.realtime"),
            "GET offers:redbeat:lock": lambda: up.get("offers:redbeat:lock"),
            "SET offers:redbeat:lock": lambda: up.set("offers:redbeat:lock", "mine"),
            "HGETALL offers:policy:listings": lambda: up.hgetall("offers:policy:listings"),
            "HGETALL unacked": lambda: up.hgetall("unacked"),
            "SADD _kombu.binding.offers.intake": lambda: up.sadd("_kombu.binding.offers.intake", "x"),
            "SET a result": lambda: up.set("celery-task-meta-forged", "{}"),
            "PUBLISH a result": lambda: up.publish("celery-task-meta-forged", "{}"),
            "PUBLISH to the workers' pidbox": lambda: up.publish(f"/{REDIS_DB}.celery.pidbox", "{}"),
            "EVAL": lambda: up.eval("return redis.call('DEL', KEYS[1])", 1, "offers.intake"),
            "KEYS": lambda: up.keys("*"),
            "FLUSHDB": lambda: up.flushdb(),
            "CONFIG GET": lambda: up.config_get("*"),
        }
        try:
            refused = {what: redis_refusal(attempt) for what, attempt in attempts.items()}
        finally:
            up.close()
        assert all(r and r.startswith("NOPERM") for r in refused.values()), refused
        # A connection without a user name is refused outright: the default user is off
        import redis

        anonymous = redis.Redis(port=acl_server.port, db=REDIS_DB, socket_timeout=10)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.llen("offers.intake")
        anonymous.close()

    def test_a_fleet_only_task_the_upstream_puts_on_intake_is_refused_by_the_workers(
        self, red: RolesFleet, acl_server: AclRedis
    ) -> None:
        f = red
        task_id = str(uuid.uuid4())
        envelope = json.loads(snippet("raw-redis-envelope").text)
        envelope["body"] = json.dumps([[], {}, {}])
        envelope["headers"] = {"task": "offers.release_expiring_holds", "id": task_id}
        envelope["properties"]["delivery_tag"] = task_id
        up = acl_server.client("upstream")
        try:
            up.lpush("offers.intake", json.dumps(envelope))
        finally:
            up.close()
        found = wait_until(lambda: f.rejection(task_id), timeout=60, message="the refused message's record")
        assert found["reason"] == "unauthenticated", found
        assert "offers.release_expiring_holds on offers.intake" in json.dumps(found["errors"]), found

    def test_the_ops_user_runs_the_cli(self, red: RolesFleet, acl_server: AclRedis) -> None:
        ops_runs_the_cli(red)
        client = acl_server.client("ops")
        attempts = {
            "BRPOP offers.payment": lambda: client.brpop(["offers.payment"], timeout=1),
            "LPOP offers.intake": lambda: client.lpop("offers.intake"),
            "LRANGE offers.intake": lambda: client.lrange("offers.intake", 0, -1),
            "DEL offers.intake": lambda: client.delete("offers.intake"),
            "GET offers:redbeat:lock": lambda: client.get("offers:redbeat:lock"),
            "DEL offers:redbeat:schedule": lambda: client.delete("offers:redbeat:schedule"),
            "HGETALL unacked": lambda: client.hgetall("unacked"),
            "GET a result": lambda: client.get("celery-task-meta-x"),
            "KEYS": lambda: client.keys("*"),
            "SADD a binding": lambda: client.sadd(
                "_kombu.binding.offers", "offers.payment\x06\x16\x06\x16offers.intake"
            ),
            "FLUSHDB": lambda: client.flushdb(),
        }
        try:
            refused = {what: redis_refusal(attempt) for what, attempt in attempts.items()}
        finally:
            client.close()
        assert all(r and r.startswith("NOPERM") for r in refused.values()), refused

    def test_metrics_flower_and_the_fleet_user_suffice(self, red: RolesFleet, acl_server: AclRedis) -> None:
        f = red
        metrics_read_the_broker(f)
        # Flower, run with the workers' environment (README), sees their tasks
        pytest.importorskip("flower")
        port = free_port()
        command = snippet("flower-procfile").text.split(":", 1)[1].strip()
        f.fleet.fleet.start(
            ProcessType("flower", command), env={"FLOWER_PORT": str(port), "FLOWER_ADDRESS": "127.0.0.1"}
        )
        table = (
            f"http://127.0.0.1:{port}/tasks/datatable?draw=1&start=0&length=100&search%5Bvalue%5D="
            "&order%5B0%5D%5Bcolumn%5D=0&order%5B0%5D%5Bdir%5D=asc&columns%5B0%5D%5Bdata%5D=name"
        )

        def tasks_seen() -> str:
            try:
                with urllib.request.urlopen(table, timeout=5) as response:
                    return response.read().decode()
            except OSError:
                return ""

        wait_until(lambda: '"data"' in tasks_seen(), timeout=60, message="Flower to start")
        sent = run_python(
            least_privilege(
                with_urls(snippet("upstream-client").text, broker=f.upstream_broker),
                recipe("least-privilege-client-redis"),
            ).replace("off_1001", "off_flower"),
            f.workdir,
        )
        assert sent.returncode == 0, sent.stderr
        wait_until(lambda: "offers.submit" in tasks_seen(), timeout=60, message="Flower to show a task")
        # Nothing the fleet's processes did was refused
        assert acl_server.refusals(REDIS_USERS["fleet"]) == []
