"""The whole local stack: stores (embedded when no URLs are set), the sandbox partners and the
Procfile's processes. ``dev`` and ``demo`` run on it; ``stop`` ends everything it started.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import Settings, get_settings
from offers_workers.local.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from offers_workers.local.fleet import PROJECT_ROOT, Fleet, read_procfile
from offers_workers.partners.table import PARTNER_NAMES
from offers_workers.runtime import Runtime
from offers_workers.store.policy import read_policy_file
from offers_workers.store.roles import SANDBOX_RUNTIME_ROLE, provision_runtime_role

log = logging.getLogger(__name__)

SAMPLE_POLICY = PROJECT_ROOT / "config" / "policy" / "sample.yaml"


class Stack:
    def __init__(self, settings: Settings, *, sandbox_ports: dict[str, int] | None = None) -> None:
        self.base_settings = settings
        self.sandbox_ports = sandbox_ports
        self.env: dict[str, str] = {}
        self.settings = settings
        self.fleet: Fleet | None = None
        self._cleanup = ExitStack()

    def start(
        self, *, process_types: list[str] | None = None, with_sandbox: bool = True, worker_args: tuple[str, ...] = ()
    ) -> Settings:
        """Start stores, sandbox and processes; returns the settings every process now shares.

        ``worker_args`` are added to every worker's command line (the bench's ``--include``)."""
        try:
            self._start(process_types, with_sandbox, list(worker_args))
        except BaseException:
            self.stop()
            raise
        return self.settings

    def _start(self, process_types: list[str] | None, with_sandbox: bool, worker_args: list[str]) -> None:
        state_dir = self.base_settings.state_dir
        if not self.base_settings.database_url:
            pg = EmbeddedPostgres(state_dir)
            self.env["OFFERS_DATABASE_URL"] = pg.start()
            self._cleanup.callback(pg.stop)
        if self.base_settings.sandbox and not self.base_settings.database_owner_url:
            # Two logins, as outside the sandbox: the one given owns the schema (the release's
            # `db migrate`), the fleet runs as a role of its own that owns nothing.
            owner_url = self.env.get("OFFERS_DATABASE_URL") or self.base_settings.database_url or ""
            self.env["OFFERS_DATABASE_OWNER_URL"] = owner_url
            self.env["OFFERS_DATABASE_URL"] = provision_runtime_role(owner_url, SANDBOX_RUNTIME_ROLE)
        if not self.base_settings.broker_url:
            rd = EmbeddedRedis(state_dir)
            self.env["OFFERS_BROKER_URL"] = rd.start()
            self._cleanup.callback(rd.stop)
        if with_sandbox:
            from offers_workers.local.sandbox import Sandbox, ensure_aws_resources

            sandbox = Sandbox(ports=self.sandbox_ports)
            sandbox.start()
            self._cleanup.callback(sandbox.stop)
            self.env.update(sandbox.settings_env())
        if "OFFERS_METRICS_PORT" not in os.environ:
            # A local stack must not collide with a metrics server already on the default port.
            self.env["OFFERS_METRICS_PORT"] = str(free_port())
        # This process (the CLI) talks to the same stack as the processes it starts.
        os.environ.update(self.env)
        get_settings.cache_clear()
        self.settings = get_settings()
        if with_sandbox:
            ensure_aws_resources(self.settings)

        self.fleet = Fleet(self.env, Path(state_dir) / "logs")
        self._cleanup.callback(self.fleet.stop)
        types = {t.name: t for t in read_procfile()}
        self.fleet.run_once(types["release"])
        load_sample_policy(self.settings)
        wanted = process_types or [name for name in types if name != "release"]
        for name in wanted:
            self.fleet.start(types[name], extra_args=worker_args if name.startswith("worker") else None)

    @property
    def running(self) -> Fleet:
        """The fleet ``start`` launched."""
        if self.fleet is None:
            raise RuntimeError("the stack is not started")
        return self.fleet

    def wait_for_workers(self, app: Any, timeout: float = 60) -> None:
        """Block until every started worker answers a ping (or a worker died)."""
        fleet = self.running
        expected = sum(1 for name in fleet.processes if name.startswith("worker"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = fleet.dead()
            if dead:
                raise RuntimeError(f"process {', '.join(dead)} exited at start-up; see {fleet.log_dir}")
            replies = app.control.ping(timeout=0.5) or []
            if len(replies) >= expected:
                return
        raise RuntimeError(f"workers did not come up within {timeout:.0f}s; see {fleet.log_dir}")

    def stop(self) -> None:
        self._cleanup.close()


def load_sample_policy(settings: Settings) -> None:
    rt = Runtime(settings)
    try:
        policy = read_policy_file(SAMPLE_POLICY)
        with rt.db.transaction() as conn:
            rt.policies.load(conn, policy)
        rt.policies.invalidate()
    finally:
        rt.close()


@dataclass(frozen=True)
class Running:
    """A started stack, as ``demo`` and ``bench`` use it: the fleet, a runtime on its stores, the app."""

    fleet: Fleet
    rt: Runtime
    app: Any


@contextmanager
def started_stack(
    settings: Settings, status: Any, *, what: str, worker_args: tuple[str, ...] = ()
) -> Iterator[Running]:
    """Start stores, the sandbox on free ports and the fleet, wait for every worker; stop it all on exit.

    ``status`` is the rich console that shows what is happening; ``what`` names the command in it.
    """
    stack = Stack(settings, sandbox_ports=dict.fromkeys(PARTNER_NAMES, 0))
    try:
        with status.status("starting stores, sandbox and workers…"):
            started = stack.start(worker_args=worker_args)
            from tasks.app import app

            stack.wait_for_workers(app)
        rt = Runtime(started)
        try:
            yield Running(stack.running, rt, app)
        finally:
            rt.close()
    finally:
        with status.status(f"stopping everything the {what} started…"):
            stack.stop()
