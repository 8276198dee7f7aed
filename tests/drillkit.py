"""Private fleets for drills and flag tests: the Procfile's workers and beat on their own Redis
key space (and the stores given), with the figures a drill reports.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from config.celery import celery_config
from config.settings import Settings
from offers_workers import states
from offers_workers.demo import check, send_samples, settled
from offers_workers.fleet import Fleet, ProcessType, read_procfile
from offers_workers.runtime import Runtime
from offers_workers.samples import Sample, make_samples
from tests.conftest import DRILL_RESULTS, RUN_ID


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

    def send(self, count: int, seed: int) -> list[Sample]:
        samples = make_samples(count, f"{self.name}-{RUN_ID}", seed=seed)
        self.started = time.monotonic()
        send_samples(lambda offer: self.app.send_task("offers.submit", kwargs={"offer": offer}), samples)
        self.figures["offers"] = len(samples)
        return samples

    def settled_count(self, samples: list[Sample]) -> int:
        return settled(self.runtime, samples)[0]

    def drain(self, samples: list[Sample], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while self.settled_count(samples) < len(samples) and time.monotonic() < deadline:
            self.restart_dead_workers()
            time.sleep(0.25)
        self.figures["drain_s"] = round(time.monotonic() - self.started, 1)

    def restart_dead_workers(self) -> None:
        """What a process manager does: a worker that died is started again."""
        for name, proc in list(self.fleet.processes.items()):
            if name.startswith("worker") and proc.poll() is not None:
                _kill_group(proc.pid)  # pool children orphaned by a killed parent go too
                self.fleet.start(self.types[name])

    def verify(self, samples: list[Sample]) -> dict[str, Any]:
        """Compare offers with their scenarios and with Stripe; record and return the figures."""
        done, offers, rejections = settled(self.runtime, samples)
        ids = {s.offer_id for s in samples}
        holds: dict[str, list[str]] = defaultdict(list)
        for pi in self.runtime.stripe.list_holds():
            if pi["offer_id"] in ids:
                holds[pi["offer_id"]].append(pi["status"])
        ended = {o for o, row in offers.items() if row["state"] in states.TERMINAL}
        problems = check(samples, offers, rejections, holds)
        self.figures.update(
            lost=len(samples) - done,
            dead_lettered=sum(1 for row in offers.values() if row["state"] == states.DEAD_LETTERED),
            duplicate_holds=sum(len(v) - 1 for v in holds.values() if len(v) > 1),
            orphan_holds=sum(
                1 for o, sts in holds.items() for st in sts if st == "requires_capture" and (o not in offers or o in ended)
            ),
            wrong_outcome=len(problems),
            retries=sum(self.retries_logged().values()),
            swept=self.swept(),
        )
        DRILL_RESULTS.append({"drill": self.name, **self.figures})
        assert problems == [], f"{self.name}: {len(problems)} offers missed their outcome: {problems[:10]}"
        assert (self.figures["lost"], self.figures["duplicate_holds"], self.figures["orphan_holds"]) == (0, 0, 0)
        assert self.figures["dead_lettered"] == 0
        return self.figures

    def logged(self, message: str) -> list[dict[str, Any]]:
        """The workers' JSON log records with this message."""
        records = []
        for path in self.fleet.log_dir.glob("worker*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if f'"msg": "{message}"' in line:
                    try:
                        records.append(json.loads(line))
                    except ValueError:
                        pass
        return records

    def retries_logged(self) -> Counter[str]:
        """Retries by stage."""
        return Counter(r.get("stage", "?") for r in self.logged("transient failure; retrying"))

    def swept(self) -> int:
        """Messages the recovery sweep re-sent."""
        return sum(r.get("messages", 0) for r in self.logged("recovery re-sent work"))


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def settings_for(env: dict[str, str]) -> Settings:
    return Settings(**{k.removeprefix("OFFERS_").lower(): v for k, v in env.items() if k.startswith("OFFERS_")})


@contextmanager
def drill(
    name: str, offers_env: dict[str, str], log_dir: Path, process_types: tuple[str, ...] = ("worker", "worker_partners", "beat"), **overrides: str
) -> Iterator[Drill]:
    """The Procfile's workers and beat on their own key space (and the stores given in overrides)."""
    prefix = f"{offers_env['OFFERS_REDIS_KEY_PREFIX']}{name}:"
    env = {**offers_env, "OFFERS_REDIS_KEY_PREFIX": prefix, **overrides}
    settings = settings_for(env)
    app = Celery(f"drill-{name}", set_as_current=False)
    app.config_from_object(celery_config(settings))
    runtime = Runtime(settings)
    types = {t.name: t for t in read_procfile()}
    fleet = Fleet(env, log_dir)
    try:
        for ptype in process_types:
            fleet.start(types[ptype])
        deadline = time.monotonic() + 60
        while len(app.control.ping(timeout=0.5) or []) < sum(1 for t in process_types if t.startswith("worker")):
            assert not fleet.dead(), f"a process exited at start-up; logs in {log_dir}"
            assert time.monotonic() < deadline, f"workers did not answer a ping; logs in {log_dir}"
        yield Drill(name, env, runtime, app, fleet, types)
    finally:
        fleet.stop()
        runtime.close()
        app.close()
        client = redis.Redis.from_url(settings.broker_url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
