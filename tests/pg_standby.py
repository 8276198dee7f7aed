"""A private Postgres primary with a streaming standby (synchronous replication), for the failover
drill: made with initdb and ``pg_basebackup`` on free loopback ports, removed after.

As root, every binary runs as ``postgres`` (initdb refuses root) in a folder under /tmp, since
pytest's folders are private to this user.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from offers_workers.local.embedded import free_port

PG_BIN = Path("/usr/lib/postgresql")
BINARIES = ("initdb", "postgres", "pg_basebackup")
#: The standby's name: the primary waits for its flush before a commit returns.
STANDBY_NAME = "standby1"


class ServerNotStarted(RuntimeError):
    """A server of the pair could not be made or started here (the drill skips, naming why)."""


def _bin_dir() -> Path | None:
    found = sorted(PG_BIN.glob("*/bin/initdb"))
    return found[-1].parent if found else None


def standby_unavailable() -> str | None:
    """Why a primary with a standby cannot be made here, or None."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        return f"PostgreSQL's server binaries are not installed (no {PG_BIN}/*/bin/initdb)"
    missing = [name for name in BINARIES if not (bin_dir / name).exists()]
    if missing:
        return f"{', '.join(missing)} missing from {bin_dir}"
    if os.geteuid() == 0:
        if not shutil.which("runuser"):
            return "initdb refuses root and runuser is missing"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "initdb refuses root and there is no postgres user to run it as"
    return None


@dataclass
class StandbyPair:
    """The two servers: the primary (until killed) and its standby (until promoted)."""

    bin_dir: Path
    folder: Path
    primary_port: int = field(default_factory=free_port)
    standby_port: int = field(default_factory=free_port)
    primary: subprocess.Popen[bytes] | None = None
    standby: subprocess.Popen[bytes] | None = None

    @property
    def as_postgres(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def url(self, dbname: str = "postgres", port: int | None = None) -> str:
        """The fleet's URL: both hosts, and only the one that takes writes will do."""
        if port is not None:
            return f"postgresql://postgres@127.0.0.1:{port}/{dbname}"
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary_port},127.0.0.1:{self.standby_port}/{dbname}"
            "?target_session_attrs=read-write&connect_timeout=3"
        )

    def _run(self, *args: str) -> None:
        result = subprocess.run([*self.as_postgres, *args], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise ServerNotStarted(f"{Path(args[0]).name} failed: {(result.stderr or result.stdout).strip()[-500:]}")

    def _start(self, data: Path, name: str) -> subprocess.Popen[bytes]:
        log = self.folder / f"{name}.log"
        with log.open("ab") as out:
            # A session of its own: the postmaster and its backends share a process group to kill.
            return subprocess.Popen(
                [*self.as_postgres, str(self.bin_dir / "postgres"), "-D", str(data)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_ready(self, port: int, proc: subprocess.Popen[bytes], name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url(port=port), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.folder / f"{name}.log").read_text(errors="replace")[-800:]
                    raise ServerNotStarted(f"the {name} did not start: {log}") from None
                time.sleep(0.1)

    def start(self) -> None:
        primary, standby = self.folder / "primary", self.folder / "standby"
        self._run(str(self.bin_dir / "initdb"), "-D", str(primary), "-U", "postgres", "-A", "trust", "--no-sync")
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.primary_port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.folder}'\nwal_level = replica\nmax_wal_senders = 4\n"
                f"synchronous_standby_names = '{STANDBY_NAME}'\nsynchronous_commit = on\n"
                # A process killed loses nothing the OS holds: fsync only slows a drill down.
                "fsync = off\nfull_page_writes = off\nmax_connections = 200\n"
            )
        (primary / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
        )
        self.primary = self._start(primary, "primary")
        self._wait_ready(self.primary_port, self.primary, "primary")
        self._run(
            str(self.bin_dir / "pg_basebackup"),
            "-R",
            "-D",
            str(standby),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.primary_port),
            "-U",
            "postgres",
            "--no-sync",
        )
        with (standby / "postgresql.conf").open("a") as conf:
            # Promoted, it has no standby of its own: waiting for one would hang every commit.
            conf.write(f"port = {self.standby_port}\nsynchronous_standby_names = ''\n")
        with (standby / "postgresql.auto.conf").open("a") as conf:
            # The name the primary's synchronous_standby_names waits for (the last setting wins).
            conf.write(
                f"primary_conninfo = 'host=127.0.0.1 port={self.primary_port} user=postgres"
                f" application_name={STANDBY_NAME}'\n"
            )
        self.standby = self._start(standby, "standby")
        self._wait_ready(self.standby_port, self.standby, "standby")
        deadline = time.monotonic() + 30
        while self.sync_state() != "sync":
            if time.monotonic() > deadline:
                raise ServerNotStarted(f"the standby never became synchronous (state {self.sync_state()!r})")
            time.sleep(0.1)

    def sync_state(self) -> str | None:
        """pg_stat_replication's sync_state of the standby, as the primary sees it."""
        with psycopg.connect(self.url(port=self.primary_port), autocommit=True) as conn:
            row = conn.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s", (STANDBY_NAME,)
            ).fetchone()
        return row[0] if row else None

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(port=self.primary_port), autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return self.url(name)

    def kill_primary(self) -> None:
        """kill -9 of the primary's postmaster and every backend: a host that dies."""
        assert self.primary is not None
        with suppress(ProcessLookupError):
            os.killpg(self.primary.pid, signal.SIGKILL)
        self.primary.wait()

    def promote(self, timeout: float = 30) -> None:
        """Promote the standby and wait until it takes writes."""
        with psycopg.connect(self.url(port=self.standby_port), autocommit=True) as conn:
            row = conn.execute("SELECT pg_promote(true, %s)", (int(timeout),)).fetchone()
        if not (row and row[0]):
            raise RuntimeError(f"the standby was not promoted within {timeout:g} s")
        deadline = time.monotonic() + timeout
        while True:
            with psycopg.connect(self.url(port=self.standby_port), autocommit=True) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row and not row[0]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the promoted standby still refuses writes after {timeout:g} s")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in (self.standby, self.primary):
            if proc is not None and proc.poll() is None:
                # SIGINT: Postgres's fast shutdown (SIGTERM waits for every client).
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    with suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


@contextmanager
def primary_with_standby() -> Iterator[StandbyPair]:
    """A running primary and its synchronous standby; both stopped and removed after, also on failure.
    Raises ServerNotStarted when either cannot be made or started."""
    bin_dir = _bin_dir()
    assert bin_dir is not None, standby_unavailable()
    folder = Path(tempfile.mkdtemp(prefix="offers-pg-standby-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    pair = StandbyPair(bin_dir, folder)
    try:
        pair.start()
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(folder, ignore_errors=True)
