"""A private PgBouncer in transaction mode in front of a Postgres, for the tests and benchmarks that
run the fleet through a transaction pooler with nothing changed but ``OFFERS_DATABASE_URL``.

Needs the ``pgbouncer`` binary (the Debian package ``pgbouncer``); ``unavailable()`` says why not.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from psycopg.conninfo import conninfo_to_dict

from offers_workers.local.embedded import free_port, stop_process

#: Where Debian installs it, off an ordinary user's PATH.
FALLBACK_BINARY = Path("/usr/sbin/pgbouncer")


def binary() -> str | None:
    """The pgbouncer executable, or None."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return str(FALLBACK_BINARY) if os.access(FALLBACK_BINARY, os.X_OK) else None


def unavailable() -> str | None:
    """Why no PgBouncer can be started here, or None."""
    if binary() is None:
        return (
            f"pgbouncer is not installed (not on PATH, not at {FALLBACK_BINARY}); it is the Debian package `pgbouncer`"
        )
    return None


def _quoted(value: str) -> str:
    """A value of a [databases] connection string, quoted as PgBouncer reads one."""
    if "'" in value or "\n" in value:
        raise ValueError(f"{value!r}: PgBouncer's connection strings cannot carry this")
    return f"'{value}'"


class PgBouncer:
    """PgBouncer in transaction mode on a free loopback port, in front of the Postgres of ``server_url``.

    Every database of that server is reachable through it (a ``*`` entry) as the user of
    ``server_url``, which it trusts without a password and logs in to Postgres with that URL's.
    ``start()`` returns the pooler's URL for the database of ``server_url``; ``url_for()`` gives
    it for any other database of the server.
    """

    def __init__(
        self,
        server_url: str,
        state_dir: Path,
        *,
        pool_size: int = 20,
        max_client_conn: int = 1000,
        idle_transaction_timeout_s: int = 15,
    ) -> None:
        self.server = conninfo_to_dict(server_url)
        self.dir = (state_dir / "pgbouncer").resolve()
        #: Server connections per database: far fewer than a fleet's clients, so they really share them.
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        #: The fleet's OFFERS_DB_IDLE_IN_TRANSACTION_TIMEOUT_SECONDS, which its session SET cannot
        #: carry through a transaction pooler (it stays on one server connection).
        self.idle_transaction_timeout_s = idle_transaction_timeout_s
        self.user = str(self.server.get("user") or pwd.getpwuid(os.getuid()).pw_name)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.dir / "pgbouncer.log"

    @property
    def admin_url(self) -> str:
        """Its admin console (SHOW STATS, SHOW POOLS), open to this user; simple query protocol only."""
        return self._url("pgbouncer")

    def url_for(self, database_url: str) -> str:
        """The pooler's URL for the database of ``database_url`` (a database of the same server and user)."""
        target = conninfo_to_dict(database_url)
        if str(target.get("user") or self.user) != self.user:
            raise ValueError(f"this PgBouncer knows only the user {self.user!r}")
        return self._url(str(target.get("dbname") or self.user))

    def _url(self, dbname: str) -> str:
        assert self.port, "not started"
        return f"postgresql://{quote(self.user, safe='')}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def config(self) -> str:
        host = str(self.server.get("host") or "127.0.0.1")
        port = str(self.server.get("port") or 5432)
        return "\n".join(
            [
                "[databases]",
                # Any database name goes to the server's database of that name.
                f"* = host={_quoted(host)} port={port}",
                "",
                "[pgbouncer]",
                "pool_mode = transaction",
                "listen_addr = 127.0.0.1",
                f"listen_port = {self.port}",
                # No socket of its own: it could clash with the machine's, and nothing needs it.
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {self.dir / 'users.txt'}",
                # SHOW STATS and SHOW POOLS on the `pgbouncer` database, for tests and benchmarks.
                f"admin_users = {self.user}",
                f"max_client_conn = {self.max_client_conn}",
                f"default_pool_size = {self.pool_size}",
                f"idle_transaction_timeout = {self.idle_transaction_timeout_s}",
                # libpq and psycopg send no startup parameter PgBouncer does not know, so
                # ignore_startup_parameters stays unset: a client that sends one is refused, visibly.
                "",
            ]
        )

    def _run_as(self) -> list[str]:
        """PgBouncer refuses to run as root ("PgBouncer should not run as root") unless told whom
        to become with -u. It reads its configuration first, as root: only the Postgres socket
        must be reachable by that user, so it becomes the owner of the socket's directory (a
        pgserver's socket lies in its 0700 data directory), or nobody for a TCP server."""
        if os.geteuid() != 0:
            return []
        host = str(self.server.get("host") or "")
        if host.startswith("/"):
            return ["-u", pwd.getpwuid(Path(host).stat().st_uid).pw_name]
        return ["-u", "nobody"]

    def start(self, timeout: float = 10) -> str:
        """Start it; returns the pooler's URL for the database of ``server_url``."""
        executable = binary()
        if executable is None:
            raise RuntimeError(unavailable())
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        password = str(self.server.get("password") or "")
        # With trust the password is not asked of clients; PgBouncer logs in to Postgres with it.
        (self.dir / "users.txt").write_text(f'"{self.user}" "{password}"\n')
        (self.dir / "users.txt").chmod(0o600)
        config = self.dir / "pgbouncer.ini"
        config.write_text(self.config())
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [executable, *self._run_as(), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    tail = self.log_path.read_text(errors="replace")[-800:]
                    raise RuntimeError(f"PgBouncer did not start (log {self.log_path}):\n{tail}") from None
                time.sleep(0.05)
        return self._url(str(self.server.get("dbname") or self.user))

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)  # SIGTERM: a fast exit, every connection closed
            self._process = None


def main(argv: list[str]) -> int:
    """``python -m offers_workers.local.pgbouncer COMMAND ...``: run a command (``offers-workers
    bench``, say) with ``OFFERS_DATABASE_URL`` pointing at a private PgBouncer in transaction mode in
    front of the Postgres it names now; the pooler is stopped when the command ends."""
    import sys
    import tempfile

    server_url = os.environ.get("OFFERS_DATABASE_URL")
    if not argv or not server_url:
        print(
            "usage: OFFERS_DATABASE_URL=... python -m offers_workers.local.pgbouncer COMMAND [ARG ...]", file=sys.stderr
        )
        return 2
    if reason := unavailable():
        print(f"offers-workers: {reason}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="offers-pgbouncer-") as state:
        bouncer = PgBouncer(server_url, Path(state))
        pooled = bouncer.start()
        try:
            print(
                f"through PgBouncer (transaction mode, {bouncer.pool_size} server connections per database)",
                file=sys.stderr,
            )
            return subprocess.run(argv, env={**os.environ, "OFFERS_DATABASE_URL": pooled}).returncode
        finally:
            bouncer.stop()


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
