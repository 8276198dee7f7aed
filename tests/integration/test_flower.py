"""Flower, started as docs/production.md's line says, against the running fleet: it lists the workers and
the saga's tasks, and nothing it answers holds a buyer's email, IP or message, whether the offer came
from an upstream's Celery client or from the operator CLI (the fleet's own send)."""

from __future__ import annotations

import base64
import json
import secrets
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from celery import Celery

from offers_workers.domain import states
from offers_workers.local.embedded import free_port
from offers_workers.local.fleet import Fleet, ProcessType
from offers_workers.local.samples import base_offer
from tests.conftest import cli, new_id, offer_rows, wait_until
from tests.contract.markdown import read_blocks

pytestmark = pytest.mark.usefixtures("fleet")

#: The saga's tasks of an accepted card offer, each of which Flower must have seen finish.
SAGA = {
    "offers.submit",
    "offers.stage.validate",
    "offers.stage.hold_payment",
    "offers.stage.score_risk",
    "offers.stage.trigger_auction",
    "offers.stage.complete",
}


def flower_line() -> ProcessType:
    """The production guide's Procfile line for Flower."""
    [line] = read_blocks().snippets["flower-procfile"].lines()
    name, _, command = line.partition(":")
    return ProcessType(name.strip(), command.strip())


@dataclass
class Flower:
    port: int
    authorization: str
    log_dir: Path
    pid: int

    def listening_on(self) -> set[str]:
        """The addresses Flower's process listens on at its port."""
        found = psutil.Process(self.pid).net_connections(kind="tcp")
        return {c.laddr.ip for c in found if c.status == psutil.CONN_LISTEN and c.laddr.port == self.port}

    def request(self, path: str, *, method: str = "GET", auth: bool = True) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        if auth:
            request.add_header("Authorization", self.authorization)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def get(self, path: str) -> Any:
        status, body = self.request(path)
        assert status == 200, f"GET {path}: {status} {body[:500]} (log in {self.log_dir})"
        return json.loads(body)

    def online(self) -> set[str]:
        """Workers whose heartbeat events Flower has received: its event receiver is listening."""
        try:
            _, metrics = self.request("/metrics", auth=False)
        except OSError:
            return set()
        return {
            line.split('worker="', 1)[1].split('"', 1)[0]
            for line in metrics.splitlines()
            if line.startswith("flower_worker_online{") and line.endswith(" 1.0")
        }


@pytest.fixture
def flower(offers_env: dict[str, str], celery_app: Any, tmp_path: Path) -> Iterator[Flower]:
    """Flower as the README's line runs it, on a free port with basic auth; stopped at the end, failed or not.
    No FLOWER_ADDRESS: where it listens is the line's own doing."""
    password = secrets.token_hex(8)
    env = {"FLOWER_PORT": str(free_port()), "FLOWER_BASIC_AUTH": f"ops:{password}"}
    authorization = "Basic " + base64.b64encode(f"ops:{password}".encode()).decode()
    with Fleet(offers_env | env, tmp_path) as running:
        process = running.start(flower_line())
        client = Flower(int(env["FLOWER_PORT"]), authorization, tmp_path, process.pid)
        workers = {name for reply in celery_app.control.ping(timeout=1) or [] for name in reply}
        assert workers, "no worker of the fleet answers a ping"
        wait_until(
            lambda: not running.dead() and workers <= client.online(),
            timeout=60,
            message=f"Flower to see the workers' events (log in {tmp_path})",
        )
        yield client


@contextmanager
def task_events(app: Any) -> Iterator[list[dict[str, Any]]]:
    """Every event the fleet sends meanwhile, as any monitor of the broker receives it."""
    events: list[dict[str, Any]] = []
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": events.append})
        listening = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        listening.start()
        try:
            # A worker's heartbeat (every 2 s) shows the receiver is subscribed.
            wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in events), timeout=20, message="events")
            yield events
        finally:
            receiver.should_stop = True
            listening.join(10)


@dataclass(frozen=True)
class Sent:
    offer_id: str
    buyer_data: list[str]  # the email, IP and message, none of which may be shown


def buyer_offer(n: int) -> tuple[dict[str, Any], Sent]:
    """An accepted card offer whose buyer data is unique to this run."""
    token = secrets.token_hex(4)
    offer = base_offer(new_id("flower"), n)
    offer["buyer_context"] = {
        "email": f"flower-{token}@example.com",
        "ip": f"2001:db8::{token[:4]}",
        "session_id": token,
    }
    offer["message"] = f"call me on 555-0100, ref {token}"
    return offer, Sent(
        offer["offer_id"], [offer["buyer_context"]["email"], offer["buyer_context"]["ip"], offer["message"]]
    )


def send_as_upstream(offers_env: dict[str, str], offer: dict[str, Any]) -> None:
    """As the README's upstream client sends: its kwargsrepr header holds the whole offer."""
    upstream = Celery(broker=offers_env["OFFERS_BROKER_URL"], set_as_current=False)
    try:
        upstream.send_task("offers.submit", kwargs={"offer": offer}, queue="offers.intake", serializer="json")
    finally:
        upstream.close()


def send_from_the_cli(offer: dict[str, Any], tmp_path: Path) -> None:
    """As an operator sends: the fleet's own send, with its task-sent event."""
    (tmp_path / "offer.json").write_text(json.dumps(offer))
    submitted = cli("submit", str(tmp_path / "offer.json"))
    assert submitted.returncode == 0, submitted.stderr


def finished_in_flower(flower: Flower, offer_id: str) -> dict[str, dict[str, Any]] | None:
    """The offer's tasks Flower lists, once it has seen every step of the saga succeed."""
    shown = {uuid: task for uuid, task in flower.get("/api/tasks").items() if offer_id in (task.get("kwargs") or "")}
    return shown if {t["name"] for t in shown.values() if t["state"] == "SUCCESS"} >= SAGA else None


def test_flower_shows_the_fleet_and_no_buyer_data(
    flower: Flower, offers_env: dict[str, str], celery_app: Any, runtime: Any, tmp_path: Path
) -> None:
    upstream_offer, upstream = buyer_offer(1)
    cli_offer, operator = buyer_offer(2)
    buyer_data = upstream.buyer_data + operator.buyer_data
    # Given Flower as the README's line runs it: on loopback alone, and no page without the password
    assert flower.listening_on() == {"127.0.0.1"}
    for path in ("/", "/workers", "/tasks", "/api/workers"):
        assert flower.request(path, auth=False)[0] == 401, path
    with task_events(celery_app) as events:
        # Given an offer from an upstream's Celery client and one from the operator CLI
        send_as_upstream(offers_env, upstream_offer)
        send_from_the_cli(cli_offer, tmp_path)
        # When both go through the saga
        ids = [upstream.offer_id, operator.offer_id]
        wait_until(
            lambda: [r["state"] for r in offer_rows(runtime, ids).values()] == [states.SUBMITTED] * 2,
            timeout=90,
            message="both offers to be submitted",
        )
        # Then Flower saw every task of each finish, and shows each by its offer id alone
        for sent in (upstream, operator):
            tasks = wait_until(
                lambda sent=sent: finished_in_flower(flower, sent.offer_id),
                timeout=30,
                message=f"Flower to show {sent.offer_id}'s tasks finished (log in {flower.log_dir})",
            )
            for uuid in tasks:
                info = flower.get(f"/api/task/info/{uuid}")
                assert [value for value in sent.buyer_data if value in json.dumps(info)] == [], info
                assert (info["args"], info["kwargs"]) == ("()", repr({"offer_id": sent.offer_id})), info

    # And the events themselves carried the ids alone, task-sent too (Flower's state keeps the later received)
    assert [value for value in buyer_data if value in json.dumps(events)] == []
    submits = {(e["type"], e.get("kwargs")) for e in events if e.get("name") == "offers.submit"}
    assert ("task-sent", repr({"offer_id": operator.offer_id})) in submits
    assert ("task-received", repr({"offer_id": upstream.offer_id})) in submits
    # and every hand-on's task-sent came from the worker that sent it (a prefork child's, a thread's)
    handed_on = {e["name"] for e in events if e["type"] == "task-sent" and upstream.offer_id in e.get("kwargs", "")}
    assert handed_on == SAGA - {"offers.submit"}, handed_on

    # And the workers are listed, and no listing or inspect answer holds buyer data
    workers = flower.get("/api/workers?refresh=1")
    assert {"core", "partners"} <= {name.split("@")[0] for name in workers}, sorted(workers)
    assert all("broker_url" in answer.get("conf", {}) for answer in workers.values()), workers
    everything = json.dumps(workers) + json.dumps(flower.get("/api/tasks"))
    for name in workers:
        everything += json.dumps(flower.get(f"/api/workers?workername={name}&refresh=1"))
    assert [value for value in buyer_data if value in everything] == []

    # And Flower only watches: no answer without the password, no task sent through it
    assert flower.request("/api/workers", auth=False)[0] == 401
    status, _ = flower.request(f"/api/task/async-apply/offers.cancel?offer_id={upstream.offer_id}", method="POST")
    assert status == 403
    assert [r["state"] for r in offer_rows(runtime, ids).values()] == [states.SUBMITTED] * 2
