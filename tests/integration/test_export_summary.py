"""The audit export's summary email, end to end: a real SMTP server (aiosmtpd) on a free port, the
export run as an operator runs it (`offers-workers audit export`) and as the beat has a worker run it,
S3 on the sandbox's moto. An SMTP outage never fails the export it reports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller

from offers_workers.domain.states import HAPPY_PATH
from offers_workers.local.fleet import Fleet, read_procfile
from offers_workers.local.sandbox import clear_faults, set_fault
from offers_workers.store import audit_trail
from tests.conftest import RUN_ID, SERVER, cli, redis_database, wait_until

RECIPIENTS = ["oncall@example.com", "audit@example.com"]


@dataclass(frozen=True)
class Received:
    """One message as the SMTP server took it: the envelope's sender and recipients, and the message."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


class Mailbox:
    """An aiosmtpd handler that keeps every message it is handed."""

    def __init__(self) -> None:
        self.received: list[Received] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"


def free_port() -> int:
    """A loopback port nothing listens on (the kernel's pick, released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Mailbox]]:
    """A local SMTP server (no TLS, no auth), stopped at the end whatever happened."""
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller.port, mailbox
    finally:
        controller.stop()


def smtp_env(database_url: str, port: int, **more: str) -> dict[str, str]:
    return {
        "OFFERS_DATABASE_URL": database_url,
        "OFFERS_SMTP_HOST": "127.0.0.1",
        "OFFERS_SMTP_PORT": str(port),
        "OFFERS_SMTP_FROM": "offers-workers <offers@example.com>",
        "OFFERS_SMTP_TO": ", ".join(RECIPIENTS),
        "OFFERS_SMTP_TIMEOUT_SECONDS": "5",
        **more,
    }


def write_trail(database_url: str, offers: int) -> None:
    """The audit rows of ``offers`` offers that went the whole way, as the saga records them."""
    with psycopg.connect(database_url, autocommit=True) as conn, conn.transaction():
        for n in range(offers):
            for before, state in zip((None, *HAPPY_PATH), HAPPY_PATH, strict=False):
                audit_trail.record_audit(
                    conn, f"off_{RUN_ID}_{n}", "transition", actor="test", from_state=before, to_state=state
                )


def log_lines(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines among a command's stderr (the progress bar and its one-line notes aside)."""
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def exports(env: dict[str, str]) -> list[dict[str, Any]]:
    listed = cli("audit", "exports", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)


def body(message: EmailMessage) -> str:
    """The message's text as written: SMTP carries its lines with CRLF."""
    return message.get_content().replace("\r\n", "\n")


def figures(message: EmailMessage) -> dict[str, str]:
    """The summary's figures: its body's second paragraph, label and value apart by two spaces or more."""
    lines = body(message).split("\n\n")[1].splitlines()
    return {label: value.strip() for label, value in (line.strip().split("  ", 1) for line in lines)}


def test_each_export_mails_one_summary_that_agrees_with_its_record(
    scratch_database: str, settings, sandbox, smtp_server
) -> None:
    # Given the trail of a demo-sized run of offers, and on-call's addresses configured
    port, mailbox = smtp_server
    write_trail(scratch_database, offers=200)
    env = smtp_env(scratch_database, port)
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()

    # When the export fails on S3 (every AWS request answers 503, past the SDK's retries)
    set_fault(sandbox, "aws", status=503, rate=1.0)
    try:
        failed = cli("audit", "export", "--until", until, env=env)
    finally:
        clear_faults(sandbox, "aws")

    # Then the command fails as before, and exactly one summary says so, with what happens next
    assert failed.returncode == 1 and "the next run retries this window" in failed.stderr
    [job] = exports(env)
    assert job["status"] == "failed"
    [mail] = mailbox.received
    assert mail.mail_from == "offers@example.com" and mail.rcpt_tos == RECIPIENTS
    assert mail.message["Subject"] == f"[offers-workers] audit export {job['id']} FAILED: 1,200 rows not archived"
    assert figures(mail.message)["error"] == job["error"]
    text = " ".join(body(mail.message).split())
    assert "The next scheduled export (OFFERS_AUDIT_EXPORT_CRON 0 2 * * *, UTC) takes them again" in text
    assert f"offers-workers audit export --until {until.replace('+00:00', 'Z')}" in text

    # When the operator runs it again and S3 answers
    done = cli("audit", "export", "--until", until, env=env)

    # Then one more summary arrives, for the same export, and its figures are the export's record
    assert done.returncode == 0, done.stderr
    assert f"summary emailed to {', '.join(RECIPIENTS)}" in done.stderr
    [job] = exports(env)
    assert (job["status"], job["attempts"], job["row_count"]) == ("done", 2, 1200)
    assert len(mailbox.received) == 2
    mail = mailbox.received[1]
    assert mail.rcpt_tos == RECIPIENTS and mail.message["To"] == ", ".join(RECIPIENTS)
    assert mail.message["Subject"] == f"[offers-workers] audit export {job['id']} succeeded: 1,200 rows"
    summary = figures(mail.message)
    assert summary["export id"] == str(job["id"]) and summary["status"] == "done"
    assert summary["rows"] == f"1,200 (ids {job['first_row_id']}–{job['last_row_id']})"
    assert summary["sha256"] == job["sha256"] and summary["storage class"] == "GLACIER"
    assert summary["object"] == f"s3://{settings.audit_bucket}/{job['object_key']}" and summary["attempt"] == "2"
    assert job["sha256"] in done.stdout  # what the command printed, too

    # and the same summary is one JSON log line
    [logged] = [line for line in log_lines(done.stderr) if line["msg"] == "audit export summary"]
    assert (logged["export_id"], logged["rows"], logged["sha256"]) == (job["id"], 1200, job["sha256"])
    assert logged["bytes"] > 0 and logged["status"] == "done"


@pytest.mark.usefixtures("settings")
def test_with_smtp_down_the_export_still_succeeds_and_says_the_summary_was_not_sent(scratch_database: str) -> None:
    # Given a trail to export and an SMTP server that is not there (nothing listens on its port)
    write_trail(scratch_database, offers=20)
    env = smtp_env(scratch_database, free_port())

    # When the operator exports
    done = cli("audit", "export", "--until", (datetime.now(UTC) + timedelta(seconds=1)).isoformat(), env=env)

    # Then the export is done and the command exits 0, saying the summary could not be sent
    assert done.returncode == 0, done.stderr
    [job] = exports(env)
    assert job["status"] == "done" and job["sha256"] in done.stdout
    assert "offers-workers: could not send the export summary: ConnectionRefusedError" in done.stderr
    [warning] = [line for line in log_lines(done.stderr) if line["level"] == "warning"]
    assert warning["msg"].startswith("could not send the export summary: ") and warning["export_id"] == job["id"]


@pytest.mark.usefixtures("settings")
def test_the_password_is_never_sent_in_the_clear_nor_shown(scratch_database: str, smtp_server) -> None:
    # Given SMTP credentials, and a server that offers no STARTTLS
    port, mailbox = smtp_server
    write_trail(scratch_database, offers=5)
    password = f"smtp-{RUN_ID}-password"
    env = smtp_env(scratch_database, port, OFFERS_SMTP_USERNAME="mailer", OFFERS_SMTP_PASSWORD=password)

    done = cli("audit", "export", "--until", (datetime.now(UTC) + timedelta(seconds=1)).isoformat(), env=env)

    # Then nothing is sent, the export stands, and the password appears nowhere
    assert done.returncode == 0, done.stderr
    assert "could not send the export summary" in done.stderr and "STARTTLS" in done.stderr
    assert mailbox.received == []
    assert password not in done.stdout + done.stderr


def test_the_nightly_task_mails_its_summary_from_a_worker(scratch_database: str, offers_env, smtp_server, tmp_path):
    from tasks.app import OffersCelery  # not at import: the app reads the settings the fixtures set

    # Given a worker as the Procfile runs it, with SMTP configured, on a broker of its own
    port, mailbox = smtp_server
    write_trail(scratch_database, offers=20)
    [worker] = [t for t in read_procfile() if t.name == "worker"]
    with redis_database(SERVER["redis"]) as broker, Fleet({}, tmp_path / "logs") as fleet:
        fleet.start(worker, env={**smtp_env(scratch_database, port), "OFFERS_BROKER_URL": broker})

        # When the beat's message for the nightly export arrives (signed with the fleet's key, as the beat signs it)
        with OffersCelery(broker=broker) as beat:
            until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
            beat.send_task(
                "offers.export_audit", kwargs={"until": until}, queue="offers.maintenance", serializer="json"
            )

        # Then the worker exports and mails one summary of it
        wait_until(lambda: mailbox.received or fleet.dead(), timeout=90, message="the worker's export summary")
        assert not fleet.dead(), f"the worker exited; logs in {tmp_path / 'logs'}"
    [job] = exports({"OFFERS_DATABASE_URL": scratch_database})
    [mail] = mailbox.received
    assert job["status"] == "done" and mail.rcpt_tos == RECIPIENTS
    assert mail.message["Subject"] == f"[offers-workers] audit export {job['id']} succeeded: 120 rows"
    assert figures(mail.message)["sha256"] == job["sha256"]


def test_a_demo_run_then_an_export_mails_one_summary(scratch_database: str, offers_env, smtp_server, tmp_path) -> None:
    """The runbook's morning check, end to end: `offers-workers demo` pushes 200 sample offers through
    a fleet of its own into this database, then `audit export` archives their trail and mails one summary."""
    port, mailbox = smtp_server
    with redis_database(SERVER["redis"]) as redis_url:
        stranger = {k: v for k, v in os.environ.items() if not k.startswith("OFFERS_")}
        demo = subprocess.run(
            [sys.executable, "-m", "offers_workers.ops.cli", "demo", "--offers", "200"],
            capture_output=True,
            text=True,
            timeout=600,
            env=stranger
            | {
                "OFFERS_DATABASE_URL": scratch_database,
                "OFFERS_BROKER_URL": redis_url,
                "OFFERS_STATE_DIR": str(tmp_path / "state"),
            },
        )
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]

    # the nightly cut-off is the start of the day: an operator exports up to now
    until = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    exported = cli("audit", "export", "--until", until, env=smtp_env(scratch_database, port))
    assert exported.returncode == 0, exported.stderr
    [job] = exports(smtp_env(scratch_database, port))
    with psycopg.connect(scratch_database) as conn:
        [(trail,)] = conn.execute("SELECT count(*) FROM audit_events").fetchall()
    # every row the demo's 200 offers left (six or so each) is in the one export
    assert job["status"] == "done" and job["row_count"] == trail and trail > 200
    [mail] = mailbox.received
    assert mail.message["Subject"] == f"[offers-workers] audit export {job['id']} succeeded: {job['row_count']:,} rows"
    assert figures(mail.message)["sha256"] == job["sha256"]
