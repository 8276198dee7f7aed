"""Private fleets for drills and flag tests: the Procfile's workers and beat on a Redis database
of their own (and the stores given), with the figures a drill reports.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from celery import Celery

from config.celery import celery_config
from config.settings import REDIS_SCHEMES, Settings
from offers_workers.domain import states
from offers_workers.local.demo import check, send_samples, settled
from offers_workers.local.fleet import Fleet, ProcessType, read_procfile
from offers_workers.local.samples import Sample, make_samples
from offers_workers.redis_client import redis_client
from offers_workers.runtime import Runtime
from offers_workers.saga import trail
from offers_workers.store import audit_trail
from tests.conftest import DRILL_RESULTS, RUN_ID, offer_rows, redis_database

#: A sweep that notices lost work within seconds, and a Redis broker that hands a killed worker's
#: messages to another within 25 s (tasks here take well under the 20 s limit), so drills drain
#: in test time.
FAST_RECOVERY = {
    "OFFERS_RECOVERY_INTERVAL_SECONDS": "2",
    "OFFERS_RECOVERY_AFTER_SECONDS": "10",
    "OFFERS_TASK_TIME_LIMIT_SECONDS": "20",
    "OFFERS_BROKER_VISIBILITY_TIMEOUT_SECONDS": "25",
}
#: A sweep that stays out of the way: what recovers the offers is the retries alone.
NO_RECOVERY = {"OFFERS_RECOVERY_AFTER_SECONDS": "3600"}


@dataclass
class Drill:
    name: str
    env: dict[str, str]
    runtime: Runtime
    app: Celery
    fleet: Fleet
    types: dict[str, ProcessType]
    started: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)
    #: Where each worker log stood when this drill began (a fleet can serve several in turn).
    log_offsets: dict[str, int] = field(default_factory=dict)
    #: The sandbox this fleet's partners run in, when it has one of its own.
    sandbox: Any = None
    #: Appended to every drill name of this fleet, so the drill table tells its rows apart
    #: (" [pgbouncer]": the same drills with the database behind a pooler).
    label: str = ""
    #: The share of its usual offers a drill sends where fewer prove the same (``sized``): a module
    #: that runs the drills once more another way spends less time on them.
    scale: float = 1.0

    def scenario(self, name: str) -> Drill:
        """A drill of its own on this running fleet: its own figures, and logs read from here on.
        Workers an earlier drill killed are restarted first."""
        self.restart_dead_workers()
        self.wait_for_workers()
        offsets = {path.name: path.stat().st_size for path in self.fleet.log_dir.glob("*worker*.log")}
        return replace(self, name=f"{name}{self.label}", started=0.0, figures={}, log_offsets=offsets)

    def sized(self, count: int) -> int:
        """``count`` at this fleet's scale, at least one."""
        return max(1, round(count * self.scale))

    def send(self, count: int, seed: int) -> list[Sample]:
        samples = self.samples(count, seed)
        self.submit(samples)
        return samples

    def samples(self, count: int, seed: int) -> list[Sample]:
        """The drill's offers (every scenario), counted in its figures; the clock starts here."""
        label = re.sub(r"[^A-Za-z0-9_-]+", "-", self.name).strip("-")  # offer ids allow no more
        self.started = time.monotonic()
        self.figures["offers"] = self.figures.get("offers", 0) + count
        return make_samples(count, f"{label}-{RUN_ID}-{seed}", seed=seed)

    def submit(self, samples: list[Sample]) -> None:
        send_samples(lambda offer: self.app.send_task("offers.submit", kwargs={"offer": offer}), samples)

    def settled_count(self, samples: list[Sample]) -> int:
        return settled(self.runtime, samples)[0]

    def drain(self, samples: list[Sample], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while self.settled_count(samples) < len(samples) and time.monotonic() < deadline:
            self.restart_dead_workers()
            time.sleep(0.25)
        self.figures["drain_s"] = round(time.monotonic() - self.started, 1)

    def wait_for_workers(self, timeout: float = 60) -> None:
        """Until every worker process answers a ping."""
        expected = sum(1 for name in self.fleet.processes if name.startswith("worker"))
        deadline = time.monotonic() + timeout
        while len(self.app.control.ping(timeout=0.5) or []) < expected:
            assert not self.fleet.dead(), f"a process exited at start-up; logs in {self.fleet.log_dir}"
            assert time.monotonic() < deadline, f"workers did not answer a ping; logs in {self.fleet.log_dir}"

    def restart_dead_workers(self) -> None:
        """What a process manager does: a worker that died is started again."""
        for name, proc in list(self.fleet.processes.items()):
            if name.startswith("worker") and proc.poll() is not None:
                _kill_group(proc.pid)  # pool children orphaned by a killed parent go too
                self.fleet.start(self.types[name])

    def verify(self, samples: list[Sample], others: list[str] = ()) -> dict[str, Any]:
        """Compare offers with their scenarios and with Stripe; record and return the figures.
        ``others``: offers of the drill's own making, whose holds count in the duplicate and orphan figures."""
        done, offers, rejections = settled(self.runtime, samples)
        ids = {s.offer_id for s in samples} | set(others)
        holds: dict[str, list[str]] = defaultdict(list)
        for pi in self.runtime.stripe.list_holds():
            if pi.offer_id in ids:
                holds[pi.offer_id].append(pi.status)
        ended = {o for o, row in offers.items() if row["state"] in states.TERMINAL}
        ended |= {o for o, row in offer_rows(self.runtime, list(others)).items() if row["state"] in states.TERMINAL}
        problems = check(samples, offers, rejections, {o: h for o, h in holds.items() if o not in others})
        self.figures.update(
            lost=len(samples) - done,
            dead_lettered=sum(1 for row in offers.values() if row["state"] == states.DEAD_LETTERED),
            duplicate_holds=sum(len(v) - 1 for v in holds.values() if len(v) > 1),
            orphan_holds=sum(
                1
                for o, sts in holds.items()
                for st in sts
                if st == "requires_capture" and ((o not in offers and o not in others) or o in ended)
            ),
            wrong_outcome=len(problems),
            retries=sum(self.retries_logged().values()),
            swept=self.swept(),
        )
        if "beat" in self.fleet.processes:
            self.figures["chain"] = self.chain_sealed_and_intact()
        DRILL_RESULTS.append({"drill": self.name, **self.figures})
        assert problems == [], f"{self.name}: {len(problems)} offers missed their outcome: {problems[:10]}"
        assert (self.figures["lost"], self.figures["duplicate_holds"], self.figures["orphan_holds"]) == (0, 0, 0)
        assert self.figures["dead_lettered"] == 0
        return self.figures

    def chain_sealed_and_intact(self, timeout: float = 30) -> str:
        """Wait for the beat's sealer to link every audit row written, then walk the chain: what
        `audit verify-chain` would say. Returns the figure for the drill table."""
        deadline = time.monotonic() + timeout
        while True:
            with self.runtime.db.read() as conn:
                lag = audit_trail.seal_lag(conn)
            if lag.unsealed_rows == 0:
                break
            assert time.monotonic() < deadline, (
                f"{self.name}: {lag.unsealed_rows} audit rows still unsealed after {timeout:g} s"
            )
            time.sleep(0.2)
        check = trail.verify_chain(self.runtime)
        assert check.ok and check.unsealed == 0, f"{self.name}: {check.first_break}"
        return f"{check.rows:,} rows ok"

    def logged(self, message: str) -> list[dict[str, Any]]:
        """The workers' JSON log records with this message."""
        records = []
        for path in self.fleet.log_dir.glob("*worker*.log"):
            with path.open("rb") as log:
                log.seek(self.log_offsets.get(path.name, 0))
                text = log.read().decode(errors="replace")
            for line in text.splitlines():
                if f'"msg": "{message}"' in line:
                    with suppress(ValueError):
                        records.append(json.loads(line))
        return records

    def retries_logged(self) -> Counter[str]:
        """Retries by stage."""
        return Counter(r.get("stage", "?") for r in self.logged("transient failure; retrying"))

    def swept(self) -> int:
        """Messages the recovery sweep re-sent."""
        return sum(r.get("messages", 0) for r in self.logged("recovery re-sent work"))


def intake_done(rt: Runtime, samples: list[Sample]) -> bool:
    """Intake has recorded every sample: its offer row, or the rejection it was built for."""
    _, offers, rejections = settled(rt, samples)
    return all(
        (s.scenario.state is None or s.offer_id in offers)
        and (s.scenario.intake_rejection is None or s.scenario.intake_rejection in rejections.get(s.offer_id, []))
        for s in samples
    )


def worker_processes(fleet: Fleet) -> list[tuple[str, int]]:
    """Every live worker process and pool child of the fleet, by name: what a kill drill aims at."""
    found = []
    for name, proc in fleet.processes.items():
        if name.startswith("worker") and proc.poll() is None:
            found.append((name, proc.pid))
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            if children.exists():
                found += [(f"{name} pool child", int(pid)) for pid in children.read_text().split()]
    return found


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def settings_for(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("OFFERS_").lower(): v for k, v in env.items() if k.startswith("OFFERS_")})


@contextmanager
def drill(
    name: str,
    offers_env: dict[str, str],
    log_dir: Path,
    process_types: tuple[str, ...] = ("worker", "worker_partners", "beat"),
    label: str = "",
    scale: float = 1.0,
    **overrides: str,
) -> Iterator[Drill]:
    """The Procfile's workers and beat on a Redis database of their own (on the run's Redis server,
    unless ``overrides`` name another broker) and their own key prefix. ``name`` goes into Redis
    key names and patterns: no glob characters. ``label`` goes only into the drill's name in the
    table; ``scale``, see ``Drill.scale``."""
    assert not set(name) & set("*?[]"), f"{name!r}: kombu subscribes to Redis key patterns"
    prefix = f"{offers_env['OFFERS_REDIS_KEY_PREFIX']}{name}:"
    env = {**offers_env, "OFFERS_REDIS_KEY_PREFIX": prefix, **overrides}
    with ExitStack() as stores:
        if env["OFFERS_BROKER_URL"] == offers_env["OFFERS_BROKER_URL"] and env["OFFERS_BROKER_URL"].startswith(
            REDIS_SCHEMES
        ):
            # Queues carry their plain names: a fleet of its own needs a database of its own.
            env["OFFERS_BROKER_URL"] = stores.enter_context(redis_database(env["OFFERS_BROKER_URL"]))
        yield stores.enter_context(_running(name, env, log_dir, process_types, label, scale))


@contextmanager
def _running(
    name: str, env: dict[str, str], log_dir: Path, process_types: tuple[str, ...], label: str, scale: float
) -> Iterator[Drill]:
    settings = settings_for(env)
    from tasks.app import OffersCelery  # not at import: the app reads the settings the fixtures set

    # The fleet's own app class: what the test sends is signed as the fleet's processes sign (tasks/authority.py).
    app = OffersCelery(f"drill-{name}", set_as_current=False)
    app.config_from_object(celery_config(settings))
    runtime = Runtime(settings)
    types = {t.name: t for t in read_procfile()}
    fleet = Fleet(env, log_dir)
    try:
        for ptype in process_types:
            fleet.start(types[ptype])
        running = Drill(f"{name}{label}", env, runtime, app, fleet, types, label=label, scale=scale)
        running.wait_for_workers()
        yield running
    finally:
        fleet.stop()
        runtime.close()
        app.close()
        client = redis_client(settings)
        keys = list(client.scan_iter(match=f"{env['OFFERS_REDIS_KEY_PREFIX']}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
