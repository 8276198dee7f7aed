"""Run the Procfile's processes: how ``dev``, ``demo`` and the tests start the fleet as a
deployment does, and stop every process they started, also when something fails.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROCFILE = PROJECT_ROOT / "Procfile"


@dataclass(frozen=True)
class ProcessType:
    name: str
    command: str

    @property
    def is_worker(self) -> bool:
        return self.name.startswith("worker")


def read_procfile(path: Path = PROCFILE) -> list[ProcessType]:
    types = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, command = line.partition(":")
            types.append(ProcessType(name.strip(), command.strip()))
    return types


def process_env(overrides: dict[str, str], *, inherit_settings: bool = True) -> dict[str, str]:
    """The environment for fleet processes: ours plus overrides, with this venv's scripts first.
    Without ``inherit_settings`` no ``OFFERS_*`` setting of ours goes along: only the overrides'."""
    inherited = os.environ if inherit_settings else {k: v for k, v in os.environ.items() if not k.startswith("OFFERS_")}
    env = {**inherited, **overrides}
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    # Processes run from the project root import the source tree even without an install.
    env["PYTHONPATH"] = str(PROJECT_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Fleet:
    """Starts process types in their own process groups; ``stop`` ends them all."""

    def __init__(self, env: dict[str, str], log_dir: Path, *, inherit_settings: bool = True) -> None:
        self.env = process_env(env, inherit_settings=inherit_settings)
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._logs: list[IO[bytes]] = []

    def run_once(self, ptype: ProcessType, timeout: float = 120) -> None:
        """Run a one-off process type (``release``) to completion; raise if it fails."""
        result = subprocess.run(
            shlex.split(ptype.command), env=self.env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout
        )
        if result.returncode != 0:
            raise RuntimeError(f"{ptype.name} failed ({result.returncode}): {result.stderr.strip()[-500:]}")

    def start(
        self,
        ptype: ProcessType,
        name: str | None = None,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one process of ``ptype`` (named ``name``), with ``env`` over the fleet's environment."""
        name = name or ptype.name
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - open while its process runs; stop() closes it
        self._logs.append(log)
        proc = subprocess.Popen(
            shlex.split(ptype.command) + (extra_args or []),
            env={**self.env, **(env or {})},
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own group, so stop() reaches the pool's children too
        )
        self.processes[name] = proc
        return proc

    def dead(self) -> list[str]:
        return [name for name, p in self.processes.items() if p.poll() is not None]

    def stop(self, timeout: float = 20) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            # Kill the whole group: a pool child can outlive its parent.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
