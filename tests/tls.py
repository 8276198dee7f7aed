"""Real servers over TLS on loopback, with a throwaway CA made by the test (openssl).

The server certificate names ``localhost`` and ``127.0.0.1`` (kombu connects to ``localhost`` as
``127.0.0.1``), and every server also listens on ``127.0.0.2``: a client that trusts the CA gets
through; one that connects to ``127.0.0.2`` asks for a host name the certificate does not carry,
and one that trusts another CA cannot verify the chain.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from offers_workers.local.embedded import free_port

PG_BIN = Path("/usr/lib/postgresql")
RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


@dataclass(frozen=True)
class Certs:
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(folder: Path) -> Certs:
    """A CA, a second CA nobody should trust, a server certificate for ``localhost`` and a client's."""
    folder.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "other-ca"):
        _openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{ca}.key",
            "-out",
            f"{ca}.pem",
            "-days",
            "2",
            "-subj",
            f"/CN=offers test {ca}",
            cwd=folder,
        )
    for name, san, usage in (
        ("server", "DNS:localhost,IP:127.0.0.1", "serverAuth"),
        ("client", "DNS:offers-fleet", "clientAuth"),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            "-subj",
            f"/CN={name}",
            cwd=folder,
        )
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.pem",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            cwd=folder,
        )
    for key in folder.glob("*.key"):
        key.chmod(0o644)  # the servers run as other users (postgres) or read it after dropping rights
    return Certs(
        folder / "ca.pem",
        folder / "other-ca.pem",
        folder / "server.pem",
        folder / "server.key",
        folder / "client.pem",
        folder / "client.key",
    )


def openssl_unavailable() -> str | None:
    return None if shutil.which("openssl") else "openssl is not installed (it makes the test CA)"


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, what: str, timeout: float = 60) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start: {log.read_text(errors='replace')[-800:]}") from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes], sig: int = 15) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()


def redis_tls_unavailable() -> str | None:
    if not shutil.which("redis-server"):
        return "redis-server is not installed"
    return None


@contextmanager
def tls_redis(certs: Certs, folder: Path) -> Iterator[int]:
    """redis-server with TLS only (no plain port); yields its TLS port."""
    port = free_port()
    log = folder / "redis-tls.log"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--bind",
            "127.0.0.1",
            "127.0.0.2",
            "--tls-cert-file",
            str(certs.server_cert),
            "--tls-key-file",
            str(certs.server_key),
            "--tls-ca-cert-file",
            str(certs.ca),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
            "--logfile",
            str(log),
        ],
        start_new_session=True,
    )
    try:
        _wait_port(port, proc, log, "redis-server --tls-port")
        yield port
    finally:
        _stop(proc)


def rabbitmq_tls_unavailable() -> str | None:
    if not RABBITMQ_SERVER.exists():
        return "rabbitmq-server is not installed (Debian's rabbitmq-server package)"
    return None


@contextmanager
def tls_rabbitmq(certs: Certs, folder: Path, name: str) -> Iterator[tuple[int, str, str]]:
    """A RabbitMQ node of its own with a TLS listener only; yields its port, a user and its password."""
    folder.mkdir(parents=True, exist_ok=True)
    port, dist = free_port(), free_port()
    user, password = "offers", "tls-test-password"
    (folder / "rabbitmq.conf").write_text(
        "listeners.tcp = none\n"
        f"listeners.ssl.default = {port}\n"
        f"ssl_options.cacertfile = {certs.ca}\n"
        f"ssl_options.certfile = {certs.server_cert}\n"
        f"ssl_options.keyfile = {certs.server_key}\n"
        "ssl_options.verify = verify_none\n"
        "loopback_users = none\n"
        f"default_user = {user}\n"
        f"default_pass = {password}\n"
    )
    (folder / "enabled_plugins").write_text("[].\n")
    env = {
        **os.environ,
        "HOME": str(folder),  # its own Erlang cookie
        "RABBITMQ_NODENAME": f"{name}@localhost",
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_CONFIG_FILE": str(folder / "rabbitmq"),
        "RABBITMQ_MNESIA_BASE": str(folder / "mnesia"),
        "RABBITMQ_LOG_BASE": str(folder / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(folder / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(folder / "pid"),
    }
    log = folder / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(RABBITMQ_SERVER)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_port(port, proc, log, "the RabbitMQ node", timeout=90)
        yield port, user, password
    finally:
        _stop(proc)


def postgres_tls_unavailable() -> str | None:
    if not PG_BIN.exists() or not any(PG_BIN.glob("*/bin/initdb")):
        return "PostgreSQL's server binaries are not installed (Debian's postgresql package)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "initdb refuses root and runuser is missing"
    return None


@contextmanager
def tls_postgres(certs: Certs) -> Iterator[int]:
    """A private Postgres cluster that accepts TLS connections only (hostssl); yields its port."""
    import tempfile

    bin_dir = sorted(PG_BIN.glob("*/bin/initdb"))[-1].parent
    # Not under pytest's folders: they are private to this user, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="offers-pg-tls-"))
    data = folder / "data"
    root = os.geteuid() == 0
    as_postgres = ["runuser", "-u", "postgres", "--"] if root else []
    for path in (certs.server_cert, certs.server_key):
        shutil.copy(path, folder / path.name)
        # Postgres refuses a key that others may read.
        (folder / path.name).chmod(0o600)
        if root:
            shutil.chown(folder / path.name, "postgres")
    if root:
        shutil.chown(folder, "postgres")
    port = free_port()
    log = folder / "postgres.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {port}\nlisten_addresses = 'localhost,127.0.0.2'\nunix_socket_directories = '{folder}'\n"
                f"ssl = on\nssl_cert_file = '{folder / certs.server_cert.name}'\n"
                f"ssl_key_file = '{folder / certs.server_key.name}'\nfsync = off\n"
            )
        (data / "pg_hba.conf").write_text(
            "local all all trust\nhostssl all all 127.0.0.0/8 trust\nhostssl all all ::1/128 trust\n"
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*as_postgres, str(bin_dir / "postgres"), "-D", str(data)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_port(port, proc, log, "the private Postgres cluster")
        yield port
    finally:
        if proc is not None:
            _stop(proc, 2)  # SIGINT: Postgres's fast shutdown (SIGTERM waits for every client)
        shutil.rmtree(folder, ignore_errors=True)
