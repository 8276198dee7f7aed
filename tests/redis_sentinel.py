"""A Redis master, one replica and three sentinels of the test's own, on free loopback ports in a
temp dir: what a marketplace runs in production, small. Stopped after (each server in its own
process group), also on failure.

The sentinels fail over fast (down after 1 s, failover timeout 5 s) so a drill can kill the master
and see the replica promoted within seconds.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis

from offers_workers.local.embedded import free_port

REDIS_SERVER = "redis-server"
#: The sentinels' quorum: two of three must agree the master is down.
QUORUM = 2


def sentinel_unavailable() -> str | None:
    """Why a Sentinel group cannot be started here, or None."""
    if shutil.which(REDIS_SERVER) is None:
        return (
            "redis-server is not installed (Debian: apt-get install redis-server; its --sentinel mode is the sentinel)"
        )
    return None


@dataclass
class SentinelGroup:
    folder: Path
    master_name: str
    #: Data servers by name ("a" starts as master, "b" as its replica) and their ports.
    ports: dict[str, int]
    sentinel_ports: list[int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, db: int = 0) -> str:
        """The fleet's OFFERS_BROKER_URL: every sentinel, ``;``-separated."""
        return ";".join(f"sentinel://127.0.0.1:{port}/{db}" for port in self.sentinel_ports)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels report it (None while they disagree)."""
        seen: dict[int, int] = {}
        for port in self.sentinel_ports:
            with suppress(redis.RedisError), self.sentinel(port) as client:
                addr = client.execute_command("SENTINEL", "get-master-addr-by-name", self.master_name)
                if addr:
                    seen[int(addr[1])] = seen.get(int(addr[1]), 0) + 1
        agreed = [p for p, n in seen.items() if n >= QUORUM]
        return agreed[0] if agreed else None

    def data_client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2, decode_responses=True)

    def wait_ready(self, timeout: float = 30) -> None:
        """Until the replica is in sync and every sentinel knows the replica and the two other sentinels."""
        deadline = time.monotonic() + timeout
        while not self._ready():
            self._assert_running()
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Sentinel group did not come up in {timeout:g} s; logs in {self.folder}")
            time.sleep(0.1)

    def _ready(self) -> bool:
        try:
            with self.data_client(self.ports["b"]) as replica:
                if replica.info("replication").get("master_link_status") != "up":
                    return False
            for port in self.sentinel_ports:
                with self.sentinel(port) as client:
                    state = client.execute_command("SENTINEL", "MASTER", self.master_name)
                    state = dict(zip(state[::2], state[1::2], strict=False)) if isinstance(state, list) else state
                    if int(state["num-slaves"]) < 1 or int(state["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                        return False
        except redis.RedisError:
            return False
        return True

    def kill_master(self) -> int:
        """kill -9 the current master; returns its port."""
        port = self.master_port()
        assert port is not None, "the sentinels do not agree on a master"
        name = next(n for n, p in self.ports.items() if p == port)
        _kill_group(self.processes[name].pid)
        self.processes[name].wait()
        return port

    def wait_for_new_master(self, old_port: int, timeout: float = 30) -> int:
        """Until a majority of the sentinels report another master, and it answers as one; its port."""
        deadline = time.monotonic() + timeout
        while True:
            port = self.master_port()
            if port is not None and port != old_port:
                with suppress(redis.RedisError), self.data_client(port) as client:
                    if client.info("replication").get("role") == "master":
                        return port
            if time.monotonic() > deadline:
                raise RuntimeError(f"no replica was promoted within {timeout:g} s; logs in {self.folder}")
            time.sleep(0.05)

    def _assert_running(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                log = (self.folder / f"{name}.log").read_text(errors="replace")[-500:]
                raise RuntimeError(f"{name} exited at start-up: {log}")

    def stop(self) -> None:
        for proc in self.processes.values():
            _kill_group(proc.pid)
        for proc in self.processes.values():
            with suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def _kill_group(pid: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _start(folder: Path, name: str, args: list[str]) -> subprocess.Popen[bytes]:
    with (folder / f"{name}.log").open("wb") as log:
        return subprocess.Popen(
            [REDIS_SERVER, *args], cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


@contextmanager
def redis_sentinel(folder: Path, master_name: str = "offers-drill") -> Iterator[SentinelGroup]:
    """A master ("a"), its replica ("b") and three sentinels monitoring it as ``master_name``, ready."""
    folder.mkdir(parents=True, exist_ok=True)
    group = SentinelGroup(folder, master_name, {"a": free_port(), "b": free_port()}, [free_port() for _ in range(3)])
    # No persistence: a drill's data lives as long as the drill; asynchronous replication only.
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"]
    try:
        for name, port in group.ports.items():
            data = folder / name
            data.mkdir(exist_ok=True)
            replica = ["--replicaof", "127.0.0.1", str(group.ports["a"])] if name == "b" else []
            group.processes[name] = _start(folder, name, ["--port", str(port), "--dir", str(data), *common, *replica])
        for n, port in enumerate(group.sentinel_ports):
            conf = folder / f"sentinel-{n}.conf"  # each sentinel rewrites its own file
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {folder}\n"
                f"sentinel monitor {master_name} 127.0.0.1 {group.ports['a']} {QUORUM}\n"
                f"sentinel down-after-milliseconds {master_name} 1000\n"
                f"sentinel failover-timeout {master_name} 5000\n"
            )
            group.processes[f"sentinel-{n}"] = _start(folder, f"sentinel-{n}", [str(conf), "--sentinel"])
        group.wait_ready()
        yield group
    finally:
        group.stop()
